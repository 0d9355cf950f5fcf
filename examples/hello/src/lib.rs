//! The smallest useful Perch function: greets whoever calls it.
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let name = req.uri().query().and_then(|q| q.strip_prefix("name=")).unwrap_or("world");
    Ok(Response::new(format!("Hello, {name}!\n").into()))
}
