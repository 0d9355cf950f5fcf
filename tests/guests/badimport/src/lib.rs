//! Test guest: a valid HTTP handler that imports an interface Perch does not
//! provide (`acme:unknown/telemetry`). Upload must be refused, naming it.
use wstd::http::{Body, Error, Request, Response};

wit_bindgen::generate!({ path: "wit", world: "badimport" });

#[wstd::http_server]
async fn main(_req: Request<Body>) -> Result<Response<Body>, Error> {
    acme::unknown::telemetry::emit("called");
    Ok(Response::new("unreachable\n".to_string().into()))
}
