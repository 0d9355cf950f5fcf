//! A wasm front for a container service: checks a signed URL at the edge,
//! answers `/healthz` itself, and forwards everything else to the tenant's
//! container function through `http://NAME.containers.internal` with the
//! credentials removed and `X-Front-Verified` set.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use perch_sdk::fetch;
use perch_sdk::http::{HeaderValue, header};
use perch_sdk::prelude::*;
use sha2::Sha256;

perch_sdk::export!(handle);

/// Headers that describe one hop, and those wasi-http won't let a
/// component set.
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

async fn handle(req: Request) -> Result<Response> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::from_text("ok\n"));
    }
    let secret = perch_sdk::config::secret("URL_SECRET")?;
    if let Err(reason) = verify(&req, secret.as_bytes()) {
        perch_sdk::info!("refused {}: {reason}", req.uri().path());
        return Ok(Error::forbidden(reason).into_response());
    }
    forward(req).await
}

/// A signed URL carries `exp` (unix seconds) and `sig`, the unpadded
/// base64url HMAC-SHA256 of `PATH?exp=EXP` under `URL_SECRET`.
fn verify(req: &Request, secret: &[u8]) -> std::result::Result<(), &'static str> {
    let exp = req.query("exp").ok_or("unsigned URL")?;
    let sig = req.query("sig").ok_or("unsigned URL")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "malformed signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad key")?;
    mac.update(format!("{}?exp={exp}", req.uri().path()).as_bytes());
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let exp: u64 = exp.parse().map_err(|_| "malformed expiry")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if exp <= now {
        return Err("expired URL");
    }
    Ok(())
}

async fn forward(req: Request) -> Result<Response> {
    // The tenant's container function, by name; `ORIGIN` may name another
    // base URL instead (then the egress policy applies as for any fetch).
    let origin = perch_sdk::config::var("ORIGIN").unwrap_or_else(|| {
        let service = perch_sdk::config::var("SERVICE").unwrap_or_else(|| "app".into());
        format!("http://{service}.containers.internal")
    });
    let path = req.uri().path();
    let url = format!("{}{path}", origin.trim_end_matches('/'));
    let mut outgoing = fetch::request(req.method().clone(), &url);
    let headers = outgoing.headers_mut().expect("a fresh builder");
    for (name, value) in req.headers() {
        let credential = name == header::AUTHORIZATION || name == header::COOKIE;
        if credential || HOP.contains(&name.as_str()) || name == "x-front-verified" {
            continue;
        }
        headers.append(name, value.clone());
    }
    headers.insert("x-front-verified", HeaderValue::from_static("1"));
    let outgoing = outgoing
        .body(req.into_body())
        .map_err(|e| Error::internal(format!("building the service request: {e}")))?;
    match fetch::fetch(outgoing).await {
        Ok(mut resp) => {
            for name in HOP {
                resp.headers_mut().remove(name);
            }
            Ok(resp)
        }
        Err(e) => {
            perch_sdk::info!("the service did not answer: {e}");
            Ok(Error::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the service did not answer",
            )
            .into_response())
        }
    }
}
