//! Benchmark guest: a frozen copy of the wstd `examples/hello` (`GET /`
//! answers `Hello, world!\n`), plus a marker that bench/run.sh patches in
//! the built `.wasm` to make hundreds of distinct components from one build
//! (same length, so the binary stays valid). `GET /variant` answers it.
use wstd::http::{Body, Error, Request, Response};

static VARIANT: &str = "perch-bench-variant:000000";

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    if req.uri().path() == "/variant" {
        let variant = std::hint::black_box(VARIANT);
        return Ok(Response::new(format!("{variant}\n").into()));
    }
    let name = req.uri().query().and_then(|q| q.strip_prefix("name=")).unwrap_or("world");
    Ok(Response::new(format!("Hello, {name}!\n").into()))
}
