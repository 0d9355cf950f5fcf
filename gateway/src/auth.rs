//! Admin API authentication: bearer tokens looked up by their SHA-256,
//! scope checks by path, and throttling of failed attempts per client.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Lowercase hex SHA-256 of a presented token.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    hex(&buf)
}

/// A new secret token with the given prefix.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

/// Writes a file only its owner can read (mode 0600), durably: temporary
/// file, fsync, rename.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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

/// Limits failed authentication attempts per client address. Requests with
/// a valid token never consult it.
pub struct Throttle {
    window: Duration,
    max_failures: u32,
    state: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    /// At most `max_failures` per `window` per address.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Throttle {
            window,
            max_failures,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait when `ip` is over its budget.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = state.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < self.window && *n >= self.max_failures)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Counts one failure for `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.len() > 100_000 {
            let window = self.window;
            state.retain(|_, (start, _)| start.elapsed() < window);
        }
        let entry = state.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn throttle_blocks_after_budget() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(t.blocked(ip).is_none());
        t.fail(ip);
        t.fail(ip);
        assert!(t.blocked(ip).is_some());
        assert!(t.blocked("127.0.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn token_hash_is_sha256() {
        assert_eq!(
            token_hash("hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(new_token("p_").len(), 66);
    }
}
