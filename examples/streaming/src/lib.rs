//! Transforms and produces bodies without holding them whole.
use perch_sdk::http::{Bytes, Chunks, map_chunks, stream_body};
use perch_sdk::prelude::*;
use perch_sdk::router::Router;
use sha2::{Digest, Sha256};

perch_sdk::export!(handle);

const CHUNK: u64 = 64 * 1024;
const MAX_GENERATE: u64 = 4 << 30;

async fn handle(req: Request) -> Response {
    Router::new()
        .post("/upper", upper)
        .post("/digest", digest)
        .get("/generate", generate)
        .handle(req)
        .await
}

async fn upper(req: Request) -> Response {
    let content_type = req.headers().get("content-type").cloned();
    let mut resp = Response::new(map_chunks(req.into_body(), |chunk| {
        chunk.to_ascii_uppercase().into()
    }));
    if let Some(ct) = content_type {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}

async fn digest(req: Request) -> Result<Response> {
    let mut chunks = Chunks::new(req.into_body());
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Response::from_json(
        &serde_json::json!({ "bytes": bytes, "sha256": sha256 }),
    ))
}

async fn generate(req: Request) -> Result<Response> {
    let total: u64 = req
        .query("bytes")
        .and_then(|b| b.parse().ok())
        .filter(|b| *b <= MAX_GENERATE)
        .ok_or_else(|| {
            Error::bad_request(format!("bytes must be a number from 0 to {MAX_GENERATE}"))
        })?;
    let chunks = (0..total.div_ceil(CHUNK)).map(move |n| {
        let start = n * CHUNK;
        let end = (start + CHUNK).min(total);
        Bytes::from((start..end).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    });
    Ok(Response::new(stream_body(chunks))
        .with_header("content-type", "application/octet-stream")
        .with_header("content-length", total.to_string()))
}
