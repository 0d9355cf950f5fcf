//! Picking the version of a deployment that serves a request: the
//! `Perch-Version-Override` header when it names a deployed version, else
//! the bucket of the sticky key's value when the request carries one, else
//! a random bucket; buckets 0–99 map over the deployed versions in
//! ascending order by their percents. No lock and no allocation.
use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use ring::digest::{Context, SHA256};

/// The header that pins a request to a deployed version.
pub const VERSION_OVERRIDE: &str = "perch-version-override";

/// Where a sticky deployment finds the value that keeps a client on one
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// `cookie:NAME`.
    Cookie(String),
    /// `header:NAME` (lower case).
    Header(HeaderName),
}

impl StickyKey {
    /// Parses `cookie:NAME` or `header:NAME`.
    pub fn parse(text: &str) -> Result<StickyKey, String> {
        let bad = || {
            format!(
                "sticky must be `cookie:NAME` or `header:NAME` with a valid cookie or header name, not `{text}`"
            )
        };
        match text.split_once(':') {
            Some(("cookie", name))
                if !name.is_empty()
                    && name.len() <= 128
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
            {
                Ok(StickyKey::Cookie(name.to_string()))
            }
            Some(("header", name)) if name.len() <= 128 => {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                if name.as_str().starts_with("perch-") {
                    return Err(format!("sticky header `{name}` is reserved (perch-)"));
                }
                Ok(StickyKey::Header(name))
            }
            _ => Err(bad()),
        }
    }

    /// The key's value in `headers`, if the request carries one.
    fn value<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self {
            StickyKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            StickyKey::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|h| {
                h.as_bytes().split(|&b| b == b';').find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                    (k == name.as_bytes()).then_some(&v[1..])
                })
            }),
        }
    }
}

/// The bucket (0–99) of a sticky value: the first 8 bytes of
/// SHA-256(`tenant/function/` + value), big-endian, mod 100. The same on
/// every node and after restarts.
pub fn sticky_bucket(tenant: &str, function: &str, value: &[u8]) -> u8 {
    let mut ctx = Context::new(&SHA256);
    ctx.update(tenant.as_bytes());
    ctx.update(b"/");
    ctx.update(function.as_bytes());
    ctx.update(b"/");
    ctx.update(value);
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// A deployment as the data plane uses it.
#[derive(Debug, Clone)]
pub struct Split {
    /// Deployed version numbers, ascending.
    versions: Vec<u32>,
    /// Bucket → index into `versions`.
    buckets: [u8; 100],
    sticky: Option<StickyKey>,
}

impl Split {
    /// The split of `(version, percent)` pairs (ascending by version,
    /// percents summing to 100, as the registry checked them).
    pub fn new(shares: &[(u32, u8)], sticky: Option<StickyKey>) -> Split {
        let mut buckets = [0u8; 100];
        let mut next = 0usize;
        for (i, &(_, percent)) in shares.iter().enumerate() {
            for b in buckets.iter_mut().skip(next).take(percent as usize) {
                *b = i as u8;
            }
            next += percent as usize;
        }
        // Percents short of 100 (never committed) leave the last version
        // the rest.
        let last = shares.len().saturating_sub(1) as u8;
        for b in buckets.iter_mut().skip(next) {
            *b = last;
        }
        Split {
            versions: shares.iter().map(|&(v, _)| v).collect(),
            buckets,
            sticky,
        }
    }

    /// The index (into the deployed versions, ascending) that serves a
    /// request with `headers`.
    pub fn pick(&self, tenant: &str, function: &str, headers: &HeaderMap) -> usize {
        if let Some(v) = headers.get(VERSION_OVERRIDE)
            && let Some(i) = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .and_then(|n| self.versions.iter().position(|&d| d == n))
        {
            return i;
        }
        if self.versions.len() <= 1 {
            return 0;
        }
        let bucket = match self.sticky.as_ref().and_then(|k| k.value(headers)) {
            Some(value) => sticky_bucket(tenant, function, value),
            None => fastrand::u8(0..100),
        };
        self.buckets[bucket as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::header_map as headers;

    #[test]
    fn sticky_keys_parse_or_say_why_not() {
        assert_eq!(
            StickyKey::parse("cookie:uid"),
            Ok(StickyKey::Cookie("uid".into()))
        );
        assert_eq!(
            StickyKey::parse("header:X-User"),
            Ok(StickyKey::Header(HeaderName::from_static("x-user")))
        );
        for bad in [
            "uid",
            "cookie:",
            "cookie:a b",
            "header:",
            "header:a b",
            "query:x",
            "header:perch-x",
        ] {
            assert!(StickyKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_map_buckets_in_version_order() {
        let s = Split::new(&[(7, 90), (8, 10)], None);
        assert_eq!(s.buckets.iter().filter(|&&b| b == 0).count(), 90);
        assert_eq!(s.buckets[89..91], [0, 1]);
        let mut hits = [0u32; 2];
        for _ in 0..10_000 {
            hits[s.pick("t", "f", &HeaderMap::new())] += 1;
        }
        assert!((800..1200).contains(&hits[1]), "{hits:?}");
    }

    #[test]
    fn override_pins_only_deployed_versions() {
        let s = Split::new(&[(7, 1), (8, 99)], None);
        for _ in 0..100 {
            assert_eq!(s.pick("t", "f", &headers(&[(VERSION_OVERRIDE, "7")])), 0);
        }
        let ignored = (0..1000)
            .filter(|_| s.pick("t", "f", &headers(&[(VERSION_OVERRIDE, "3")])) == 0)
            .count();
        assert!(ignored < 100, "{ignored}");
    }

    #[test]
    fn sticky_values_always_reach_the_same_version() {
        let s = Split::new(
            &[(1, 50), (2, 50)],
            Some(StickyKey::parse("cookie:uid").unwrap()),
        );
        let mut seen = [0; 2];
        for user in 0..200 {
            let cookie = format!("theme=dark; uid=user-{user}; x=1");
            let h = headers(&[("cookie", &cookie)]);
            let first = s.pick("t", "f", &h);
            assert!((0..20).all(|_| s.pick("t", "f", &h) == first));
            let expected =
                s.buckets[sticky_bucket("t", "f", format!("user-{user}").as_bytes()) as usize];
            assert_eq!(first, expected as usize);
            seen[first] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
        // The documented bucket: SHA-256("t/f/abc")[..8] as big-endian mod 100.
        let d = ring::digest::digest(&SHA256, b"t/f/abc");
        let n = u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap());
        assert_eq!(u64::from(sticky_bucket("t", "f", b"abc")), n % 100);
    }
}
