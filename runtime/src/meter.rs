//! The CPU meter of one request: CPU time counted with the polling
//! thread's own clock while the guest's future is polled, and whether a
//! resource limit (CPU, memory) was hit.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// CPU time the guest has used for the current request, read by the epoch
/// callback that enforces the CPU limit. Counted with the thread's own CPU
/// clock while the guest's future is polled, so time the thread spends
/// preempted on a busy host is not charged to the guest.
pub(crate) struct RequestState {
    pub(crate) cpu_limit: Duration,
    spent_ns: AtomicU64,
    /// The thread's CPU clock when the current poll began, 0 when idle.
    poll_start_ns: AtomicU64,
    pub(crate) cpu_hit: AtomicBool,
    /// Shared with the instance's memory limiter.
    pub(crate) memory_hit: Arc<AtomicBool>,
}

/// CPU time consumed by the calling thread, in nanoseconds (never 0).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 1;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1)
}

impl RequestState {
    pub(crate) fn new(cpu_limit: Duration, memory_hit: Arc<AtomicBool>) -> Self {
        RequestState {
            cpu_limit,
            spent_ns: AtomicU64::new(0),
            poll_start_ns: AtomicU64::new(0),
            cpu_hit: AtomicBool::new(false),
            memory_hit,
        }
    }

    /// CPU time used so far. During a poll, only meaningful on the polling
    /// thread (the epoch callback runs there).
    pub(crate) fn cpu_used(&self) -> Duration {
        let mut ns = self.spent_ns.load(Ordering::Relaxed);
        let start = self.poll_start_ns.load(Ordering::Relaxed);
        if start != 0 {
            ns += thread_cpu_ns().saturating_sub(start);
        }
        Duration::from_nanos(ns)
    }
}

/// Accumulates the CPU time spent inside `poll` of the wrapped future.
pub(crate) struct CpuTimed<F> {
    pub(crate) state: Arc<RequestState>,
    pub(crate) fut: Pin<Box<F>>,
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_ns();
        self.state.poll_start_ns.store(start, Ordering::Relaxed);
        let out = self.fut.as_mut().poll(cx);
        let end = thread_cpu_ns();
        self.state.poll_start_ns.store(0, Ordering::Relaxed);
        self.state
            .spent_ns
            .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_charges_cpu_time_not_time_off_cpu() {
        let state = Arc::new(RequestState::new(Duration::from_secs(1), Arc::default()));
        let mut timed = CpuTimed {
            state: state.clone(),
            fut: Box::pin(async { std::thread::sleep(Duration::from_millis(200)) }),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut timed).poll(&mut cx).is_ready());
        // 200 ms inside poll, but asleep: (almost) nothing is charged.
        assert!(
            state.cpu_used() < Duration::from_millis(100),
            "{:?}",
            state.cpu_used()
        );
    }
}
