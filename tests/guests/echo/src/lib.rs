//! Test guest: reflects the request back (`/big?mib=N` streams N MiB instead;
//! `/count` reads the whole body before answering its length;
//! `/fetch?url=URL` fetches URL and answers its status and body, or 502 with
//! the error the host gave).
//!
//! The response carries `x-echo-method`, `x-echo-uri` (path and query),
//! `x-echo-scheme` (the scheme the host gave the request) and
//! `x-echo-headers` (the request headers as `name: value` lines, percent-free
//! JSON array), and the request body streamed back unchanged.
use futures_lite::stream::unfold;
use std::convert::Infallible;
use wstd::http::body::Bytes;
use wstd::http::{Body, Error, Request, Response};

const CHUNK: usize = 64 * 1024;

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    if req.uri().path() == "/big" {
        let mib: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("mib="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let chunks = mib * 1024 * 1024 / CHUNK;
        // Chunk i is filled with byte (i % 251) so the client can verify order.
        let body = unfold(0usize, move |i| async move {
            (i < chunks).then(|| (Ok::<_, Infallible>(Bytes::from(vec![(i % 251) as u8; CHUNK])), i + 1))
        });
        return Ok(Response::new(Body::from_try_stream(body)));
    }
    if req.uri().path() == "/count" {
        // Nothing goes out before the body is read to its end.
        let mut body = req.into_body();
        let n = body.contents().await?.len();
        return Ok(Response::new(format!("{n}").into()));
    }
    if req.uri().path() == "/fetch" {
        let url = req.uri().query().and_then(|q| q.strip_prefix("url=")).unwrap_or("").to_string();
        let outbound = match Request::get(url.as_str()).body(Body::empty()) {
            Ok(r) => r,
            Err(e) => return Ok(Response::builder().status(400).body(format!("bad url: {e}").into())?),
        };
        return match wstd::http::Client::new().send(outbound).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.into_body().str_contents().await.map(|s| s.to_string()).unwrap_or_default();
                Ok(Response::builder().header("x-upstream-status", status.to_string()).body(text.into())?)
            }
            Err(e) => Ok(Response::builder().status(502).body(format!("fetch failed: {e:?}").into())?),
        };
    }
    let (parts, body) = req.into_parts();
    let headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(k, v)| format!("{}: {}", k, String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let headers_json = format!(
        "[{}]",
        headers
            .iter()
            .map(|h| format!("\"{}\"", h.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    Ok(Response::builder()
        .header("x-echo-method", parts.method.as_str())
        .header("x-echo-uri", uri)
        .header("x-echo-scheme", parts.uri.scheme_str().unwrap_or(""))
        .header("x-echo-headers", headers_json)
        .body(body)?)
}
