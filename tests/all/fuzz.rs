//! Fuzz targets that run on stable: proptest strategies driven for a time
//! budget instead of a case count.
//!
//! - `fuzz_upload_validation`: mutated real components and random bytes
//!   through `perch_runtime::Runtime::store_component` — never a panic, always
//!   `Ok` or a clear validation error.
//! - `fuzz_admin_json_bodies`: arbitrary JSON values, near-valid bodies,
//!   random text and hostile path segments against every admin endpoint that
//!   takes a body, on the real binary — never a 5xx, always a JSON error with
//!   a code for 4xx, and never a connection cut before the answer unless the
//!   server was meant to answer that request from its head and close
//!   ([`answered_from_head`]).
//! - The KV model (`kv/tests/model.rs`) reads the same budget.
//!
//! `PERCH_FUZZ_SECS` sets the time per target (default 3 s, so `cargo test`
//! stays fast); `PERCH_FUZZ_SEED` replays a run (the seed is printed when
//! each target starts, when it ends and in every failure). FUZZING.md
//! records the long runs.
use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use perch_tests::{ADMIN_TOKEN, Perch, guests};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};

/// Time each target runs for.
fn budget() -> Duration {
    let secs = std::env::var("PERCH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs.max(0.1))
}

/// `PERCH_FUZZ_SEED`, else a new seed from the clock. A value that is not a
/// number is an error, not a silently different run.
fn base_seed() -> u64 {
    match std::env::var("PERCH_FUZZ_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PERCH_FUZZ_SEED={s:?} is not a u64 seed")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Runs `test` on values of `strategy` in batches of `batch` cases until the
/// budget is spent. Batch `i` is seeded with `seed + i`, so a failure
/// replays with the printed `PERCH_FUZZ_SEED`; proptest shrinks it first.
fn fuzz<S>(
    name: &str,
    batch: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = base_seed();
    // First, so that a run killed or hung before it ends can be replayed.
    eprintln!(
        "fuzz target {name}: PERCH_FUZZ_SEED={seed}, {:.1} s",
        budget().as_secs_f64()
    );
    let start = Instant::now();
    let deadline = start + budget();
    let cases = Cell::new(0u64);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.wrapping_add(i).to_le_bytes());
        let config = Config {
            cases: batch,
            failure_persistence: None,
            max_shrink_time: 120_000,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        let result = runner.run(&strategy, |v| {
            cases.set(cases.get() + 1);
            test(v)
        });
        if let Err(e) = result {
            panic!(
                "fuzz target {name} failed after {} cases: {e}\nreplay with PERCH_FUZZ_SEED={seed}",
                cases.get()
            );
        }
        i += 1;
    }
    eprintln!(
        "fuzz target {name}: {} cases in {:.1} s, no failure (PERCH_FUZZ_SEED={seed})",
        cases.get(),
        start.elapsed().as_secs_f64()
    );
    cases.get()
}

// ---------------------------------------------------------------- uploads

/// Where an edit lands. Component-level sections (types, imports,
/// canonical functions, exports) sit after the core module, and the
/// preamble and section headers at the start: edits there exercise the
/// component parser and fail before any code is compiled, so they are
/// favoured over edits anywhere (mostly inside function bodies, which
/// cranelift validates as it compiles).
#[derive(Debug, Clone, Copy)]
enum Pos {
    /// A fraction of the length.
    Anywhere(u32),
    /// Bytes from the end, within the last 24 KiB.
    Tail(u16),
    /// Bytes from the start, within the first 2 KiB.
    Head(u16),
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        2 => any::<u32>().prop_map(Pos::Anywhere),
        3 => (0u16..24 * 1024).prop_map(Pos::Tail),
        1 => (0u16..2048).prop_map(Pos::Head),
    ]
}

/// One edit to a real component's bytes.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Pos, u8),
    SetByte(Pos, u8),
    Insert(Pos, Vec<u8>),
    Delete(Pos, u16),
    Truncate(Pos),
    /// Copies a run of bytes from one place to another (a LEB128 length or a
    /// section header lands somewhere plausible).
    Duplicate(Pos, Pos, u16),
    /// Sets a byte to an "interesting" value: 0, 0x7f, 0x80, 0xff.
    Interesting(Pos, u8),
}

fn at(pos: Pos, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    match pos {
        Pos::Anywhere(p) => (p as u64 * len as u64 / (u32::MAX as u64 + 1)) as usize,
        Pos::Tail(back) => len - 1 - (back as usize).min(len - 1),
        Pos::Head(i) => (i as usize).min(len - 1),
    }
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    match edit {
        Edit::FlipBit(p, b) if len > 0 => bytes[at(*p, len)] ^= 1 << (b % 8),
        Edit::SetByte(p, v) if len > 0 => bytes[at(*p, len)] = *v,
        Edit::Interesting(p, k) if len > 0 => {
            bytes[at(*p, len)] = [0x00, 0x7f, 0x80, 0xff][*k as usize % 4]
        }
        Edit::Insert(p, v) => {
            let i = at(*p, len + 1).min(len);
            bytes.splice(i..i, v.iter().copied());
        }
        Edit::Delete(p, n) if len > 0 => {
            let i = at(*p, len);
            let end = (i + *n as usize).min(len);
            bytes.drain(i..end);
        }
        Edit::Truncate(p) => bytes.truncate(at(*p, len + 1)),
        Edit::Duplicate(from, to, n) if len > 0 => {
            let f = at(*from, len);
            let t = at(*to, len);
            let n = (*n as usize).min(len - f).min(len - t);
            let run = bytes[f..f + n].to_vec();
            bytes[t..t + n].copy_from_slice(&run);
        }
        _ => {}
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (pos(), any::<u8>()).prop_map(|(p, b)| Edit::FlipBit(p, b)),
        3 => (pos(), any::<u8>()).prop_map(|(p, v)| Edit::SetByte(p, v)),
        2 => (pos(), any::<u8>()).prop_map(|(p, k)| Edit::Interesting(p, k)),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Edit::Insert(p, v)),
        1 => (pos(), 1u16..64).prop_map(|(p, n)| Edit::Delete(p, n)),
        1 => pos().prop_map(Edit::Truncate),
        1 => (pos(), pos(), 1u16..32).prop_map(|(f, t, n)| Edit::Duplicate(f, t, n)),
    ]
}

#[derive(Debug, Clone)]
enum Upload {
    /// A real component (index into `COMPONENTS`) with a few edits.
    Mutated(usize, Vec<Edit>),
    /// A component or core-module preamble followed by random bytes.
    Preamble(bool, Vec<u8>),
    /// Anything at all.
    Random(Vec<u8>),
}

const COMPONENTS: &[&str] = &[
    guests::HELLO,
    guests::ECHO,
    guests::FAULTY,
    guests::KVEXT,
    guests::BADIMPORT,
    guests::COMMAND,
];

fn upload() -> impl Strategy<Value = Upload> {
    prop_oneof![
        8 => (0..COMPONENTS.len(), prop::collection::vec(edit(), 1..6))
            .prop_map(|(c, e)| Upload::Mutated(c, e)),
        1 => (any::<bool>(), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(c, b)| Upload::Preamble(c, b)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Upload::Random),
    ]
}

#[test]
fn fuzz_upload_validation() {
    let originals: Vec<Vec<u8>> = COMPONENTS
        .iter()
        .map(|p| std::fs::read(p).expect("guest component"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut config = perch_runtime::RuntimeConfig::new(dir.path().join("artifacts"));
    // Mutants that still compile are cached: keep that small.
    config.cache_capacity = 2;
    config.max_instances = 4;
    let runtime = perch_runtime::Runtime::new(config).expect("runtime");
    let accepted = Cell::new(0u64);
    let cases = fuzz("upload_validation", 16, upload(), |u| {
        let bytes = match &u {
            Upload::Mutated(c, edits) => {
                let mut b = originals[*c].clone();
                for e in edits {
                    apply(&mut b, e);
                }
                b
            }
            Upload::Preamble(true, rest) => [b"\0asm\x0d\0\x01\0".as_slice(), rest].concat(),
            Upload::Preamble(false, rest) => [b"\0asm\x01\0\0\0".as_slice(), rest].concat(),
            Upload::Random(b) => b.clone(),
        };
        match runtime.store_component(&bytes) {
            Ok(digest) => {
                accepted.set(accepted.get() + 1);
                prop_assert_eq!(digest, perch_runtime::Digest::of(&bytes));
            }
            Err(perch_runtime::ValidationError::Storage(e)) => {
                return Err(TestCaseError::fail(format!("storage failure: {e}")));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.trim().is_empty(), "empty error for {u:?}");
                prop_assert!(msg.len() < 64 * 1024, "unbounded error message");
            }
        }
        Ok(())
    });
    eprintln!(
        "upload_validation: {} of {cases} inputs were accepted",
        accepted.get()
    );
    // Real components are still accepted after all that.
    runtime.store_component(&originals[0]).expect("hello");
}

// ------------------------------------------------------------- admin JSON

const KEYS: &[&str] = &[
    "domains",
    "scopes",
    "vars",
    "secrets",
    "kv",
    "limits",
    "memory_mb",
    "cpu_ms",
    "wall_ms",
    "outbound_requests",
    "outbound",
    "allow",
    "function",
    "f",
    "",
    "__proto__",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => short_text(),
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Text short enough for a URL path (the client refuses URIs over 64 KiB).
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9-]{0,70}",
        2 => "[A-Za-z_][A-Za-z0-9_]{0,12}",
        2 => "(\\*\\.)?([a-z0-9-]{0,12}\\.){0,4}[a-z0-9-]{0,12}\\.?(:[0-9]{1,6})?",
        1 => Just("*".to_string()),
        1 => prop::sample::select(vec!["functions", "routes", "kv", "logs", "*", "default"])
            .prop_map(str::to_string),
        2 => ".{0,40}",
        1 => "[\\x00-\\x1f\\u{7f}-\\u{10ffff}]{0,8}",
        1 => (1usize..8_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2i64..70_000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-0.0)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        3 => prop::sample::select(KEYS).prop_map(str::to_string),
                        1 => text()
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A body shaped like `endpoint`'s, with fuzzed values.
fn shaped(endpoint: usize) -> BoxedStrategy<Value> {
    let map = |v: BoxedStrategy<Value>| {
        prop::collection::btree_map(text(), v, 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed()
    };
    match endpoint {
        0 => prop::collection::vec(text().prop_map(Value::String), 0..6)
            .prop_map(|d| json!({ "domains": d }))
            .boxed(),
        1 => prop::collection::vec(text().prop_map(Value::String), 0..6)
            .prop_map(|s| json!({ "scopes": s }))
            .boxed(),
        2 => (
            map(text().prop_map(Value::String).boxed()),
            map(prop_oneof![Just(Value::Null), text().prop_map(Value::String)].boxed()),
            map(text().prop_map(Value::String).boxed()),
            prop::collection::btree_map(
                prop::sample::select(vec!["memory_mb", "cpu_ms", "wall_ms", "outbound_requests"])
                    .prop_map(str::to_string),
                number(),
                0..4,
            ),
            prop::collection::vec(text().prop_map(Value::String), 0..4),
            prop::collection::vec(text().prop_map(Value::String), 0..7),
        )
            .prop_map(|(vars, secrets, kv, limits, allow, cron)| {
                json!({"vars": vars, "secrets": secrets, "kv": kv, "limits": limits,
                       "outbound": {"allow": allow}, "cron": cron})
            })
            .boxed(),
        // `PUT …/deployment`: version/percent pairs and a sticky key.
        6 => (
            prop::collection::vec((number(), number()), 0..6),
            prop_oneof![Just(Value::Null), text().prop_map(Value::String), number()],
        )
            .prop_map(|(pairs, sticky)| {
                let versions: Vec<Value> = pairs
                    .into_iter()
                    .map(|(v, p)| json!({"version": v, "percent": p}))
                    .collect();
                json!({"versions": versions, "sticky": sticky})
            })
            .boxed(),
        _ => text().prop_map(|f| json!({ "function": f })).boxed(),
    }
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
    /// `[[[…]]]` or `{"a":{"a":…}}` this deep.
    Deep(bool, usize),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(v) => v.to_string().into_bytes(),
            Body::Raw(b) => b.clone(),
            Body::Deep(true, n) => format!("{}{}", "[".repeat(*n), "]".repeat(*n)).into_bytes(),
            Body::Deep(false, n) => {
                format!("{}1{}", "{\"a\":".repeat(*n), "}".repeat(*n)).into_bytes()
            }
        }
    }
}

#[derive(Debug, Clone)]
struct AdminCase {
    endpoint: usize,
    /// A name or host put into the path (percent-encoded).
    segment: String,
    body: Body,
    /// For KV puts: `?ttl=` and the metadata header.
    ttl: String,
    metadata: Vec<u8>,
}

fn admin_case() -> impl Strategy<Value = AdminCase> {
    (0usize..7).prop_flat_map(|endpoint| {
        let shape = if endpoint == 6 { 6 } else { endpoint.min(3) };
        let body = prop_oneof![
            4 => shaped(shape).prop_map(Body::Json),
            3 => value().prop_map(Body::Json),
            1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Body::Raw),
            1 => ".{0,64}".prop_map(|s| Body::Raw(s.into_bytes())),
            1 => (any::<bool>(), 1usize..5000).prop_map(|(a, n)| Body::Deep(a, n)),
        ];
        let segment = prop_oneof![
            3 => Just("fz".to_string()),
            1 => Just("f".to_string()),
            3 => short_text(),
        ];
        let ttl = prop_oneof![
            Just(String::new()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            ".{0,8}",
        ];
        let metadata = prop_oneof![
            Just(Vec::new()),
            value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..2048),
        ];
        (Just(endpoint), segment, body, ttl, metadata).prop_map(
            |(endpoint, segment, body, ttl, metadata)| AdminCase {
                endpoint,
                segment,
                body,
                ttl,
                metadata,
            },
        )
    })
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The admin API's body limit for JSON requests.
const JSON_LIMIT: usize = 1 << 20;
/// The KV limits a value put checks before reading the value.
const MAX_KEY: usize = 512;
const MAX_METADATA: usize = 1024;

/// `[a-z0-9][a-z0-9-]{0,62}`: tenant, function and namespace names.
fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Why the server answers `c` from the request head alone, without reading
/// the body, when it does. hyper then closes the connection after the
/// answer, and a client still sending the body may see the connection cut
/// before it reads the answer: for these requests a cut is an expected
/// outcome. For every other request the server reads the whole body first,
/// so a cut means the server failed. `meta` is the `Perch-KV-Metadata`
/// header as sent, if it was.
fn answered_from_head(c: &AdminCase, body_len: usize, meta: Option<&[u8]>) -> Option<String> {
    let seg = c.segment.as_str();
    // The client resolves a dot segment before sending: `.` drops itself,
    // `..` the segment before it too.
    let elsewhere = || {
        Some(format!(
            "the path with {seg:?} names an endpoint that takes no body"
        ))
    };
    let name =
        |what: &str| (!valid_name(seg)).then(|| format!("an invalid {what} name in the path"));
    let oversized = || {
        (body_len > JSON_LIMIT).then(|| {
            format!(
                "a {body_len}-byte body, over the {JSON_LIMIT}-byte limit (413 from its length)"
            )
        })
    };
    match (c.endpoint, seg) {
        (0 | 1, "." | "..") | (2..=4 | 6, "..") => elsewhere(),
        (0 | 1, _) => name("tenant").or_else(oversized),
        // `…/functions/./settings` is an upload of a function named
        // `settings`: read in full (up to 50 MiB) before it is refused.
        // So is `…/functions/./deployment`.
        (2 | 6, ".") => None,
        (2 | 6, _) => name("function").or_else(oversized),
        (3, _) => oversized(),
        (4, _) => {
            let key = if seg == "." { "" } else { seg };
            if key.len() > MAX_KEY {
                return Some(format!("a {}-byte key", key.len()));
            }
            if !matches!(c.ttl.parse::<u64>(), Ok(n) if n > 0) {
                return Some(format!("the invalid ttl {:?}", c.ttl));
            }
            let meta = meta?;
            if meta.len() > MAX_METADATA {
                return Some(format!("{} bytes of metadata", meta.len()));
            }
            match std::str::from_utf8(meta) {
                Ok(text) if text.is_ascii() && serde_json::from_str::<Value>(text).is_ok() => None,
                _ => Some("metadata that is not JSON text".into()),
            }
        }
        // Creating a namespace takes no body: it is never read.
        _ => Some("a body to PUT …/kv/{ns}, which takes none".into()),
    }
}

#[test]
fn fuzz_admin_json_bodies() {
    let perch = Perch::start();
    perch.deploy("fz", "f", guests::HELLO, "f.fz.test");
    // A new connection per request: a refused body may be answered before
    // it is read, and the server then closes that connection, which would
    // race the next request on a pooled one.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = perch.admin_url.clone();
    let from_head = Cell::new(0u64);
    let cut_short = Cell::new(0u64);
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u64>::new());
    fuzz("admin_json_bodies", 64, admin_case(), |c| {
        let seg = encode(&c.segment);
        let (method, path) = match c.endpoint {
            0 => (reqwest::Method::PUT, format!("/v1/tenants/{seg}")),
            1 => (reqwest::Method::POST, format!("/v1/tenants/{seg}/tokens")),
            2 => (
                reqwest::Method::PUT,
                format!("/v1/tenants/fz/functions/{seg}/settings"),
            ),
            3 => (reqwest::Method::PUT, format!("/v1/tenants/fz/routes/{seg}")),
            4 => (
                reqwest::Method::PUT,
                format!(
                    "/v1/tenants/fz/kv/default/values/{seg}?ttl={}",
                    encode(&c.ttl)
                ),
            ),
            6 => (
                reqwest::Method::PUT,
                format!("/v1/tenants/fz/functions/{seg}/deployment"),
            ),
            _ => (reqwest::Method::PUT, format!("/v1/tenants/fz/kv/{seg}")),
        };
        let body = c.body.bytes();
        let body_len = body.len();
        let mut req = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        // Header values may hold any byte but controls (other than tab).
        let meta: Vec<u8> = c
            .metadata
            .iter()
            .copied()
            .filter(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
            .collect();
        let mut sent_meta = None;
        if !meta.is_empty()
            && let Ok(v) = reqwest::header::HeaderValue::from_bytes(&meta)
        {
            req = req.header("perch-kv-metadata", v);
            sent_meta = Some(meta.as_slice());
        }
        let expected_cut = answered_from_head(&c, body_len, sent_meta);
        if expected_cut.is_some() {
            from_head.set(from_head.get() + 1);
        }
        let resp = match req.send() {
            Ok(r) => r,
            Err(e) => {
                // A transport error: the connection was cut (reset, EOF)
                // or hung before an answer arrived.
                prop_assert!(!e.is_timeout(), "no answer to {path} within 60 s: {e:?}");
                let Some(why) = expected_cut else {
                    return Err(TestCaseError::fail(format!(
                        "connection cut before the answer to {path} ({body_len}-byte body), \
                         which the server reads in full: {e:?}"
                    )));
                };
                // Answered from the head and closed while the client was
                // still sending: fine, unless the server died or panicked.
                let alive = client
                    .get(format!("{base}/healthz"))
                    .send()
                    .is_ok_and(|r| r.status() == 200);
                prop_assert!(alive, "server down after {path} ({why}): {e:?}");
                prop_assert!(
                    !perch.logs().contains("panicked"),
                    "handler panicked on {path} ({why}): {e:?}"
                );
                cut_short.set(cut_short.get() + 1);
                return Ok(());
            }
        };
        let status = resp.status().as_u16();
        *statuses.borrow_mut().entry(status).or_default() += 1;
        let text = resp
            .text()
            .map_err(|e| TestCaseError::fail(format!("body cut off: {e}")))?;
        prop_assert!(status < 500, "{path} answered {status}: {text}");
        if status >= 400 {
            let body: Value = serde_json::from_str(&text).map_err(|_| {
                TestCaseError::fail(format!("{status} with a non-JSON body: {text}"))
            })?;
            prop_assert!(
                body["error"]["code"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty()),
                "{status} without an error code: {text}"
            );
        }
        Ok(())
    });
    eprintln!(
        "admin_json_bodies: answers by status {:?}; {} requests the server answers from the head, \
         {} of them cut before the client read the answer",
        statuses.borrow(),
        from_head.get(),
        cut_short.get()
    );
    // Still healthy, still serving.
    let health = perch.client.get(format!("{base}/healthz")).send().unwrap();
    assert_eq!(health.status(), 200);
    perch.admin().get("/v1/tenants").ok();
    let logs = perch.logs();
    assert!(!logs.contains("panicked"), "a handler panicked:\n{logs}");
}
