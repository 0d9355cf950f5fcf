//! `GET /v1/tenants/{t}/logs?function=&status=&limit=&follow=1`: the
//! latest events of one function or of all the tenant's functions, or a
//! live stream of new ones (Server-Sent Events with `Accept:
//! text/event-stream`, else NDJSON), with keep-alives every 15 s and a
//! `lagged` event when the follower fell behind and lost some.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::Principal;
use super::common::{PageQuery, Resp, TenantCall, blocking, query_params};
use crate::http::{ChannelBody, error, json, method_not_allowed, tri};
use crate::logs::{Event, Followed, Follower, MAX_FOLLOWERS, StatusFilter};

/// Time between keep-alives on a live stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a live stream checks that its token is still valid.
const RECHECK: Duration = Duration::from_secs(1);
/// Encoded events waiting for a slow client before the follower stops
/// taking more from the hub (and so starts losing them there).
const STREAM_BUFFER: usize = 16;

/// How a live stream is written.
#[derive(Clone, Copy)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn event(self, value: &impl serde::Serialize) -> Bytes {
        let text = serde_json::to_string(value).unwrap_or_default();
        match self {
            Format::Sse => format!("data: {text}\n\n").into(),
            Format::Ndjson => format!("{text}\n").into(),
        }
    }

    fn keepalive(self) -> Bytes {
        match self {
            Format::Sse => Bytes::from_static(b": keep-alive\n\n"),
            Format::Ndjson => Bytes::from_static(b"{\"type\":\"keepalive\"}\n"),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

fn bad(code: &str, message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// `GET …/logs`.
pub(super) async fn handle(call: TenantCall) -> Resp {
    // A live stream ends within a second of its token being revoked.
    let token_hash = match &call.principal {
        Principal::Admin => None,
        Principal::Tenant(rec) => Some(rec.hash.clone()),
    };
    let (app, method, req, tenant) = call.into_parts();
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    // `limit` as every listing reads it (default 100, 1 to 1000).
    let limit = tri!(PageQuery::of(&req)).limit;
    let (mut function, mut status, mut follow) = (None, None, false);
    for (k, v) in query_params(&req) {
        match k.as_str() {
            "function" if !v.is_empty() => function = Some(v),
            "status" => match StatusFilter::parse(&v) {
                Some(s) => status = Some(s),
                None => {
                    return bad(
                        "invalid_request",
                        &format!("status must be a class (2xx … 5xx) or a 3-digit code, not `{v}`"),
                    );
                }
            },
            "follow" => follow = matches!(v.as_str(), "1" | "true"),
            _ => {}
        }
    }
    // The tenant and the function must exist (404 otherwise).
    {
        let registry = app.registry.clone();
        let (t, f) = (tenant.clone(), function.clone());
        tri!(
            blocking(move || match f {
                Some(name) => registry.get_function(&t, &name).map(drop),
                None => registry.list_functions(&t).map(drop),
            })
            .await
        );
    }
    if !follow {
        let events = app.logs.latest(&tenant, function.as_deref(), status, limit);
        let events: Vec<&Event> = events.iter().map(Arc::as_ref).collect();
        return json(StatusCode::OK, &json!({ "events": events }));
    }
    let format = match req.headers().get(header::ACCEPT) {
        Some(a) if a.to_str().is_ok_and(|a| a.contains("text/event-stream")) => Format::Sse,
        _ => Format::Ndjson,
    };
    let Ok(follower) = app.logs.follow(&tenant, function.as_deref(), status) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_followers",
            &format!("at most {MAX_FOLLOWERS} followers per function; close one first"),
        );
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let registry = app.registry.clone();
    let still_allowed = move || {
        token_hash
            .as_deref()
            .is_none_or(|h| registry.lookup_token(h).is_some())
    };
    tokio::spawn(pump(
        follower,
        tx,
        format,
        app.stopping.clone(),
        still_allowed,
    ));
    let mut resp = Response::new(ChannelBody::new(rx).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Moves events from the hub to the client until the client goes away,
/// the tenant's log is forgotten, its token is revoked, or the server
/// shuts down.
async fn pump(
    mut follower: Follower,
    tx: mpsc::Sender<Bytes>,
    format: Format,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    still_allowed: impl Fn() -> bool,
) {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        let frame = tokio::select! {
            next = follower.next() => match next {
                Followed::Event(e) => format.event(&e),
                Followed::Lagged(n) => format.event(&json!({"type": "lagged", "dropped": n})),
                Followed::Closed => return,
            },
            _ = keepalive.tick() => format.keepalive(),
            _ = recheck.tick() => {
                if !still_allowed() {
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
            _ = stopping.wait_for(|s| *s) => return,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}
