//! A tenant's tokens (admin only): create (the secret is shown once and
//! stored as its SHA-256), list, revoke.
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
            let mut scopes = body.scopes;
            scopes.sort();
            scopes.dedup();
            let token = new_token("perch_");
            let record = TokenRecord {
                id: random_hex(8),
                tenant: tenant.clone(),
                scopes,
                created_at: now(),
                hash: token_hash(&token),
            };
            let rec = tri!(blocking(move || app.registry.add_token(record)).await);
            json(
                StatusCode::CREATED,
                &json!({"id": rec.id, "token": token, "scopes": rec.scopes}),
            )
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
            let items: Vec<_> = items
                .iter()
                .map(|t| json!({"id": t.id, "scopes": t.scopes, "created_at": t.created_at}))
                .collect();
            json(
                StatusCode::OK,
                &json!({ "tokens": items, "cursor": cursor }),
            )
        }
        _ => method_not_allowed("POST, GET"),
    }
}
