//! Verifies an HMAC-signed token, rewrites headers and forwards to an origin.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use perch_sdk::fetch;
use perch_sdk::http::{HeaderMap, HeaderValue, header};
use perch_sdk::prelude::*;
use serde::Deserialize;
use sha2::Sha256;

perch_sdk::export!(handle);

const COOKIE: &str = "perch_auth";
/// Hop-by-hop headers and those wasi-http won't let a component set.
const DROPPED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

async fn handle(req: Request) -> Result<Response> {
    let secret = perch_sdk::config::secret("AUTH_SECRET")?;
    let subject = match verify(&req, secret.as_bytes()) {
        Ok(sub) => sub,
        Err(reason) => {
            perch_sdk::info!("refused {} {}: {reason}", req.method(), req.uri().path());
            return Ok(Error::unauthorized(reason)
                .into_response()
                .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"perch\""));
        }
    };
    forward(req, &subject).await
}

/// The token's subject, or why there is none.
fn verify(req: &Request, secret: &[u8]) -> std::result::Result<String, &'static str> {
    let token = req
        .header_str("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.cookie(COOKIE))
        .ok_or("no token")?;
    let (payload, signature) = token.trim().split_once('.').ok_or("malformed token")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "malformed token")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad key")?;
    mac.update(payload.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature).map_err(|_| "bad signature")?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or("malformed token")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if claims.exp <= now {
        return Err("token expired");
    }
    if claims.sub.is_empty() || HeaderValue::from_str(&claims.sub).is_err() {
        return Err("malformed token");
    }
    Ok(claims.sub)
}

async fn forward(req: Request, subject: &str) -> Result<Response> {
    let origin =
        perch_sdk::config::var("ORIGIN").ok_or_else(|| Error::internal("ORIGIN is not set"))?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", origin.trim_end_matches('/'));
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| req.header_str("host").map(str::to_string));
    let mut outgoing = fetch::request(req.method().clone(), &url);
    let headers = outgoing.headers_mut().expect("a fresh builder");
    for (name, value) in req.headers() {
        if DROPPED.contains(&name.as_str())
            || name == "authorization"
            || name == "cookie"
            || name == "x-auth-subject"
        {
            continue;
        }
        headers.append(name, value.clone());
    }
    if let Some(cookies) = other_cookies(req.headers()) {
        headers.insert(header::COOKIE, cookies);
    }
    headers.insert(
        "x-auth-subject",
        HeaderValue::from_str(subject).expect("checked in verify"),
    );
    if let Some(host) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert("x-forwarded-host", host);
    }
    let outgoing = outgoing
        .body(req.into_body())
        .map_err(|e| Error::internal(format!("building the origin request: {e}")))?;
    let mut resp = fetch::fetch(outgoing).await?;
    for name in DROPPED {
        resp.headers_mut().remove(name);
    }
    Ok(resp)
}

/// The request's cookies without the token.
fn other_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').is_none_or(|(k, _)| k != COOKIE))
        .collect();
    (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten()
}
