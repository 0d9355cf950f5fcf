//! What every admin endpoint shares: error answers, body reading, the
//! blocking-work bridge, path and query decoding.
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::app::App;
use crate::http::{ResBody, error, internal_error, off_thread};
use crate::names::NAME_RULE;
use crate::registry::RegistryError;

/// Body limit for JSON requests.
pub(crate) const JSON_LIMIT: usize = 1 << 20;

/// An admin API response.
pub type Resp = Response<ResBody>;

/// An authorised request under `/v1/tenants/{tenant}/`, as the router hands
/// it to a resource.
pub struct TenantCall {
    /// Shared state.
    pub app: Arc<App>,
    /// The request's method.
    pub method: Method,
    /// The request (its body not read yet).
    pub req: Request<Incoming>,
    /// The tenant the path names (already a valid name).
    pub tenant: String,
    /// Who is asking (already authorised for this path).
    pub principal: super::auth::Principal,
}

impl TenantCall {
    /// State, method, request and tenant, to move into a handler.
    pub fn into_parts(self) -> (Arc<App>, Method, Request<Incoming>, String) {
        (self.app, self.method, self.req, self.tenant)
    }
}

pub(crate) fn forbidden() -> Resp {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this token may not do that",
    )
}

pub(crate) fn not_found_endpoint() -> Resp {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// 400 `invalid_name` for a tenant, function or namespace name.
pub(crate) fn invalid_name(what: &str, name: &str) -> Resp {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_name",
        &format!("{what} name `{name}` must match {NAME_RULE}"),
    )
}

/// 403 `quota_exceeded`, naming the quota and its limit.
pub(crate) fn quota_exceeded(quota: &str, limit: u64, message: &str) -> Resp {
    crate::http::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": {"code": "quota_exceeded", "message": message, "quota": quota, "limit": limit}}),
    )
}

/// 503 `storage_unavailable`: the shared database cannot be reached
/// (cluster mode); the detail goes to the server log only.
pub(crate) fn storage_unavailable(detail: &str) -> Resp {
    tracing::warn!(error = %detail, "storage unavailable");
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the storage is unavailable; nothing was changed, retry later",
    );
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// A store's own failure (text for the server log): 503
/// `storage_unavailable` in cluster mode, where it means the database is
/// out of reach.
pub(crate) fn storage_error(e: String) -> RegistryError {
    RegistryError::Unavailable(e)
}

/// Maps a registry error to the admin API's answer.
pub(crate) fn registry_error(e: RegistryError) -> Resp {
    match e {
        RegistryError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", &m),
        RegistryError::HostTaken(m) => error(StatusCode::CONFLICT, "host_taken", &m),
        RegistryError::HostNotAllowed(m) => error(StatusCode::FORBIDDEN, "host_not_allowed", &m),
        RegistryError::HostNotVerified(m) => error(StatusCode::FORBIDDEN, "host_not_verified", &m),
        RegistryError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        RegistryError::InvalidDeployment(m) => {
            error(StatusCode::BAD_REQUEST, "invalid_deployment", &m)
        }
        RegistryError::TooManyVersions(m) => error(StatusCode::CONFLICT, "too_many_versions", &m),
        RegistryError::InvalidSettings(m) => error(StatusCode::BAD_REQUEST, "invalid_settings", &m),
        RegistryError::ImageInUse(m) => error(StatusCode::CONFLICT, "image_in_use", &m),
        RegistryError::ImageNotAllowed(m) => error(StatusCode::FORBIDDEN, "image_not_allowed", &m),
        RegistryError::QuotaExceeded {
            quota,
            limit,
            message,
        } => quota_exceeded(quota, limit, &message),
        RegistryError::Unavailable(m) => storage_unavailable(&m),
        other => {
            tracing::error!(error = %other, "registry failure");
            internal_error()
        }
    }
}

/// Runs blocking registry work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, RegistryError> + Send + 'static,
) -> Result<R, Resp> {
    off_thread(f, registry_error).await
}

/// Why a body could not be read.
pub enum BodyError {
    /// Over the limit (declared or actual).
    TooLarge,
    /// Another failure, already rendered.
    Other(Resp),
}

/// Reads a body of at most `limit` bytes, refusing a larger declared length
/// before reading anything.
pub async fn read_limited(req: Request<Incoming>, limit: u64) -> Result<Bytes, BodyError> {
    if let Some(len) = crate::http::declared_length(req.headers())
        && len > limit
    {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(e) => Err(BodyError::Other(error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("could not read the request body: {e}"),
        ))),
    }
}

/// Reads a body of at most `limit` bytes; 413 `body_too_large` beyond.
pub(crate) async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Bytes, Resp> {
    read_limited(req, limit).await.map_err(|e| match e {
        BodyError::TooLarge => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body is over the {limit}-byte limit"),
        ),
        BodyError::Other(resp) => resp,
    })
}

/// Reads a JSON body (at most 1 MiB); `optional` accepts an empty one.
pub(crate) async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    optional: bool,
) -> Result<Option<T>, Resp> {
    let body = read_body(req, JSON_LIMIT as u64).await?;
    if optional && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("invalid JSON body: {e}"),
        )
    })
}

/// One page of a listing: `limit` (default 100, at most 1000) items after
/// `cursor`.
pub(crate) struct PageQuery {
    /// Items per page.
    pub limit: usize,
    /// The key of the last item of the previous page.
    pub cursor: Option<String>,
}

/// Items a list endpoint returns unless `limit` says otherwise.
pub(crate) const DEFAULT_PAGE: usize = 100;
/// Items a list endpoint returns at most.
pub(crate) const MAX_PAGE: usize = 1000;

impl PageQuery {
    /// Reads `limit` and `cursor` from the query (an empty cursor starts
    /// at the beginning); a bad limit → 400 `invalid_limit`.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the answer, returned at once"
    )]
    pub(crate) fn of(req: &Request<Incoming>) -> Result<PageQuery, Resp> {
        let mut page = PageQuery {
            limit: DEFAULT_PAGE,
            cursor: None,
        };
        for (k, v) in query_params(req) {
            match k.as_str() {
                "limit" => {
                    page.limit = match v.parse::<usize>() {
                        Ok(n @ 1..=MAX_PAGE) => n,
                        _ => {
                            return Err(error(
                                StatusCode::BAD_REQUEST,
                                "invalid_limit",
                                &format!(
                                    "limit must be an integer from 1 to {MAX_PAGE}, not `{v}`"
                                ),
                            ));
                        }
                    }
                }
                "cursor" if !v.is_empty() => page.cursor = Some(v),
                _ => {}
            }
        }
        Ok(page)
    }

    /// The page of `items` (in listing order, already past the cursor):
    /// at most `limit` of them, and the cursor of the next page (the key
    /// of the last one returned) when more follow.
    pub(crate) fn cut<T>(
        &self,
        items: impl Iterator<Item = T>,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let mut page: Vec<T> = items.take(self.limit + 1).collect();
        if page.len() > self.limit {
            page.truncate(self.limit);
            let next = page.last().map(key);
            (page, next)
        } else {
            (page, None)
        }
    }
}

/// Deletes the components `dropped` versions ran that nothing uses any
/// more (after the change that dropped them committed).
pub(crate) async fn collect_garbage(app: &Arc<App>, dropped: Vec<String>) {
    if dropped.is_empty() {
        return;
    }
    let artifacts = app.artifacts.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || artifacts.collect(&dropped)).await {
        tracing::error!(error = %e, "artifact collection failed");
    }
}

/// A boolean query flag (`true`/`1`, `false`/`0`), `default` when absent;
/// anything else → 400 `invalid_request`.
#[allow(
    clippy::result_large_err,
    reason = "the error is the answer, returned at once"
)]
pub(crate) fn query_flag(req: &Request<Incoming>, name: &str, default: bool) -> Result<bool, Resp> {
    match query_params(req).into_iter().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => match v.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("`{name}` must be true or false, not `{v}`"),
            )),
        },
    }
}

/// The query string's pairs, percent-decoded (`+` is a space in values).
pub(crate) fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Decodes `%XX` escapes once; invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("%2A.w.test"), "*.w.test");
        assert_eq!(percent_decode("a%252F"), "a%2F");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
