//! Per-request resource limits and the instance memory limiter.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Resource limits applied to one request's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All linear memories of the instance together, in bytes.
    pub memory_bytes: usize,
    /// Time the guest may spend running (not waiting on I/O).
    pub cpu: Duration,
    /// Time from the start of the request to the end of the response body.
    pub wall: Duration,
    /// Entries in the instance's resource table (handles it may hold).
    pub table_capacity: usize,
}

impl Default for Limits {
    /// The design's defaults: 128 MiB, 50 ms CPU, 30 s wall.
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            cpu: Duration::from_millis(50),
            wall: Duration::from_secs(30),
            table_capacity: 10_000,
        }
    }
}

/// Caps the sum of all memories of one instance (wasmtime's `StoreLimits`
/// caps each memory separately) and remembers whether the cap was hit.
pub(crate) struct InstanceLimiter {
    limit: usize,
    used: usize,
    pub(crate) hit: Arc<AtomicBool>,
}

impl InstanceLimiter {
    pub(crate) fn new(limit: usize, hit: Arc<AtomicBool>) -> Self {
        InstanceLimiter {
            limit,
            used: 0,
            hit,
        }
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.used - current.min(self.used) + desired;
        if next > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.used = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn limiter_sums_memories() {
        let hit = Arc::new(AtomicBool::new(false));
        let mut l = InstanceLimiter::new(100, hit.clone());
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.memory_growing(0, 30, None).unwrap());
        // The first memory grows from 60 to 70: total 100, allowed.
        assert!(l.memory_growing(60, 70, None).unwrap());
        assert!(!hit.load(Ordering::Relaxed));
        assert!(!l.memory_growing(30, 31, None).unwrap());
        assert!(hit.load(Ordering::Relaxed));
    }
}
