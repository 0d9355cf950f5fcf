//! Admin API authentication: bearer tokens looked up by their SHA-256,
//! scope checks by path, and throttling of failed attempts per client.
use std::net::SocketAddr;

use http::{HeaderValue, Request, StatusCode, header};

use super::common::{Resp, forbidden, not_found_endpoint};
use crate::app::App;
use crate::http::error;
use crate::registry::{SCOPES, TokenRecord};
use crate::secrets::token_hash;

/// Who is calling.
pub enum Principal {
    /// The admin token.
    Admin,
    /// A tenant token.
    Tenant(TokenRecord),
}

/// Why a request is refused before it reaches an endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No valid token: 401 with `WWW-Authenticate: Bearer`.
    Unauthorized,
    /// Too many failed attempts from this address: 429, retry after N s.
    Throttled(u64),
    /// A valid token without the right to this path: 403.
    Forbidden,
    /// The admin asked for a path that names no endpoint: 404.
    NoEndpoint,
}

impl Refused {
    /// The answer.
    pub fn response(self) -> Resp {
        match self {
            Refused::Unauthorized => {
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required",
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
            Refused::Throttled(wait) => {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    "too many failed authentication attempts; retry later",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                resp
            }
            Refused::Forbidden => forbidden(),
            Refused::NoEndpoint => not_found_endpoint(),
        }
    }
}

/// The caller of a request. Only failed attempts are throttled; a valid
/// token never is.
pub fn authenticate<B>(
    app: &App,
    peer: SocketAddr,
    req: &Request<B>,
) -> Result<Principal, Refused> {
    let known = bearer(req.headers()).and_then(|token| {
        let hash = token_hash(token);
        if hash == app.admin_token_hash {
            return Some(Principal::Admin);
        }
        app.registry.lookup_token(&hash).map(Principal::Tenant)
    });
    if let Some(p) = known {
        return Ok(p);
    }
    // Throttled by the real client, which a trusted proxy names.
    let client = app
        .config
        .trusted_proxies
        .client(peer.ip(), false, req.headers())
        .ip;
    if let Some(wait) = app.throttle.blocked(client) {
        return Err(Refused::Throttled(wait));
    }
    app.throttle.fail(client);
    Err(Refused::Unauthorized)
}

/// The scope a path under `/v1/tenants/{tenant}/` needs: `Ok(None)` for
/// admin-only paths (the tenant itself, its tokens), `Err(())` for a
/// segment that names no endpoint.
fn scope_of(rest: &[&str]) -> Result<Option<&'static str>, ()> {
    match rest.first() {
        None | Some(&"tokens") => Ok(None),
        Some(&"audit" | &"usage") => Ok(Some(ANY_SCOPE)),
        // Verifying a host is the first step of routing it.
        Some(&"verifications") => Ok(Some("routes")),
        Some(segment) => SCOPES
            .iter()
            .find(|s| **s != "*" && **s == *segment)
            .map(|s| Some(*s))
            .ok_or(()),
    }
}

/// What a path readable with any scope of its tenant needs (its audit log
/// and its usage).
const ANY_SCOPE: &str = "";

/// Lets the admin anywhere, and a tenant token only under its own tenant
/// with the scope the path names; 403 otherwise (even for a tenant that
/// does not exist), 404 to the admin for an unknown endpoint.
pub fn authorize(who: &Principal, tenant: &str, rest: &[&str]) -> Result<(), Refused> {
    let scope = match (scope_of(rest), who) {
        (Ok(scope), _) => scope,
        (Err(()), Principal::Admin) => return Err(Refused::NoEndpoint),
        (Err(()), Principal::Tenant(_)) => return Err(Refused::Forbidden),
    };
    match who {
        Principal::Admin => Ok(()),
        Principal::Tenant(rec) => match scope {
            Some(ANY_SCOPE) if rec.tenant == tenant => Ok(()),
            Some(scope) if rec.tenant == tenant && rec.allows(scope) => Ok(()),
            _ => Err(Refused::Forbidden),
        },
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_but_the_wildcard_names_a_path() {
        assert_eq!(scope_of(&[]), Ok(None));
        assert_eq!(scope_of(&["tokens", "x"]), Ok(None));
        for s in SCOPES.iter().filter(|s| **s != "*") {
            assert_eq!(scope_of(&[s]), Ok(Some(*s)));
        }
        assert_eq!(scope_of(&["*"]), Err(()));
        assert_eq!(scope_of(&["bogus"]), Err(()));
    }

    #[test]
    fn tenant_tokens_reach_only_their_tenant_and_scope() {
        let token = |scopes: &[&str]| {
            Principal::Tenant(TokenRecord {
                id: "i".into(),
                tenant: "a".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                created_at: 0,
                hash: "h".into(),
                name: None,
                expires_at: None,
            })
        };
        let kv = token(&["kv"]);
        assert_eq!(authorize(&kv, "a", &["kv", "ns"]), Ok(()));
        assert_eq!(authorize(&kv, "a", &["functions"]), Err(Refused::Forbidden));
        assert_eq!(authorize(&kv, "b", &["kv"]), Err(Refused::Forbidden));
        assert_eq!(authorize(&kv, "a", &[]), Err(Refused::Forbidden));
        assert_eq!(authorize(&kv, "a", &["tokens"]), Err(Refused::Forbidden));
        assert_eq!(authorize(&kv, "a", &["nope"]), Err(Refused::Forbidden));
        let all = token(&["*"]);
        assert_eq!(authorize(&all, "a", &["routes"]), Ok(()));
        assert_eq!(authorize(&Principal::Admin, "zz", &["tokens"]), Ok(()));
        assert_eq!(
            authorize(&Principal::Admin, "a", &["nope"]),
            Err(Refused::NoEndpoint)
        );
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
