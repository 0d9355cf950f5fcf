//! Hostile tenants and hostile clients against the real binary: each limit
//! holds, and every test also checks that another tenant keeps being served.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perch_tests::{ADMIN_TOKEN, NO_HANG, Perch, eventually, guests};
use reqwest::Method;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn error_code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().expect("JSON error body");
    let code = body["error"]["code"].as_str().unwrap_or_default();
    (status, code.to_string())
}

/// A client that opens a new connection per request, so the server closing
/// idle connections (header-read timeout) never races a reused one.
fn fresh_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// One request of another tenant sent while a hostile one runs.
#[derive(Debug)]
struct Probe {
    status: u16,
    took: Duration,
    /// Answered before `stop` was set, i.e. while the hostile load ran.
    during: bool,
}

/// Requests sent to `host` one after another until `stop` is set (at
/// least `min` of them).
fn probe(perch: &Perch, host: &str, stop: &AtomicBool, min: usize) -> Vec<Probe> {
    let client = fresh_client();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) || seen.len() < min {
        let t = Instant::now();
        let status = client
            .get(format!("{}/", perch.data_url))
            .header("host", host)
            .send()
            .map(|r| {
                let s = r.status().as_u16();
                let _ = r.bytes();
                s
            })
            .unwrap_or(0);
        seen.push(Probe {
            status,
            took: t.elapsed(),
            during: !stop.load(Ordering::Relaxed),
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Asserts every probe succeeded, none hung, and (when `during` is set)
/// that some were answered while the hostile load ran, not only after it.
/// Their latency is printed, not asserted: `bench/run.sh isolation`
/// measures it.
fn assert_served(what: &str, probes: &[Probe], during: bool) {
    assert!(!probes.is_empty(), "{what}: no probe ran");
    let slowest = probes.iter().map(|p| p.took).max().unwrap();
    let answered_during = probes.iter().filter(|p| p.during).count();
    eprintln!(
        "{what}: {} requests of another tenant ({answered_during} while it ran), slowest {slowest:?}",
        probes.len()
    );
    assert!(
        probes.iter().all(|p| p.status == 200),
        "{what}: another tenant's requests failed: {probes:?}"
    );
    assert!(
        slowest < NO_HANG,
        "{what}: another tenant's request hung for {slowest:?}: {probes:?}"
    );
    assert!(
        !during || answered_during > 0,
        "{what}: another tenant was answered only after it ended: {probes:?}"
    );
}

/// Fields of `/proc/{pid}/status` in bytes, read from one snapshot.
fn status_fields<const N: usize>(pid: i32, fields: [&str; N]) -> [u64; N] {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}), so RSS cannot be measured"));
    fields.map(|field| {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| {
                panic!("no {field} in {path}, so RSS cannot be measured:\n{status}")
            });
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable {field} line in {path}: {line:?}"));
        kb * 1024
    })
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0)
/// and returns it: the baseline to measure growth from. Without the reset
/// the old peak would hide any growth up to it, so an RSS bound measured
/// from it could pass without measuring anything: a failed reset fails the
/// test instead.
fn reset_peak_rss(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/clear_refs");
    if let Err(e) = std::fs::write(&path, "5") {
        panic!(
            "cannot reset the peak RSS: writing 5 to {path} failed ({e}); the RSS bound would measure nothing"
        );
    }
    // Right after a reset the peak is the current RSS, give or take what
    // the idle server allocated or freed since; far above it, the write was
    // accepted but reset nothing.
    let [peak, rss] = status_fields(pid, ["VmHWM:", "VmRSS:"]);
    assert!(
        peak <= rss + 16 * MIB,
        "writing 5 to {path} did not reset the peak RSS (VmHWM {} MiB, VmRSS {} MiB)",
        peak / MIB,
        rss / MIB
    );
    peak
}

fn peak_rss(pid: i32) -> u64 {
    let [peak] = status_fields(pid, ["VmHWM:"]);
    peak
}

/// Waits until `n` instances are running (the requests that hold them have
/// really started).
pub(crate) fn wait_for_instances(perch: &Perch, n: u32) {
    eventually(&format!("{n} instances running"), || {
        perch.metric("perch_instances_in_use", "") >= f64::from(n)
    });
}

/// Lets this process open the thousands of sockets some tests need.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn data_addr(perch: &Perch) -> String {
    perch.data_url.trim_start_matches("http://").to_string()
}

/// Sends raw bytes on a new connection and reads until the server closes
/// it or `wait` passes without data.
fn raw_exchange(perch: &Perch, request: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(data_addr(perch)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------- acceptance 1

#[test]
fn spinning_guests_hit_the_cpu_limit_while_others_are_served() {
    let perch = Perch::start_with("[limits]\ncpu_ms = 500\nwall_ms = 30000\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
    let spin = || {
        let t = Instant::now();
        let resp = fresh_client()
            .get(format!("{}/spin", perch.data_url))
            .header("host", "faulty.a.test")
            .send()
            .unwrap();
        (error_code(resp), t.elapsed())
    };

    // One infinite loop is answered 504, stopped by the CPU-time limit (the
    // wall limit is 30 s). How soon after its 500 ms it is stopped is a
    // latency figure: `bench/run.sh isolation` measures it.
    let (code, took) = spin();
    assert_eq!(code, (504, "function_timeout".to_string()));
    eprintln!("one infinite loop answered after {took:?}");
    assert!(took < NO_HANG, "infinite loop stopped only after {took:?}");
    perch.wait_for_log_line(&["CPU-time limit", "tenant=a", "function=faulty"]);

    // Three at once, more than there are cores: each still ends in 504 (they
    // share the cores, so each takes longer), and another tenant's requests
    // are answered meanwhile.
    let stop = AtomicBool::new(false);
    let (spins, probes) = std::thread::scope(|s| {
        let _stop = perch_tests::StopOnDrop(&stop);
        let prober = s.spawn(|| probe(&perch, "hello.b.test", &stop, 10));
        let spins: Vec<_> = (0..3).map(|_| s.spawn(spin)).collect();
        let spins: Vec<_> = spins.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        (spins, prober.join().unwrap())
    });
    eprintln!(
        "three infinite loops answered after {:?}",
        spins.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    for (code, took) in &spins {
        assert_eq!(code, &(504, "function_timeout".to_string()));
        assert!(*took < NO_HANG, "infinite loop stopped only after {took:?}");
    }
    assert_served("during infinite loops", &probes, true);
    assert_eq!(
        perch.metric(
            "perch_requests_total",
            "tenant=\"a\",function=\"faulty\",status=\"504\""
        ),
        4.0
    );
    // The log names tenant, function, version and the limit.
    // Written to a pipe, the log carries no terminal colour codes, so a
    // line can be matched as it is.
    let logs = perch.logs();
    assert!(
        !logs.contains('\x1b'),
        "colour codes in a piped log:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("CPU-time limit")
            && l.contains("tenant=a")
            && l.contains("function=faulty")
            && l.contains("version=1")),
        "no log line names the limit and the function:\n{logs}"
    );
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
}

// ------------------------------------------------------------- acceptance 2

#[test]
fn memory_growth_stops_at_the_instance_limit_and_rss_stays_bounded() {
    // Default instance limit: 128 MiB.
    let perch = Perch::start();
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    // Warm both paths (pool slots, lazily built state) before measuring.
    assert_eq!(
        perch.get("faulty.a.test", "/alloc?8").text().unwrap(),
        "allocated 8 MiB"
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    let pid = perch.pid();
    let base = reset_peak_rss(pid);

    let stop = AtomicBool::new(false);
    let probes = std::thread::scope(|s| {
        let _stop = perch_tests::StopOnDrop(&stop);
        let prober = s.spawn(|| probe(&perch, "hello.b.test", &stop, 5));
        for _ in 0..3 {
            assert_eq!(
                error_code(perch.get("faulty.a.test", "/alloc?2048")),
                (500, "memory_limit".into())
            );
        }
        stop.store(true, Ordering::Relaxed);
        prober.join().unwrap()
    });
    let grown = peak_rss(pid).saturating_sub(base);
    assert!(
        grown <= 128 * MIB + 64 * MIB,
        "peak RSS grew by {} MiB",
        grown / MIB
    );
    // (Three refused allocations can end before a probe is answered, so
    // only that none failed or hung is asserted.)
    assert_served("during memory growth", &probes, false);
    assert!(perch.logs().contains("memory limit"));
    assert_eq!(
        perch.get("faulty.a.test", "/alloc?8").text().unwrap(),
        "allocated 8 MiB"
    );
}

// ------------------------------------------------------------- acceptance 3

#[test]
fn recursion_traps_and_a_64_mib_response_streams_in_bounded_memory() {
    // Producing 64 MiB takes the guest a while on a loaded debug build.
    let perch = Perch::start_with("[limits]\ncpu_ms = 20000\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("e", "echo", guests::ECHO, "echo.e.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/recurse")),
        (500, "function_error".into())
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);

    // Warm the echo path, then measure one 64 MiB response read slowly
    // enough that the server has to hold back rather than buffer.
    assert_eq!(
        perch
            .get("echo.e.test", "/big?mib=1")
            .bytes()
            .unwrap()
            .len(),
        1 << 20
    );
    let pid = perch.pid();
    let base = reset_peak_rss(pid);
    let mut resp = fresh_client()
        .get(format!("{}/big?mib=64", perch.data_url))
        .header("host", "echo.e.test")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut offset: u64 = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = resp.read(&mut chunk).expect("response cut off");
        if n == 0 {
            break;
        }
        for (i, b) in chunk[..n].iter().enumerate() {
            let at = offset + i as u64;
            let want = ((at / (64 * 1024)) % 251) as u8;
            assert_eq!(*b, want, "byte {at} corrupted");
        }
        offset += n as u64;
        if offset % (8 * MIB) < n as u64 {
            // Pause now and then: a slow reader must not make Perch buffer.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(offset, 64 * MIB, "response length");
    let grown = peak_rss(pid).saturating_sub(base);
    assert!(
        grown < 128 * MIB,
        "peak RSS grew by {} MiB while streaming",
        grown / MIB
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
}

// ------------------------------------------------------------- acceptance 5

#[test]
fn oversized_bodies_and_headers_get_413_and_431() {
    let perch = Perch::start();
    perch.deploy("e", "echo", guests::ECHO, "echo.e.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");

    // 20 MiB declared: refused from the length, before the body is read.
    let (raw, _) = raw_exchange(
        &perch,
        format!(
            "POST /count HTTP/1.1\r\nHost: echo.e.test\r\nContent-Length: {}\r\n\r\n",
            20 * MIB
        )
        .as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert!(raw.contains("\"body_too_large\""), "{raw}");

    // 20 MiB chunked, to a guest that reads it all before answering: the
    // limit is crossed while it reads, no head has gone out, so 413.
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(vec![7u8; 20 << 20]));
    let resp = fresh_client()
        .post(format!("{}/count", perch.data_url))
        .header("host", "echo.e.test")
        .body(body)
        .send();
    if let Ok(resp) = resp {
        // (The server may also close the connection while the client is
        // still sending, which the client reports as an error.)
        assert_eq!(error_code(resp), (413, "body_too_large".into()));
    }
    // Just under the limit is read in full.
    let resp = fresh_client()
        .post(format!("{}/count", perch.data_url))
        .header("host", "echo.e.test")
        .body(vec![1u8; 15 << 20])
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), (15u64 << 20).to_string());

    // 64 KiB of headers: Perch's own 431 with its JSON body.
    let resp = fresh_client()
        .get(format!("{}/", perch.data_url))
        .header("host", "hello.b.test")
        .header("x-big", "h".repeat(64 * 1024))
        .send()
        .unwrap();
    assert_eq!(error_code(resp), (431, "headers_too_large".into()));
    // Far past hyper's read buffer (1 MiB of headers): refused, never read
    // into memory without bound.
    let mut big = b"GET / HTTP/1.1\r\nHost: hello.b.test\r\n".to_vec();
    for i in 0..1024 {
        big.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let mut s = TcpStream::connect(data_addr(&perch)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(&big);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || status_of(&answer) == 431,
        "unexpected answer to 1 MiB of headers: {answer}"
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    assert_eq!(perch.get("echo.e.test", "/count").text().unwrap(), "0");
}

#[test]
fn slowloris_connections_are_cut_by_the_header_timeout_while_others_are_served() {
    let perch = Perch::start_with("[node]\nheader_read_timeout_seconds = 3\n");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);

    // A kept-alive connection that goes idle after one request is closed
    // by the same timeout.
    let mut idle = TcpStream::connect(data_addr(&perch)).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: hello.b.test\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut first = [0u8; 4096];
    let n = idle.read(&mut first).unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&first[..n])), 200);
    let idle_since = Instant::now();

    // 300 connections, each sending its request head a few bytes at a time.
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(data_addr(&perch)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: hello.b.test\r\n")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (closed_after, probes) = std::thread::scope(|sc| {
        let _stop = perch_tests::StopOnDrop(&stop);
        let prober = sc.spawn(|| probe(&perch, "hello.b.test", &stop, 20));
        let mut closed_after: Vec<Option<Duration>> = vec![None; slow.len()];
        let deadline = opened + Duration::from_secs(30);
        while closed_after.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, s) in slow.iter_mut().enumerate() {
                if closed_after[i].is_some() {
                    continue;
                }
                // Drip one more header line; notice when the server hung up.
                let _ = s.write(b"x-drip: 1\r\n");
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // EOF, a reset, or hyper's 408 before closing.
                    _ => closed_after[i] = Some(opened.elapsed()),
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::Relaxed);
        (closed_after, prober.join().unwrap())
    });
    assert_served("during 300 slowloris connections", &probes, true);
    let open = closed_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} slow connections were never closed");
    let first = closed_after.iter().flatten().min().unwrap();
    let last = closed_after.iter().flatten().max().unwrap();
    assert!(
        *first >= Duration::from_millis(2500),
        "closed before the timeout: {first:?}"
    );
    assert!(
        *last < Duration::from_secs(15),
        "closed only after {last:?}"
    );
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(2500) && idle_for < Duration::from_secs(15),
        "idle keep-alive connection closed after {idle_for:?}"
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
}

#[test]
fn content_length_with_transfer_encoding_is_framed_chunked_and_closed() {
    let perch = Perch::start();
    perch.deploy("e", "echo", guests::ECHO, "echo.e.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    // A smuggling attempt: CL says 3, the chunked body is longer, and a
    // second request follows on the same connection. Either header order.
    for framing in [
        "Content-Length: 3\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
    ] {
        let request = format!(
            "POST /cl-te HTTP/1.1\r\nHost: echo.e.test\r\n{framing}\r\n\r\n\
             6\r\nabcdef\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo.e.test\r\n\r\n"
        );
        let (raw, closed) = raw_exchange(&perch, request.as_bytes(), Duration::from_secs(30));
        assert_eq!(status_of(&raw), 200, "{raw}");
        // Framed by Transfer-Encoding, Content-Length ignored: the guest got
        // all six bytes (by the length it would have got three, and `def…`
        // would have been read as the next request).
        assert!(raw.contains("\r\nabcdef\r\n"), "{raw}");
        // And the connection is closed after the response: the pipelined
        // request is never answered.
        assert!(closed, "connection left open: {raw}");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "{raw}");
        assert!(!raw.contains("/smuggled"), "{raw}");
    }

    // The other ambiguous framings hyper refuses outright with 400.
    for bad in [
        "POST / HTTP/1.1\r\nHost: echo.e.test\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: echo.e.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.0\r\nHost: echo.e.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let (raw, closed) = raw_exchange(&perch, bad.as_bytes(), Duration::from_secs(30));
        assert_eq!(status_of(&raw), 400, "{bad:?} → {raw}");
        assert!(closed, "{bad:?} left the connection open");
    }
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
}

// ---------------------------------------------------------- connection cap

#[test]
fn connections_over_the_cap_wait_in_the_backlog_and_the_server_recovers() {
    let perch =
        Perch::start_with("[node]\nmax_connections = 50\nheader_read_timeout_seconds = 60\n");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    let hello = b"GET / HTTP/1.1\r\nHost: hello.b.test\r\nConnection: close\r\n\r\n";
    let (raw, _) = raw_exchange(&perch, hello, Duration::from_secs(30));
    assert_eq!(status_of(&raw), 200, "{raw}");
    // The harness client's pooled connection (if any) is not on the data
    // plane; the one above is closed. Take every slot with idle connections.
    let mut held: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(data_addr(&perch)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // One more: the kernel completes the handshake, but Perch does not read
    // it while the cap is reached.
    let mut queued = TcpStream::connect(data_addr(&perch)).expect("queued, not refused");
    queued.write_all(hello).unwrap();
    queued
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match queued.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a connection over the cap was served: {other:?}"),
    }
    // Closing ten of the held connections frees slots: the queued request
    // is then answered.
    held.drain(..10);
    queued
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let _ = queued.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(t.elapsed() < NO_HANG, "{:?}", t.elapsed());
    // Everything released: normal service.
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let client = fresh_client();
    for _ in 0..20 {
        let t = Instant::now();
        let resp = client
            .get(format!("{}/", perch.data_url))
            .header("host", "hello.b.test")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(t.elapsed() < NO_HANG, "{:?}", t.elapsed());
    }
}

// ------------------------------------------------------------- acceptance 6

#[test]
fn two_thousand_concurrent_requests_to_one_tenant_leave_others_served() {
    // Tenant A's requests hang until the wall limit; at most 256 run at
    // once (the default cap), the rest get 429 straight away.
    raise_fd_limit();
    let perch = Perch::start_with("[limits]\ncpu_ms = 5000\nwall_ms = 3000\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    let addr = data_addr(&perch);
    let start = std::sync::Barrier::new(2000 + 50);
    let (a, b) = std::thread::scope(|s| {
        let one = |host: &'static str, path: &'static str| {
            let addr = addr.clone();
            let start = &start;
            move || {
                start.wait();
                let t = Instant::now();
                let Ok(mut c) = TcpStream::connect(&addr) else {
                    return (0, t.elapsed());
                };
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                if c.write_all(req.as_bytes()).is_err() {
                    return (0, t.elapsed());
                }
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer);
                (status_of(&String::from_utf8_lossy(&answer)), t.elapsed())
            }
        };
        let spawn = |host, path| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, one(host, path))
                .unwrap()
        };
        let a: Vec<_> = (0..2000).map(|_| spawn("faulty.a.test", "/hang")).collect();
        let b: Vec<_> = (0..50).map(|_| spawn("hello.b.test", "/")).collect();
        let a: Vec<_> = a.into_iter().map(|h| h.join().unwrap()).collect();
        let b: Vec<_> = b.into_iter().map(|h| h.join().unwrap()).collect();
        (a, b)
    });
    let busy = a.iter().filter(|r| r.0 == 429).count();
    let timed_out = a.iter().filter(|r| r.0 == 504).count();
    let slowest_b = b.iter().map(|r| r.1).max().unwrap();
    eprintln!("tenant A: {busy} × 429, {timed_out} × 504; tenant B slowest {slowest_b:?}");
    assert_eq!(
        busy + timed_out,
        2000,
        "every request of A is answered 429 or 504: {:?}",
        a.iter()
            .filter(|r| r.0 != 429 && r.0 != 504)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(busy >= 2000 - 256, "only {busy} got 429");
    assert!(timed_out <= 256, "{timed_out} ran at once, over the cap");
    assert!(
        b.iter().all(|r| r.0 == 200),
        "tenant B failed during A's flood: {:?}",
        b.iter().filter(|r| r.0 != 200).collect::<Vec<_>>()
    );
    // Only "did not hang": the flood shares two cores with the test itself.
    // B's latency under such a flood is measured by `bench/run.sh isolation`.
    assert!(slowest_b < NO_HANG, "tenant B waited {slowest_b:?}");
    assert_eq!(
        perch.metric(
            "perch_requests_total",
            "tenant=\"a\",function=\"faulty\",status=\"429\""
        ),
        busy as f64
    );
    // Slots all come back.
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
}

// ---------------------------------------------------------- instance pool

#[test]
fn instance_pool_exhaustion_answers_503_with_retry_after_never_a_hang() {
    let perch =
        Perch::start_with("[limits]\ncpu_ms = 5000\nwall_ms = 4000\n[node]\nmax_instances = 2\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    let client = fresh_client();
    std::thread::scope(|s| {
        let hangs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| perch.get("faulty.a.test", "/hang").status()))
            .collect();
        // Once both hanging instances hold the pool, the node is full.
        wait_for_instances(&perch, 2);
        for host in ["hello.b.test", "faulty.a.test"] {
            let full = client
                .get(format!("{}/", perch.data_url))
                .header("host", host)
                .send()
                .unwrap();
            assert_eq!(full.headers()["retry-after"], "1");
            assert_eq!(error_code(full), (503, "overloaded".into()));
            // Answered at once, not queued until a slot came back: both
            // hanging requests still hold theirs.
            assert!(
                hangs.iter().all(|h| !h.is_finished()),
                "the 503 came only after a hanging request ended"
            );
        }
        for h in hangs {
            assert_eq!(h.join().unwrap(), 504);
        }
    });
    // Slots come back: everyone is served again.
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
}

// -------------------------------------------------------- secrets in logs

#[test]
fn no_token_secret_or_value_reaches_the_logs() {
    // Debug level: the most the server ever says.
    let mut perch = Perch::start_with_env("", &[("PERCH_LOG", "debug")]);
    let tenant_token = perch.deploy("a", "env", guests::FAULTY, "env.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    let admin = perch.admin();
    let api = perch.api(&tenant_token);
    let mut needles = vec![ADMIN_TOKEN.to_string(), tenant_token.clone()];

    // More tenant tokens, one used then revoked, then used again.
    let extra = admin
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["kv"]}))
        .expect_status(201);
    let kv_token = extra["token"].as_str().unwrap().to_string();
    needles.push(kv_token.clone());
    let kv_api = perch.api(&kv_token);
    kv_api.get("/v1/tenants/a/kv").ok();
    admin
        .delete(&format!(
            "/v1/tenants/a/tokens/{}",
            extra["id"].as_str().unwrap()
        ))
        .expect_status(204);
    let body = kv_api
        .get("/v1/tenants/a/kv")
        .expect_error(401, "unauthorized");
    assert!(!body.contains(&kv_token));
    // Wrong tokens, and a tenant token used outside its tenant.
    let wrong = "perch_0123456789abcdef_wrong_secret";
    needles.push(wrong.to_string());
    perch
        .api(wrong)
        .get("/v1/tenants")
        .expect_error(401, "unauthorized");
    api.get("/v1/tenants/b/functions")
        .expect_error(403, "forbidden");

    // Secrets set through settings, read by the guest.
    let secret = "s3cret-value-9f8e7d6c";
    needles.push(secret.to_string());
    api.put_json(
        "/v1/tenants/a/functions/env/settings",
        Some(json!({"vars": {"MODE": "x"}, "secrets": {"API_KEY": secret}})),
    )
    .expect_status(201);
    assert_eq!(
        perch.get("env.a.test", "/env?API_KEY").text().unwrap(),
        secret
    );
    // A bad settings body that carries a secret: the error names no value.
    let bad_secret = "s3cret-in-bad-body-1a2b";
    needles.push(bad_secret.to_string());
    let msg = api
        .put_json(
            "/v1/tenants/a/functions/env/settings",
            Some(json!({"vars": {"API_KEY": "v"}, "secrets": {"API_KEY": bad_secret}})),
        )
        .expect_error(400, "invalid_settings");
    assert!(!msg.contains(bad_secret), "{msg}");

    // KV values and metadata through the admin API.
    let value = "kv-value-5a4b3c2d1e";
    let meta = "kv-meta-77aa88bb";
    needles.push(value.to_string());
    needles.push(meta.to_string());
    api.put_json("/v1/tenants/a/kv/sessions", None).ok();
    let resp = perch
        .client
        .put(format!(
            "{}/v1/tenants/a/kv/sessions/values/user%2F1",
            perch.admin_url
        ))
        .bearer_auth(&tenant_token)
        .header("perch-kv-metadata", json!({"m": meta}).to_string())
        .body(value)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = perch
        .client
        .get(format!(
            "{}/v1/tenants/a/kv/sessions/values/user%2F1",
            perch.admin_url
        ))
        .bearer_auth(&tenant_token)
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), value);

    // End users' credentials pass through the data plane to the guest only.
    let cookie = "session=enduser-cookie-31415";
    let bearer = "enduser-bearer-27182";
    needles.push("enduser-cookie-31415".into());
    needles.push(bearer.to_string());
    let resp = perch
        .request(Method::GET, "env.a.test", "/trap")
        .header("cookie", cookie)
        .bearer_auth(bearer)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);

    // Restarting loads and unseals everything again.
    perch.sigterm();
    perch.restart();
    assert_eq!(
        perch.get("env.a.test", "/env?API_KEY").text().unwrap(),
        secret
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    perch.sigterm();

    let logs = perch.logs();
    assert!(logs.contains("perch listening"), "logs not captured");
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "not at debug level"
    );
    for n in &needles {
        assert!(
            !logs.contains(n.as_str()),
            "`{n}` appears in the server log"
        );
    }
}
