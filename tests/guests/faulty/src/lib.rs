//! Test guest written against the raw `wasi:http` bindings, so it can misbehave
//! in ways a well-formed SDK never would. The path picks the behaviour:
//! `/trap` panics before responding, `/noresp` returns without a response,
//! `/hang` waits forever on a timer, `/spin` loops forever on the CPU,
//! `/env?NAME` answers the environment variable `NAME` (404 when unset),
//! anything else answers `200 ok`.
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Faulty;

impl Guest for Faulty {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
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
            _ => respond(out, 200, b"ok"),
        }
    }
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
