//! Test guest written against the raw `wasi:http` bindings, so it can misbehave
//! in ways a well-formed SDK never would. The path picks the behaviour:
//! `/trap` panics before responding, `/noresp` returns without a response,
//! `/hang` waits forever on a timer, `/spin` loops forever on the CPU,
//! anything else answers `200 ok`.
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Faulty;

impl Guest for Faulty {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match path.split('?').next().unwrap_or("") {
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
            _ => {
                let resp = OutgoingResponse::new(Fields::new());
                let body = resp.body().expect("body");
                ResponseOutparam::set(out, Ok(resp));
                let stream = body.write().expect("stream");
                stream.blocking_write_and_flush(b"ok").expect("write");
                drop(stream);
                OutgoingBody::finish(body, None).expect("finish");
            }
        }
    }
}

wasip2::http::proxy::export!(Faulty);
