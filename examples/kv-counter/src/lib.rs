//! A visit counter on `wasi:keyvalue`, greeting with a `wasi:config` value.
//!
//! `GET /` adds one to the `hits` counter of the default bucket and answers
//! `<GREETING>! You are visitor N.`; `GET /?store=NAME` counts in the bucket
//! bound as `NAME` instead (404 when no such store is bound);
//! `DELETE /` resets the counter.
use wstd::http::{Body, Error, Method, Request, Response, StatusCode};

wit_bindgen::generate!({
    path: ["../../wit/deps/keyvalue", "../../wit/deps/config", "wit"],
    world: "perch-examples:kv-counter/counter",
    generate_all,
});

use wasi::config::store as config;
use wasi::keyvalue::{atomics, store};

fn text(status: StatusCode, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.into())?)
}

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let store_name = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("store=")))
        .unwrap_or("");
    let bucket = match store::open(store_name) {
        Ok(b) => b,
        Err(store::Error::NoSuchStore) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no-such-store: {store_name}\n"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("open failed: {e:?}\n"),
            );
        }
    };
    if req.method() == Method::DELETE {
        return match bucket.delete("hits") {
            Ok(()) => text(StatusCode::OK, "reset\n".into()),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("delete failed: {e:?}\n"),
            ),
        };
    }
    let hits = match atomics::increment(&bucket, "hits", 1) {
        Ok(n) => n,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("increment failed: {e:?}\n"),
            );
        }
    };
    let greeting = config::get("GREETING")
        .ok()
        .flatten()
        .unwrap_or_else(|| "Hello".to_string());
    text(
        StatusCode::OK,
        format!("{greeting}! You are visitor {hits}.\n"),
    )
}
