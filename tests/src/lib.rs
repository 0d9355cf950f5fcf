//! Test harness: starts the real `perch` binary on 127.0.0.1:0, reads the
//! bound addresses from its start-up line, and talks to it over HTTP.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

/// Paths of the guest components built by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub const ADMIN_TOKEN: &str = "perch_test_admin_token";

/// The only time bound a test puts on "it happened": generous enough to
/// mean "did not hang" on a loaded 2-core machine running debug builds,
/// never a latency figure. Tests assert on the event (a status, an error
/// code, a metric, a log line); latency is measured by `bench/run.sh`.
pub const NO_HANG: Duration = Duration::from_secs(10);

/// Sets its flag when dropped: inside `std::thread::scope`, a panic of the
/// scope's own body (a failed assertion) still stops the threads that loop
/// until the flag is set, so the test fails instead of hanging (the scope
/// waits for its threads before the panic goes on).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` if it
/// still does not after 30 s.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound and released), for
/// servers that take their port from a config file, and for a peer that
/// is down.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// The request headers the echo guest saw (its `x-echo-headers`), as
/// `name: value` lines; the answer must be a 200.
pub fn echoed_headers(resp: &Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    serde_json::from_str(resp.headers()["x-echo-headers"].to_str().unwrap())
        .expect("x-echo-headers is a JSON array")
}

/// The `perch` binary under test.
pub fn perch_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PERCH_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/all-<hash> → target/<profile>/perch
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("perch");
    assert!(
        bin.exists(),
        "{} not built; run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// `perch serve` on `data_dir`, both listeners on `127.0.0.1:0`.
pub fn serve_command(data_dir: &Path) -> Command {
    let mut command = Command::new(perch_bin());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir);
    command
}

pub fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

/// A running `perch serve` with its own data directory.
pub struct Perch {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    config: String,
    env: Vec<(String, String)>,
    pub data_url: String,
    pub admin_url: String,
    /// `https://127.0.0.1:PORT` when the TLS listener is on.
    pub tls_url: Option<String>,
    pub stderr: Arc<Mutex<String>>,
    pub client: Client,
}

impl Perch {
    /// Starts with the default limits (and a generous CPU limit: tests run
    /// debug builds of the host).
    pub fn start() -> Perch {
        Perch::start_with("")
    }

    /// Starts with extra TOML appended to the test config.
    pub fn start_with(extra_config: &str) -> Perch {
        Perch::start_with_env(extra_config, &[])
    }

    /// Starts with extra TOML and extra environment variables (e.g.
    /// `PERCH_LOG`).
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Perch {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut p = Perch {
            child: None,
            dir,
            _tmp: Some(tmp),
            config: extra_config.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data_url: String::new(),
            admin_url: String::new(),
            tls_url: None,
            stderr: Arc::default(),
            client: http(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let config_path = self.dir.join("perch.toml");
        let config = if self.config.contains("[limits]") {
            self.config.clone()
        } else {
            format!("[limits]\ncpu_ms = 5000\n{}", self.config)
        };
        std::fs::write(&config_path, config).unwrap();
        let mut child = serve_command(&self.dir.join("data"))
            .arg("--config")
            .arg(&config_path)
            .env("PERCH_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PERCH_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn perch");
        let stderr = child.stderr.take().unwrap();
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with("perch listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "perch did not start; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_string()
        };
        self.data_url = field("data");
        self.admin_url = field("admin");
        self.tls_url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tls="))
            .map(str::to_string);
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and waits for exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut child, Duration::from_secs(60))
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_timeout(&mut child, Duration::from_secs(60))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts again on the same data directory (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// Waits (up to 30 s) until the logs contain `needle` at least `count`
    /// times; the logs of earlier runs of this instance count too.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count}× `{needle}` in the logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s) for a log line that contains every one of
    /// `needles` and returns it.
    pub fn wait_for_log_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.log_lines(needles).pop() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with all of {needles:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Everything the server printed so far (stderr and stdout).
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// An admin API client using `token`.
    pub fn api(&self, token: &str) -> Api {
        Api {
            base: self.admin_url.clone(),
            token: Some(token.to_string()),
            client: self.client.clone(),
        }
    }

    /// An admin API client with the admin token.
    pub fn admin(&self) -> Api {
        self.api(ADMIN_TOKEN)
    }

    /// A data-plane request with `Host: host`.
    pub fn request(&self, method: Method, host: &str, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.data_url))
            .header("host", host)
    }

    /// GET on the data plane.
    pub fn get(&self, host: &str, path: &str) -> Response {
        self.request(Method::GET, host, path)
            .send()
            .expect("data-plane request")
    }

    /// Creates a tenant, uploads `wasm` as `function`, binds `host`; returns a
    /// `*`-scoped tenant token.
    pub fn deploy(&self, tenant: &str, function: &str, wasm: &str, host: &str) -> String {
        let admin = self.admin();
        admin.put_json(&format!("/v1/tenants/{tenant}"), None).ok();
        let token = admin
            .post_json(
                &format!("/v1/tenants/{tenant}/tokens"),
                serde_json::json!({"scopes": ["*"]}),
            )
            .ok()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let t = self.api(&token);
        t.upload(tenant, function, &std::fs::read(wasm).unwrap())
            .expect_status(201);
        t.put_json(
            &format!("/v1/tenants/{tenant}/routes/{host}"),
            Some(serde_json::json!({"function": function})),
        )
        .ok();
        token
    }

    /// Follows `tenant`'s log (`follow=1&{query}`) as NDJSON with `token`;
    /// each line goes to the returned channel, parsed.
    pub fn follow_logs(
        &self,
        token: &str,
        tenant: &str,
        query: &str,
    ) -> std::sync::mpsc::Receiver<Value> {
        let resp = self
            .client
            .get(format!(
                "{}/v1/tenants/{tenant}/logs?follow=1&{query}",
                self.admin_url
            ))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// `GET /metrics`, as text.
    pub fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Reads one metric's value (sum over label sets matching `filter`).
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Perch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("perch did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An admin API client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub client: Client,
}

/// Status and body of an answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts a 2xx and returns the JSON body.
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {} {}",
            self.status,
            self.body
        );
        self.body
    }

    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }

    /// Asserts the status and the error code.
    pub fn expect_error(self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        assert_eq!(
            self.body["error"]["code"], code,
            "unexpected body: {}",
            self.body
        );
        self.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Api {
    pub fn anonymous(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    pub fn call(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((bytes, ctype)) = body {
            req = req.header("content-type", ctype).body(bytes);
        }
        let resp = req.send().expect("admin request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut text = Vec::new();
        resp.take(u64::MAX).read_to_end(&mut text).ok();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&text)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None)
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None)
    }

    pub fn put_json(&self, path: &str, body: Option<Value>) -> Answer {
        self.call(
            Method::PUT,
            path,
            body.map(|b| (b.to_string().into_bytes(), "application/json")),
        )
    }

    pub fn post_json(&self, path: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            Some((body.to_string().into_bytes(), "application/json")),
        )
    }

    /// Sends only the head of a PUT declaring `len` body bytes and returns
    /// the answer's status and raw text: the server must refuse an
    /// oversized body from its declared length, before reading it.
    pub fn put_declared(&self, path: &str, len: u64) -> (u16, String) {
        use std::io::Write;
        let addr = self.base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n\r\n",
            self.token.as_deref().unwrap_or("")
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("}}") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// Replaces a function's settings; asserts the 201 of the new version.
    pub fn put_settings(&self, tenant: &str, function: &str, settings: Value) -> Value {
        self.put_json(
            &format!("/v1/tenants/{tenant}/functions/{function}/settings"),
            Some(settings),
        )
        .expect_status(201)
    }

    pub fn upload(&self, tenant: &str, function: &str, bytes: &[u8]) -> Answer {
        self.call(
            Method::PUT,
            &format!("/v1/tenants/{tenant}/functions/{function}"),
            Some((bytes.to_vec(), "application/wasm")),
        )
    }
}

// ------------------------------------------------------ external programs

/// What a test that needs an external program does when it runs.
#[derive(Debug, PartialEq, Eq)]
pub enum External {
    /// The program is there: run the test.
    Run,
    /// It is missing and `PERCH_SKIP_EXTERNAL=1`: say so and return early.
    Skip,
    /// It is missing and skipping was not asked for: fail.
    Fail,
}

/// The decision of [`require_program`], from the value of
/// `PERCH_SKIP_EXTERNAL` and whether the program was found. Only the exact
/// value `1` skips; anything else leaves a missing program a failure.
pub fn external_decision(skip_external: Option<&str>, found: bool) -> External {
    match (found, skip_external) {
        (true, _) => External::Run,
        (false, Some("1")) => External::Skip,
        (false, _) => External::Fail,
    }
}

/// Where `name` is: itself if it holds a `/`, else the first executable
/// file of that name on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// For a test that needs an external program (podman, postgres, pebble…):
/// true when `program` is on `PATH`. When it is missing the test fails,
/// naming the program — unless `PERCH_SKIP_EXTERNAL=1`, in which case this
/// prints `skipped: <test> needs <program>` to stderr and returns false so
/// the test returns early. A missing program never passes silently.
///
/// ```no_run
/// if !perch_tests::require_program("podman") {
///     return;
/// }
/// ```
pub fn require_program(program: &str) -> bool {
    let skip = std::env::var("PERCH_SKIP_EXTERNAL").ok();
    require_program_with(program, skip.as_deref())
}

fn require_program_with(program: &str, skip_external: Option<&str>) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    match external_decision(skip_external, find_program(program).is_some()) {
        External::Run => true,
        External::Skip => {
            eprintln!("skipped: {test} needs {program}");
            false
        }
        External::Fail => panic!(
            "{test} needs `{program}`, which is not on PATH: install it \
             (./test.sh installs what the tests need) or set \
             PERCH_SKIP_EXTERNAL=1 to skip the tests that need it"
        ),
    }
}

/// The Python interpreter of the tests' virtualenv (`PERCH_PYTHON`, else
/// the one `./test.sh` makes in `~/.cache/perch/python`), when it has the
/// PyPI packages the telemetry tests parse with (`prometheus_client`,
/// `opentelemetry.proto`). Missing: fails, or with `PERCH_SKIP_EXTERNAL=1`
/// says `skipped` and gives `None`, as [`require_program`] does.
pub fn require_python() -> Option<PathBuf> {
    let python = std::env::var_os("PERCH_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/perch/python/bin/python"))
        })
        .filter(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client, opentelemetry.proto"])
                .status()
                .is_ok_and(|s| s.success())
        });
    let found = python.is_some();
    let skip = std::env::var("PERCH_SKIP_EXTERNAL").ok();
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    match external_decision(skip.as_deref(), found) {
        External::Run => python,
        External::Skip => {
            eprintln!(
                "skipped: {test} needs Python with prometheus-client and opentelemetry-proto"
            );
            None
        }
        External::Fail => panic!(
            "{test} needs Python with prometheus-client and opentelemetry-proto: \
             ./test.sh installs them into ~/.cache/perch/python (or set PERCH_PYTHON, \
             or PERCH_SKIP_EXTERNAL=1 to skip)"
        ),
    }
}

/// Runs `script` on the tests' Python with `input` on stdin; its stdout.
pub fn run_python(python: &Path, script: &str, input: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Podman API service of the test process's own: storage, run state,
/// locks (file locks: the default shared-memory ones are numbered
/// machine-wide and collide between services), events and network
/// definitions in a temporary directory, runc and cgroupfs (what works on
/// these machines), started on first use and shared by every
/// test of the process. A watcher removes its containers, the isolation
/// tables of the process's nodes (named `<word>-<pid>` or
/// `<word>-<pid>-<hex>`), its storage and
/// the directory once the test process has exited.
pub struct Podman {
    /// `unix:///…/podman.sock`.
    pub url: String,
    dir: PathBuf,
}

impl Podman {
    /// The process's service, or `None` when podman is missing and
    /// `PERCH_SKIP_EXTERNAL=1` (see [`require_program`]).
    pub fn get() -> Option<&'static Podman> {
        static PODMAN: std::sync::OnceLock<Podman> = std::sync::OnceLock::new();
        if !require_program("podman") || !require_program("runc") {
            return None;
        }
        Some(PODMAN.get_or_init(Podman::start))
    }

    fn start() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("perch-podman-")
            .tempdir_in("/var/tmp")
            .expect("temp dir")
            .keep();
        let (hard, _) = nofile_limits();
        std::fs::create_dir_all(dir.join("networks")).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={hard}:{hard}\", \"nproc=32768:32768\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\n\
                 lock_type = \"file\"\ntmp_dir = \"{d}/libpod-tmp\"\n\
                 [network]\nnetwork_config_dir = \"{d}/networks\"\n",
                d = dir.display(),
            ),
        )
        .unwrap();
        let url = format!("unix://{}/podman.sock", dir.display());
        let d = dir.display();
        let args = format!("--root {d}/storage --runroot {d}/run");
        let script = format!(
            "podman {args} system service --time=0 {url} > {d}/service.log 2>&1 &\n\
             svc=$!\n\
             while kill -0 {pid} 2>/dev/null; do sleep 0.5; done\n\
             podman {args} rm -f -a -t 0 > /dev/null 2>&1\n\
             for t in $(nft list tables 2>/dev/null | awk '$2 == \"inet\" && $3 ~ /^perch_/ {{print $3}}'); do\n\
               nft list table inet $t 2>/dev/null | grep -qE 'comment \"perch node [a-z]+-{pid}(-[0-9a-f]+)?\"' && nft delete table inet $t\n\
             done\n\
             kill $svc; wait $svc\n\
             podman {args} system reset -f > /dev/null 2>&1\n\
             rm -rf {d}\n",
            pid = std::process::id()
        );
        // `setsid -f`: the watcher runs on in its own session after the
        // test process is gone, and this returns at once.
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start podman system service");
        assert!(status.success(), "setsid: {status}");
        let podman = Podman { url, dir };
        eventually("the podman API socket answers", || {
            podman
                .cli(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
        });
        podman
    }

    /// Runs `podman --remote` against this service; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("podman")
            .args(["--remote", "--url", &self.url])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Ids of the containers (running or not) whose labels include every
    /// `key=value` of `labels`.
    pub fn containers(&self, labels: &[&str]) -> Vec<String> {
        let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
        let mut args: Vec<&str> = vec!["ps", "-a", "-q", "--no-trunc"];
        for f in &filters {
            args.extend(["--filter", f.as_str()]);
        }
        self.cli(&args)
            .expect("podman ps")
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

fn nofile_limits() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a valid rlimit for getrlimit to fill.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    (l.rlim_max, l.rlim_cur)
}

/// A `docker save` archive of a one-layer image: busybox-static at
/// `/bin/busybox` (with `sh`, `sleep`, `touch`, `nc`, `httpd`, `cat`,
/// `echo` and `test` linked to it), the `files` given (path, bytes; made
/// executable), and `cmd` as its
/// command. Its id is the SHA-256 of its config, as engines compute it.
pub fn busybox_image(tag: &str, files: &[(&str, &[u8])], cmd: &[&str]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static at /bin/busybox");
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        layer.append_data(&mut h, name, bytes).unwrap();
    };
    add("bin/busybox", &busybox, 0o755);
    add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    add("etc/group", b"root:x:0:\n", 0o644);
    add("tmp/.keep", b"", 0o644);
    for (name, bytes) in files {
        add(name, bytes, 0o755);
    }
    // The applets scripts in these images call, as links to busybox.
    for applet in [
        "sh", "sleep", "touch", "nc", "httpd", "cat", "echo", "test", "[",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let hex = |b: &[u8]| -> String {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let layer_hex = hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    })
    .to_string();
    let config_hex = hex(config.as_bytes());
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }])
    .to_string();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        out.append_data(&mut h, name, bytes).unwrap();
    };
    add(&format!("{layer_hex}/layer.tar"), &layer);
    add(&format!("{config_hex}.json"), config.as_bytes());
    add("manifest.json", manifest.as_bytes());
    out.into_inner().unwrap()
}

/// The image id of an archive made by [`busybox_image`].
pub fn image_id(archive: &[u8]) -> String {
    let mut a = tar::Archive::new(archive);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") && name != "manifest.json" {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            let d = ring::digest::digest(&ring::digest::SHA256, &b);
            return format!(
                "sha256:{}",
                d.as_ref()
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            );
        }
    }
    panic!("no config in the archive")
}

/// A PostgreSQL server of one test's own, for tests that stop and start
/// it (the shared one, `PERCH_TEST_POSTGRES_URL`, must stay up for the
/// others): `initdb` in a temporary directory (as the postgres user when
/// we are root: initdb refuses root), a Unix socket there and no TCP
/// listener; stopped and removed when dropped.
pub struct PgServer {
    /// A libpq connection string for its `postgres` database (over the
    /// Unix socket, trusted).
    pub url: String,
    dir: PathBuf,
    as_postgres: bool,
    /// The port of its socket, and of its loopback TCP listener when it
    /// has one ([`PgServer::start_tls`]).
    port: u16,
    tcp: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PgServer {
    /// A new running server, or `None` when PostgreSQL is missing and
    /// `PERCH_SKIP_EXTERNAL=1` (see [`external_decision`]).
    pub fn start() -> Option<PgServer> {
        PgServer::start_with(None)
    }

    /// A new running server that also listens on a loopback TCP port with
    /// TLS (`cert_pem` and `key_pem`), where only TLS connections are let
    /// in, with SCRAM passwords: user `postgres`, password
    /// [`PgServer::PASSWORD`]; see [`PgServer::tcp_url`].
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<PgServer> {
        PgServer::start_with(Some((cert_pem, key_pem)))
    }

    /// The `postgres` user's password over TCP.
    pub const PASSWORD: &str = "perch-test-password";

    /// A connection string for the TCP listener at `host` (`127.0.0.1` or
    /// `localhost`), with the password, and `extra` parameters.
    pub fn tcp_url(&self, host: &str, extra: &str) -> String {
        assert!(self.tcp, "the server has no TCP listener");
        format!(
            "host={host} port={} user=postgres password={} dbname=postgres {extra}",
            self.port,
            PgServer::PASSWORD
        )
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<PgServer> {
        let found = Path::new(PG_BIN).join("pg_ctl").exists();
        match external_decision(std::env::var("PERCH_SKIP_EXTERNAL").ok().as_deref(), found) {
            External::Run => {}
            External::Skip => {
                eprintln!("skipped: PostgreSQL 15 is not installed ({PG_BIN})");
                return None;
            }
            External::Fail => panic!(
                "PostgreSQL 15 is not installed ({PG_BIN}): ./test.sh installs it (or set PERCH_SKIP_EXTERNAL=1)"
            ),
        }
        let dir = tempfile::Builder::new()
            .prefix("perch-pg-own-")
            .tempdir()
            .expect("temp dir")
            .keep();
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = if tls.is_some() { free_port() } else { 5432 };
        let server = PgServer {
            url: format!(
                "host={} port={port} user=postgres dbname=postgres",
                dir.display()
            ),
            dir,
            as_postgres,
            port,
            tcp: tls.is_some(),
        };
        server.run(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                &server.data().display().to_string(),
            ],
        );
        if let Some((cert, key)) = tls {
            server.set_up_tls(cert, key);
        }
        server.resume();
        if tls.is_some() {
            server.run(
                "psql",
                &[
                    "-h",
                    &server.dir.display().to_string(),
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-qc",
                    &format!("ALTER USER postgres PASSWORD '{}'", PgServer::PASSWORD),
                ],
            );
        }
        Some(server)
    }

    /// The certificate and key in the data directory, `ssl = on`, and a
    /// pg_hba.conf that refuses TCP without TLS.
    fn set_up_tls(&self, cert: &str, key: &str) {
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostnossl all all all reject\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&data)
                .status()
                .expect("chown");
            assert!(status.success());
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` of PostgreSQL's, run as the postgres user if we are root.
    fn command(&self, program: &str) -> Command {
        let bin = Path::new(PG_BIN).join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown: sessions are cut) and waits.
    pub fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&self) {
        let data = self.data().display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let options = format!(
            "-k {} -c listen_addresses={listen} -p {}",
            self.dir.display(),
            self.port
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_program_always_runs() {
        for skip in [None, Some("1"), Some("0"), Some("")] {
            assert_eq!(external_decision(skip, true), External::Run, "{skip:?}");
        }
    }

    #[test]
    fn a_missing_program_fails_unless_skipping_is_asked_for() {
        assert_eq!(external_decision(Some("1"), false), External::Skip);
        for skip in [
            None,
            Some("0"),
            Some(""),
            Some("true"),
            Some("yes"),
            Some(" 1"),
        ] {
            assert_eq!(external_decision(skip, false), External::Fail, "{skip:?}");
        }
    }

    #[test]
    fn programs_are_found_on_path_and_by_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("perch-no-such-program").is_none());
        assert!(find_program("/nonexistent/sh").is_none());
        assert!(require_program("sh"));
    }

    #[test]
    fn a_missing_program_is_skipped_only_when_asked() {
        assert!(!require_program_with("perch-no-such-program", Some("1")));
        assert!(require_program_with("sh", Some("1")));
    }

    #[test]
    #[should_panic(expected = "needs `perch-no-such-program`, which is not on PATH")]
    fn a_missing_program_fails_naming_it() {
        require_program_with("perch-no-such-program", None);
    }
}
