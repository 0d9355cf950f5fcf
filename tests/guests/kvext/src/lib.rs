//! Test guest for Perch's KV extension and the rest of `wasi:keyvalue`.
//!
//! Routes (query values are percent-decoded):
//! `PUT /set/KEY?ttl_ms=N&meta=JSON` (body = value), `GET /entry/KEY`,
//! `GET /scan?prefix=P&cursor=C&limit=N`, `POST /cas/KEY?expected=X&new=Y`,
//! `GET /get/KEY?store=ID`, `GET /keys` (draft list-keys, all pages),
//! `GET /batch`, `GET /ops?n=N` (N reads, to hit the per-request limit).
use wstd::http::{Body, Error, Request, Response, StatusCode};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "perch:kv/imports",
    generate_all,
});

use perch::kv::ext;
use wasi::keyvalue::{batch, store};

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
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn err(e: store::Error) -> Result<Response<Body>, Error> {
    reply(500, format!("error: {e:?}"))
}

fn opt_json(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "null".into())
}

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bucket = match store::open(&param(&query, "store").unwrap_or_default()) {
        Ok(b) => b,
        Err(store::Error::NoSuchStore) => return reply(404, "no-such-store".into()),
        Err(e) => return err(e),
    };
    let (route, key) = match path[1..].split_once('/') {
        Some((r, k)) => (r.to_string(), k.to_string()),
        None => (path[1..].to_string(), String::new()),
    };
    match route.as_str() {
        "set" => {
            let value = req.into_body().str_contents().await?.to_string();
            let ttl = param(&query, "ttl_ms").and_then(|t| t.parse().ok());
            let meta = param(&query, "meta");
            match ext::set_with_options(&bucket, &key, value.as_bytes(), ttl, meta.as_deref()) {
                Ok(()) => reply(204, String::new()),
                Err(e) => err(e),
            }
        }
        "entry" => match ext::get_entry(&bucket, &key) {
            Ok(Some(e)) => reply(
                200,
                format!(
                    "{{\"value\":{:?},\"metadata\":{},\"expires_at\":{}}}",
                    String::from_utf8_lossy(&e.value),
                    opt_json(&e.metadata),
                    e.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "null".into())
                ),
            ),
            Ok(None) => reply(404, "absent".into()),
            Err(e) => err(e),
        },
        "scan" => {
            let limit = param(&query, "limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
            let (prefix, cursor) = (param(&query, "prefix").unwrap_or_default(), param(&query, "cursor"));
            match ext::scan(&bucket, &prefix, cursor.as_deref(), limit) {
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
            match ext::compare_and_swap(&bucket, &key, expected.as_deref(), new.as_deref()) {
                Ok(swapped) => reply(200, swapped.to_string()),
                Err(e) => err(e),
            }
        }
        "get" => match bucket.get(&key) {
            Ok(Some(v)) => reply(200, String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => reply(404, "absent".into()),
            Err(e) => err(e),
        },
        "keys" => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                match bucket.list_keys(cursor) {
                    Ok(resp) => {
                        all.extend(resp.keys);
                        match resp.cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    Err(e) => return err(e),
                }
            }
            reply(200, all.join("\n"))
        }
        "batch" => {
            let pairs = vec![("b1".to_string(), b"one".to_vec()), ("b2".to_string(), b"two".to_vec())];
            if let Err(e) = batch::set_many(&bucket, &pairs) {
                return err(e);
            }
            let got = match batch::get_many(&bucket, &["b1".into(), "b2".into(), "b3".into()]) {
                Ok(g) => g,
                Err(e) => return err(e),
            };
            if let Err(e) = batch::delete_many(&bucket, &["b1".into()]) {
                return err(e);
            }
            let shown: Vec<String> = got
                .into_iter()
                .map(|g| g.map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(&v))).unwrap_or_else(|| "-".into()))
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
