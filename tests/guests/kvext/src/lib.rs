//! Test guest for Perch's KV (draft interfaces and extension) through
//! `perch-sdk`.
//!
//! Routes (query values are percent-decoded):
//! `PUT /set/KEY?ttl_ms=N&meta=JSON` (body = value), `GET /entry/KEY`,
//! `GET /scan?prefix=P&cursor=C&limit=N`, `POST /cas/KEY?expected=X&new=Y`,
//! `GET /get/KEY?store=ID`, `GET /keys` (draft list-keys, all pages),
//! `GET /batch`, `GET /ops?n=N` (N reads, to hit the per-request limit),
//! `GET /config?name=NAME`.
use wstd::http::{Body, Error, Request, Response, StatusCode};

use perch_sdk::kv::{Error as KvError, Kv, PutOptions};

fn reply(status: u16, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder().status(StatusCode::from_u16(status)?).body(body.into())?)
}

fn param(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('='))?;
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn err(e: KvError) -> Result<Response<Body>, Error> {
    reply(500, format!("error: {e:?}"))
}

fn opt_json(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "null".into())
}

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/config" {
        let name = param(&query, "name").unwrap_or_default();
        return match perch_sdk::config::var(&name) {
            Some(v) => reply(200, v),
            None => reply(404, "unset".into()),
        };
    }
    let bucket = match Kv::open(&param(&query, "store").unwrap_or_default()) {
        Ok(b) => b,
        Err(KvError::NoSuchStore) => return reply(404, "no-such-store".into()),
        Err(e) => return err(e),
    };
    let (route, key) = match path[1..].split_once('/') {
        Some((r, k)) => (r.to_string(), k.to_string()),
        None => (path[1..].to_string(), String::new()),
    };
    match route.as_str() {
        "set" => {
            let value = req.into_body().str_contents().await?.to_string();
            let ttl = param(&query, "ttl_ms").and_then(|t| t.parse().ok()).map(std::time::Duration::from_millis);
            let metadata = param(&query, "meta");
            match bucket.put_with(&key, value.as_bytes(), PutOptions { ttl, metadata }) {
                Ok(()) => reply(204, String::new()),
                Err(e) => err(e),
            }
        }
        "entry" => match bucket.entry(&key) {
            Ok(Some(e)) => reply(
                200,
                format!(
                    "{{\"value\":{:?},\"metadata\":{},\"expires_at\":{}}}",
                    String::from_utf8_lossy(&e.value),
                    opt_json(&e.metadata),
                    e.expires_at_ms.map(|t| t.to_string()).unwrap_or_else(|| "null".into())
                ),
            ),
            Ok(None) => reply(404, "absent".into()),
            Err(e) => err(e),
        },
        "scan" => {
            let limit = param(&query, "limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
            let (prefix, cursor) = (param(&query, "prefix").unwrap_or_default(), param(&query, "cursor"));
            match bucket.list(&prefix, cursor.as_deref(), limit) {
                Ok(page) => {
                    let names: Vec<String> = page.keys.iter().map(|k| format!("{:?}", k.name)).collect();
                    let cursor = page.cursor.map(|c| format!("{c:?}")).unwrap_or_else(|| "null".into());
                    reply(200, format!("{{\"keys\":[{}],\"cursor\":{cursor}}}", names.join(",")))
                }
                Err(e) => err(e),
            }
        }
        "cas" => {
            let expected = param(&query, "expected").map(|v| v.as_bytes().to_vec());
            let new = param(&query, "new").map(|v| v.as_bytes().to_vec());
            match bucket.compare_and_swap(&key, expected.as_deref(), new.as_deref()) {
                Ok(swapped) => reply(200, swapped.to_string()),
                Err(e) => err(e),
            }
        }
        "get" => match bucket.get(&key) {
            Ok(Some(v)) => reply(200, String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => reply(404, "absent".into()),
            Err(e) => err(e),
        },
        "keys" => match bucket.keys() {
            Ok(all) => reply(200, all.join("\n")),
            Err(e) => err(e),
        },
        "batch" => {
            let pairs = vec![("b1".to_string(), b"one".to_vec()), ("b2".to_string(), b"two".to_vec())];
            if let Err(e) = bucket.put_many(&pairs) {
                return err(e);
            }
            let names = ["b1".to_string(), "b2".to_string(), "b3".to_string()];
            let got = match bucket.get_many(&names) {
                Ok(g) => g,
                Err(e) => return err(e),
            };
            if let Err(e) = bucket.delete_many(&["b1".into()]) {
                return err(e);
            }
            let shown: Vec<String> = names
                .iter()
                .zip(got)
                .map(|(k, g)| g.map(|v| format!("{k}={}", String::from_utf8_lossy(&v))).unwrap_or_else(|| "-".into()))
                .collect();
            let exists = bucket.exists("b1").map(|b| b.to_string()).unwrap_or_default();
            reply(200, format!("{} b1-exists={exists}", shown.join(",")))
        }
        "ops" => {
            let n: u32 = param(&query, "n").and_then(|n| n.parse().ok()).unwrap_or(1);
            for i in 0..n {
                if let Err(e) = bucket.get("probe") {
                    return reply(429, format!("failed at op {i}: {e:?}"));
                }
            }
            reply(200, format!("did {n}"))
        }
        _ => reply(404, "unknown route".into()),
    }
}
