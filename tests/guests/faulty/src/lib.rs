//! Test guest written against the raw `wasi:http` bindings, so it can misbehave
//! in ways a well-formed SDK never would. The path picks the behaviour:
//! `/trap` panics before responding, `/noresp` returns without a response,
//! `/hang` waits forever on a timer, `/spin` loops forever on the CPU,
//! `/env?NAME` answers the environment variable `NAME` (404 when unset),
//! `/alloc?MB` grows memory by MB mebibytes (touching every page) and
//! answers how much it got, `/recurse` recurses without bound,
//! `/count` answers how many requests this instance has served (1 unless
//! the function opted into instance reuse),
//! `/print?KIB` writes `to stdout` to stdout, `to stderr` to stderr, then
//! KIB kibibytes of `x` lines to stdout, and answers 200,
//! `/__perch/scheduled` (a cron tick) prints its `perch-cron` and
//! `perch-scheduled-time` headers, then spins forever when the schedule
//! starts with `59 ` (to show the tick's CPU limit),
//! anything else answers `200 ok`.
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Faulty;

/// Requests this instance has handled (instance state that reuse keeps).
static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Guest for Faulty {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path == "/__perch/scheduled" {
            let headers = request.headers();
            let get = |name: &str| {
                headers
                    .get(name)
                    .first()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let cron = get("perch-cron");
            println!("cron={cron} time={}", get("perch-scheduled-time"));
            if cron.starts_with("59 ") {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            return respond(out, 200, b"scheduled");
        }
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match route {
            "/trap" => panic!("deliberate trap"),
            "/noresp" => {}
            "/hang" => loop {
                wasip2::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
            },
            "/spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "/env" => {
                let value = wasip2::cli::environment::get_environment()
                    .into_iter()
                    .find(|(k, _)| k == query)
                    .map(|(_, v)| v);
                let status = if value.is_some() { 200 } else { 404 };
                respond(out, status, value.unwrap_or_default().as_bytes());
            }
            "/alloc" => {
                let mb: usize = query.parse().unwrap_or(1);
                let mut held: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mb {
                    held.push(vec![1u8; 1 << 20]);
                }
                let total: usize = held.iter().map(|v| v.len()).sum();
                respond(out, 200, format!("allocated {} MiB", total >> 20).as_bytes());
            }
            "/recurse" => {
                let depth = recurse(std::hint::black_box(1));
                respond(out, 200, format!("depth {depth}").as_bytes());
            }
            "/count" => respond(out, 200, served.to_string().as_bytes()),
            "/print" => {
                use std::io::Write;
                println!("to stdout");
                eprintln!("to stderr");
                let kib: usize = query.parse().unwrap_or(0);
                let line = [b'x'; 1023];
                let mut stdout = std::io::stdout().lock();
                for _ in 0..kib {
                    let _ = stdout.write_all(&line);
                    let _ = stdout.write_all(b"\n");
                }
                let _ = stdout.flush();
                respond(out, 200, b"printed");
            }
            _ => respond(out, 200, b"ok"),
        }
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    recurse(frame[3] + 1) + frame[5]
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let resp = OutgoingResponse::new(Fields::new());
    resp.set_status_code(status).expect("status");
    let outgoing = resp.body().expect("body");
    ResponseOutparam::set(out, Ok(resp));
    let stream = outgoing.write().expect("stream");
    stream.blocking_write_and_flush(body).expect("write");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish");
}

wasip2::http::proxy::export!(Faulty);
