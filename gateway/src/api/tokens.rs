//! A tenant's tokens (admin only): create (the secret is shown once and
//! stored as its SHA-256; optionally named and expiring after
//! `expires_in_s`), list, revoke. An expired token is refused like an
//! unknown one (`Registry::lookup_token`).
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::common::{PageQuery, Resp, TenantCall, blocking, not_found_endpoint, read_json};
use crate::app::App;
use crate::http::{error, json, method_not_allowed, no_content, tri};
use crate::registry::{SCOPES, TokenRecord, now, scopes_text};
use crate::secrets::{new_token, random_hex, token_hash};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    scopes: Vec<String>,
    /// Seconds until the token stops working (checked by hand, so a
    /// string or a fraction is an `invalid_expiry` too).
    #[serde(default)]
    expires_in_s: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
}

/// The longest lifetime a token may be given (ten years).
const MAX_EXPIRY_S: u64 = 315_360_000;

#[expect(
    clippy::result_large_err,
    reason = "the error is the answer, returned at once"
)]
fn expiry(value: Option<&serde_json::Value>) -> Result<Option<u64>, Resp> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(s) if (1..=MAX_EXPIRY_S).contains(&s) => Ok(Some(s)),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
            &format!("expires_in_s must be an integer from 1 to {MAX_EXPIRY_S} (seconds)"),
        )),
    }
}

/// A token's name: at most 64 of `[A-Za-z0-9._-]`.
fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn token_json(t: &TokenRecord) -> serde_json::Value {
    json!({"id": t.id, "name": t.name, "scopes": t.scopes, "created_at": t.created_at, "expires_at": t.expires_at})
}

/// `…/tokens` and `…/tokens/{id}`; `rest` starts after `tokens`.
pub(super) async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match rest {
        [] => collection(app, method, req, tenant).await,
        [id] => match method {
            Method::DELETE => {
                let id = id.to_string();
                tri!(blocking(move || app.registry.revoke_token(&tenant, &id)).await);
                no_content()
            }
            _ => method_not_allowed("DELETE"),
        },
        _ => not_found_endpoint(),
    }
}

async fn collection(app: Arc<App>, method: Method, req: Request<Incoming>, tenant: String) -> Resp {
    match method {
        Method::POST => {
            let body: TokenBody = tri!(read_json(req, false).await).expect("required body");
            if body.scopes.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scopes",
                    "at least one scope is required",
                );
            }
            if let Some(bad) = body.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scopes",
                    &format!("unknown scope `{bad}`; scopes are {}", scopes_text()),
                );
            }
            let lifetime = tri!(expiry(body.expires_in_s.as_ref()));
            if let Some(name) = body.name.as_deref().filter(|n| !valid_token_name(n)) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_name",
                    &format!("token name `{name}` must be 1 to 64 of A-Z a-z 0-9 . _ -"),
                );
            }
            let mut scopes = body.scopes;
            scopes.sort();
            scopes.dedup();
            let token = new_token("perch_");
            let created_at = now();
            let record = TokenRecord {
                id: random_hex(8),
                tenant: tenant.clone(),
                scopes,
                created_at,
                hash: token_hash(&token),
                name: body.name,
                expires_at: lifetime.map(|s| created_at + s),
            };
            let rec = tri!(blocking(move || app.registry.add_token(record)).await);
            let mut answer = token_json(&rec);
            answer["token"] = json!(token);
            json(StatusCode::CREATED, &answer)
        }
        Method::GET => {
            let page = tri!(PageQuery::of(&req));
            let list = tri!(blocking(move || app.registry.list_tokens(&tenant)).await);
            // Oldest first; the cursor is `created_at.id` of the last one.
            let key = |t: &&TokenRecord| format!("{:020}.{}", t.created_at, t.id);
            let after = page.cursor.clone();
            let (items, cursor) = page.cut(
                list.iter()
                    .filter(|t| after.as_deref().is_none_or(|c| key(t).as_str() > c)),
                key,
            );
            let items: Vec<_> = items.iter().map(|t| token_json(t)).collect();
            json(
                StatusCode::OK,
                &json!({ "tokens": items, "cursor": cursor }),
            )
        }
        _ => method_not_allowed("POST, GET"),
    }
}
