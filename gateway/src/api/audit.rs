//! The audit log over the API: `GET /v1/audit?tenant=&limit=&cursor=`
//! (admin) and `GET /v1/tenants/{t}/audit` (any scope of that tenant),
//! newest first; and writing one entry per admin change (`record`, called
//! by the router).
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::common::{PageQuery, Resp, query_params};
use crate::app::App;
use crate::audit::AuditEntry;
use crate::http::{error, internal_error, json, method_not_allowed, off_thread, tri};
use crate::registry::now;

/// Appends the entry of one admin change; a failure is logged (the change
/// itself was made and answered).
pub(super) async fn record(
    app: &Arc<App>,
    tenant: String,
    action: &'static str,
    target: String,
    token_id: String,
    status: u16,
) {
    let entry = AuditEntry {
        id: 0,
        time: now(),
        token_id,
        tenant,
        action: action.to_string(),
        target,
        status,
    };
    let store = app.audit.clone();
    // A failure is logged by `audit_error`; the answer stands.
    let _ = off_thread(move || store.append(&entry), audit_error).await;
}

fn audit_error(e: String) -> Resp {
    tracing::error!(error = %e, "audit log storage");
    internal_error()
}

/// The entries, newest first: `{"entries":[…],"cursor"}`; `cursor` is the
/// id of the last entry when more may follow.
pub(super) async fn list(
    app: Arc<App>,
    method: Method,
    req: &Request<Incoming>,
    tenant: Option<String>,
) -> Resp {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let page = tri!(PageQuery::of(req));
    let tenant = tenant.or_else(|| {
        query_params(req)
            .into_iter()
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v)
    });
    let before = match page.cursor.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "the cursor is not one this listing gave",
            );
        }
    };
    let limit = page.limit;
    let store = app.audit.clone();
    let mut entries = tri!(
        off_thread(
            move || store.list(tenant.as_deref(), before, limit + 1),
            audit_error
        )
        .await
    );
    let more = entries.len() > limit;
    entries.truncate(limit);
    let cursor = more
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    json(
        StatusCode::OK,
        &json!({"entries": entries, "cursor": cursor}),
    )
}
