//! Throttling of failed authentication attempts per client address.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    fn throttle_blocks_after_budget() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(t.blocked(ip).is_none());
        t.fail(ip);
        t.fail(ip);
        assert!(t.blocked(ip).is_some());
        assert!(t.blocked("127.0.0.2".parse().unwrap()).is_none());
    }
}
