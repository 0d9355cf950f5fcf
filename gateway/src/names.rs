//! Validation and matching of names and host patterns.

/// The rule tenant, function and namespace names follow, as error
/// messages state it.
pub const NAME_RULE: &str = "[a-z0-9][a-z0-9-]{0,62}";

/// Tenant, function and namespace names: [`NAME_RULE`].
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Var and secret names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_var_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A host as routed: lower-cased, port and one trailing dot removed.
pub fn normalize_host(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets' content as is.
        raw.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        raw.rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(raw)
            .to_string()
    };
    let host = host.strip_suffix('.').unwrap_or(&host);
    host.to_ascii_lowercase()
}

/// A validated route pattern: an exact host or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One host.
    Exact(String),
    /// Any host strictly below the suffix (at any depth).
    Wildcard(String),
}

impl HostPattern {
    /// Parses and normalises a pattern; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let lower = raw.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(suffix) = lower.strip_prefix("*.") {
            check_host(suffix)?;
            if suffix.split('.').count() < 2 {
                return Err(format!(
                    "wildcard `{raw}` needs at least two labels after `*.` (like `*.example.com`)"
                ));
            }
            Ok(HostPattern::Wildcard(suffix.to_string()))
        } else {
            check_host(lower)?;
            Ok(HostPattern::Exact(lower.to_string()))
        }
    }

    /// The pattern as text (`*.suffix` or the host).
    pub fn as_string(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
        }
    }

    /// True when every host `other` matches is also matched by `self`.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
            (HostPattern::Wildcard(s), HostPattern::Exact(h)) => is_below(h, s),
            (HostPattern::Wildcard(s), HostPattern::Wildcard(p)) => p == s || is_below(p, s),
        }
    }

    /// True when some host is matched by both patterns.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        self.covers(other) || other.covers(self)
    }
}

/// The path part of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Only this path.
    Exact(String),
    /// This prefix (ending in `/`) and everything below it: `/api/*` is
    /// stored as `/api/`.
    Prefix(String),
}

impl PathPattern {
    /// The pattern as text (`/health`, `/api/*`).
    pub fn as_string(&self) -> String {
        match self {
            PathPattern::Exact(p) => p.clone(),
            PathPattern::Prefix(p) => format!("{p}*"),
        }
    }
}

/// A route pattern: a host pattern, optionally followed by a path
/// (`example.com/api/*`, `example.com/health`). `host/*` is the host-only
/// route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// Which hosts.
    pub host: HostPattern,
    /// Which paths on them; `None`: all.
    pub path: Option<PathPattern>,
}

/// Bytes a route pattern's path may have.
const MAX_ROUTE_PATH: usize = 1024;

impl RoutePattern {
    /// Parses `host[/path]`; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<RoutePattern, String> {
        let (host, path) = match raw.find('/') {
            Some(i) => (&raw[..i], Some(&raw[i..])),
            None => (raw, None),
        };
        let host = HostPattern::parse(host)?;
        let path = match path {
            None | Some("/*") => None,
            Some(p) => Some(parse_path(p)?),
        };
        Ok(RoutePattern { host, path })
    }

    /// The normalised pattern as text: the host pattern, then the path.
    pub fn as_string(&self) -> String {
        match &self.path {
            None => self.host.as_string(),
            Some(p) => format!("{}{}", self.host.as_string(), p.as_string()),
        }
    }
}

fn parse_path(p: &str) -> Result<PathPattern, String> {
    if p.len() > MAX_ROUTE_PATH {
        return Err(format!("a route's path is at most {MAX_ROUTE_PATH} bytes"));
    }
    if let Some(bad) = p
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return Err(format!(
            "route path `{p}` may not contain {bad:?} (no spaces, query or fragment)"
        ));
    }
    match p.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
            Ok(PathPattern::Prefix(prefix.to_string()))
        }
        Some(_) => Err(format!(
            "route path `{p}`: `*` may only end a path, after a `/` (like `/api/*`)"
        )),
        None if p.contains('*') => Err(format!(
            "route path `{p}`: `*` may only end a path, after a `/` (like `/api/*`)"
        )),
        None => Ok(PathPattern::Exact(p.to_string())),
    }
}

fn is_below(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 253 {
        return Err(format!(
            "`{host}` is not a valid host name (1 to 253 characters)"
        ));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok {
            return Err(format!(
                "`{host}` is not a valid host name (labels of a-z, 0-9 and inner `-`, at most 63 characters)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("hello-world-2"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("A"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(valid_var_name("_X1"));
        assert!(!valid_var_name("1X"));
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("HELLO.a.test:8080"), "hello.a.test");
        assert_eq!(normalize_host("x.test."), "x.test");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn route_patterns() {
        let p = |t: &str| RoutePattern::parse(t).map(|r| r.as_string());
        assert_eq!(p("A.Test").unwrap(), "a.test");
        assert_eq!(
            p("a.test/*").unwrap(),
            "a.test",
            "host/* is the host-only route"
        );
        assert_eq!(p("a.test/api/*").unwrap(), "a.test/api/*");
        assert_eq!(p("*.a.test/health").unwrap(), "*.a.test/health");
        assert_eq!(p("a.test/").unwrap(), "a.test/");
        let r = RoutePattern::parse("a.test/api/*").unwrap();
        assert_eq!(r.path, Some(PathPattern::Prefix("/api/".into())));
        for bad in [
            "a.test/a*",
            "a.test/*/x",
            "a.test/a b",
            "a.test/x?y",
            "a..test/x",
            "a.test/a#b",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad}");
        }
        assert!(RoutePattern::parse(&format!("a.test/{}", "x".repeat(1100))).is_err());
    }

    #[test]
    fn wildcard_rules() {
        let w = HostPattern::parse("*.w.test").unwrap();
        assert!(w.covers(&HostPattern::parse("x.w.test").unwrap()));
        assert!(w.covers(&HostPattern::parse("a.b.w.test").unwrap()));
        assert!(!w.covers(&HostPattern::parse("w.test").unwrap()));
        assert!(!w.covers(&HostPattern::parse("xw.test").unwrap()));
        assert!(w.covers(&HostPattern::parse("*.a.w.test").unwrap()));
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("a_b.test").is_err());
    }
}
