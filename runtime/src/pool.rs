//! Idle instances of function versions that opted into instance reuse.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use crate::host::Host;

/// Idle instances one function keeps for reuse (each holds a pool slot).
const MAX_IDLE_PER_FUNCTION: usize = 8;
/// An idle instance not reused within this time is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// An instance waiting for its function's next request.
pub(crate) struct Idle {
    pub(crate) store: Store<Host>,
    pub(crate) proxy: Proxy,
    pub(crate) served: u32,
    parked: Instant,
}

/// Idle instances of one function version that opted into reuse. Shared by
/// the clones of its [`crate::Invocation`]; dropped (with its instances) when the
/// routing snapshot that holds the invocation goes away.
#[derive(Default)]
pub(crate) struct InstancePool {
    idle: Mutex<Vec<Idle>>,
    sweeper: AtomicBool,
}

impl InstancePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently parked instance, unless it has idled too long.
    pub(crate) fn take(&self) -> Option<Idle> {
        let mut idle = self.lock();
        let last = idle.pop()?;
        if last.parked.elapsed() < IDLE_TIMEOUT {
            return Some(last);
        }
        // Parked in order: everything older is stale too.
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop((last, stale));
        None
    }

    /// Parks an instance for reuse, unless enough are parked already.
    pub(crate) fn put(self: &Arc<Self>, store: Store<Host>, proxy: Proxy, served: u32) {
        let entry = Idle {
            store,
            proxy,
            served,
            parked: Instant::now(),
        };
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE_PER_FUNCTION {
            drop(idle);
            drop(entry);
            return;
        }
        idle.push(entry);
        drop(idle);
        if !self.sweeper.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Drops instances that idled past the timeout; ends when none are parked.
async fn sweep(pool: std::sync::Weak<InstancePool>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.lock();
        let fresh = idle
            .iter()
            .position(|i| i.parked.elapsed() < IDLE_TIMEOUT)
            .unwrap_or(idle.len());
        let stale: Vec<Idle> = idle.drain(..fresh).collect();
        let empty = idle.is_empty();
        if empty {
            pool.sweeper.store(false, Ordering::Release);
        }
        drop(idle);
        drop(stale);
        if empty {
            return;
        }
    }
}
