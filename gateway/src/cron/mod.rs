//! Cron triggers: the expressions (`expr.rs`), and the scheduler that runs
//! each due schedule of a deployed function once a minute: `POST
//! /__perch/scheduled` with `Perch-Cron` and `Perch-Scheduled-Time`,
//! under the function's limits and its tenant's concurrency cap, on a
//! version picked by the deployment's split, with a `scheduled` event in
//! the function's log.
//!
//! A tick runs once per cluster: before running one the scheduler claims
//! it from a [`TickLease`] (on one node, [`LocalLease`]: each tick once).
//! Minutes the scheduler did not see (the node was down, or busy past the
//! whole minute) are skipped, not caught up.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Method, Request};
use http_body_util::BodyExt;
use perch_runtime::{InvocationRecord, LogSink, TracingLogSink};

use crate::dataplane::{Executor, LimitedBody};
use crate::logs::{Counted, Event, LogHub, Run, ScheduledEvent, perch_status, request_id, unix_ms};
use crate::registry::Registry;
use crate::routing::Runnable;
use crate::telemetry::Metrics;
use crate::telemetry::trace::{Routed, Tracing};

mod expr;

pub use expr::CronExpr;

/// The path a scheduled invocation asks for.
pub const SCHEDULED_PATH: &str = "/__perch/scheduled";

/// One schedule firing at one minute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tick {
    /// The function's tenant.
    pub tenant: String,
    /// The function.
    pub function: String,
    /// The expression that fired.
    pub cron: String,
    /// The minute (Unix minutes, UTC).
    pub minute: u64,
}

/// Decides which node runs a tick: `claim` is true for exactly one caller
/// per tick across the cluster.
pub trait TickLease: Send + Sync {
    /// Claims `tick`; false when it is someone else's (or already ran).
    fn claim(&self, tick: &Tick) -> bool;
}

/// The lease of a single node: each tick is claimed once.
#[derive(Default)]
pub struct LocalLease {
    claimed: Mutex<HashSet<Tick>>,
}

impl TickLease for LocalLease {
    fn claim(&self, tick: &Tick) -> bool {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        // Older minutes can never be claimed again: forget them.
        claimed.retain(|t| t.minute + 2 > tick.minute);
        claimed.insert(tick.clone())
    }
}

/// Which schedules are due: remembers the last minute it fired, so each
/// minute fires at most once however often it is asked, and minutes it
/// never saw are skipped.
#[derive(Default)]
pub struct Ticker {
    last: Option<u64>,
}

impl Ticker {
    /// The ticks due at `now_ms` for `schedules` (`(tenant, function,
    /// expressions)`): those of the current minute, if it has not fired yet.
    pub fn advance(
        &mut self,
        now_ms: u64,
        schedules: &[(String, String, Vec<String>)],
    ) -> Vec<Tick> {
        let minute = now_ms / 60_000;
        if self.last.is_some_and(|l| l >= minute) {
            return Vec::new();
        }
        self.last = Some(minute);
        let mut due = Vec::new();
        for (tenant, function, exprs) in schedules {
            for text in exprs {
                if CronExpr::parse(text).is_ok_and(|e| e.matches(minute)) {
                    due.push(Tick {
                        tenant: tenant.clone(),
                        function: function.clone(),
                        cron: text.clone(),
                        minute,
                    });
                }
            }
        }
        due
    }
}

/// Runs cron ticks.
pub struct Scheduler {
    /// Deployments and their schedules.
    pub registry: Arc<Registry>,
    /// Runs the picked version.
    pub executor: Arc<dyn Executor>,
    /// Where `scheduled` events go.
    pub logs: Arc<LogHub>,
    /// The node's name in events.
    pub node: Arc<str>,
    /// Who runs which tick.
    pub lease: Arc<dyn TickLease>,
    /// The per-tenant concurrency cap (ticks count against it).
    pub tenant_concurrency: u32,
    /// Where runs are counted.
    pub metrics: Arc<Metrics>,
    /// Trace export, when it is on.
    pub tracing: Option<Arc<Tracing>>,
}

/// Why a tick could not be started.
#[derive(Debug, PartialEq, Eq)]
pub enum TickError {
    /// The function is not deployed.
    NotDeployed,
}

impl Scheduler {
    /// Fires due ticks at each minute until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = Ticker::default();
        loop {
            let now = unix_ms();
            let schedules = {
                let registry = self.registry.clone();
                tokio::task::spawn_blocking(move || registry.schedules())
                    .await
                    .unwrap_or_default()
            };
            let due = ticker.advance(now, &schedules);
            // A claim may ask the database (cluster mode): off this thread.
            let claimed = {
                let lease = self.lease.clone();
                tokio::task::spawn_blocking(move || {
                    due.into_iter()
                        .filter(|t| lease.claim(t))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default()
            };
            for tick in claimed {
                {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this
                            .run_tick(
                                &tick.tenant,
                                &tick.function,
                                &tick.cron,
                                tick.minute * 60_000,
                            )
                            .await;
                    });
                }
            }
            // Wake just after the next minute starts.
            let into_minute = unix_ms() % 60_000;
            tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 50)).await;
        }
    }

    /// Runs one tick of `cron` for a function now (the scheduled time is
    /// `scheduled_ms`); returns once the handler finished (its event is
    /// written by then, or as soon as the instance is done).
    pub async fn run_tick(
        &self,
        tenant: &str,
        function: &str,
        cron: &str,
        scheduled_ms: u64,
    ) -> Result<(), TickError> {
        let target = self
            .registry
            .target(tenant, function)
            .ok_or(TickError::NotDeployed)?;
        let index = target.pick(&http::HeaderMap::new());
        let event = ScheduledEvent {
            time: scheduled_ms,
            node: self.node.clone(),
            function: function.to_string(),
            version: target.versions[index].version,
            cron: cron.to_string(),
            run: Run::pending(),
        };
        let trace = self
            .tracing
            .as_ref()
            .map(|t| t.timer(function))
            .filter(|t| t.recording());
        if let Some(t) = &trace {
            t.routed(&Routed {
                tenant,
                function,
                version: event.version,
                route: None,
                invocation_id: &request_id(),
            });
        }
        let log = ScheduledLog {
            hub: self.logs.clone(),
            tenant: tenant.to_string(),
            event,
            counted: Counted {
                metrics: self.metrics.clone(),
                usage: target.usage.clone(),
                function: target.metric_function.clone(),
                wasm: matches!(target.versions[index].run, Runnable::Wasm(_)),
                trace,
            },
        };
        let Some(permit) = target.gate.try_enter(self.tenant_concurrency) else {
            log.counted.rejected(tenant, 429);
            let mut e = log.event;
            e.run = Run {
                status: Some(429),
                outcome: "rejected",
                ..Run::default()
            };
            self.logs.push(tenant, Event::Scheduled(e));
            return Ok(());
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(SCHEDULED_PATH)
            .header(http::header::HOST, "localhost")
            .body(LimitedBody::empty())
            .expect("a valid request");
        let headers = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(cron) {
            headers.insert("perch-cron", v);
        }
        headers.insert("perch-scheduled-time", HeaderValue::from(scheduled_ms));
        if let Some(t) = &log.counted.trace {
            t.propagate(headers);
        }
        self.metrics.record_cron_run();
        match self
            .executor
            .execute(&target, index, req, permit, Arc::new(log))
            .await
        {
            // Drain the answer: the instance (and the event) finish with it.
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(failure) => {
                tracing::warn!(%tenant, %function, %cron, error = %failure, "scheduled run failed")
            }
        }
        Ok(())
    }
}

/// A tick on its way to the function's log.
struct ScheduledLog {
    hub: Arc<LogHub>,
    tenant: String,
    event: ScheduledEvent,
    counted: Counted,
}

impl LogSink for ScheduledLog {
    fn record(&self, record: InvocationRecord) {
        let event = ScheduledEvent {
            run: Run::of(&record, perch_status(record.outcome)),
            ..self.event.clone()
        };
        self.counted.finished(&self.tenant, &event.run, &record);
        TracingLogSink.record(record);
        self.hub.push(&self.tenant, Event::Scheduled(event));
    }

    fn trace(&self) -> Option<Arc<dyn perch_runtime::RequestTrace>> {
        self.counted.request_trace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedules(list: &[(&str, &[&str])]) -> Vec<(String, String, Vec<String>)> {
        list.iter()
            .map(|(f, e)| {
                (
                    "t".to_string(),
                    f.to_string(),
                    e.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    /// A clock the test moves: minute `m` plus `s` seconds.
    fn at(m: u64, s: u64) -> u64 {
        // 2026-12-01 00:00 UTC.
        (20_788 * 1440 + m) * 60_000 + s * 1000
    }

    #[test]
    fn ticks_fire_at_their_minutes_once_each() {
        let mut ticker = Ticker::default();
        let plan = schedules(&[
            ("a", &["*/5 * * * *"]),
            ("b", &["1 * * * *", "*/5 * * * *"]),
        ]);
        let mut fired: Vec<(u64, String)> = Vec::new();
        // The scheduler wakes several times a minute (and late): no double ticks.
        for m in 0..12 {
            for s in [0, 1, 30, 59] {
                for t in ticker.advance(at(m, s), &plan) {
                    fired.push((
                        t.minute - 20_788 * 1440,
                        format!("{}:{}", t.function, t.cron),
                    ));
                }
            }
        }
        assert_eq!(
            fired,
            [
                (0, "a:*/5 * * * *".to_string()),
                (0, "b:*/5 * * * *".to_string()),
                (1, "b:1 * * * *".to_string()),
                (5, "a:*/5 * * * *".to_string()),
                (5, "b:*/5 * * * *".to_string()),
                (10, "a:*/5 * * * *".to_string()),
                (10, "b:*/5 * * * *".to_string()),
            ]
        );
        // The schedule is removed: nothing more.
        let none = schedules(&[]);
        assert!(
            (12..30)
                .flat_map(|m| ticker.advance(at(m, 0), &none))
                .next()
                .is_none()
        );
        // Minutes the scheduler never saw are skipped, not caught up.
        let mut late = Ticker::default();
        assert_eq!(late.advance(at(3, 0), &plan).len(), 0);
        assert_eq!(late.advance(at(10, 2), &plan).len(), 2);
        // A clock that goes back does not fire a minute again.
        assert!(late.advance(at(9, 0), &plan).is_empty());
    }

    #[test]
    fn the_local_lease_hands_out_each_tick_once() {
        let lease = LocalLease::default();
        let tick = |minute| Tick {
            tenant: "t".into(),
            function: "f".into(),
            cron: "* * * * *".into(),
            minute,
        };
        assert!(lease.claim(&tick(1)));
        assert!(!lease.claim(&tick(1)));
        assert!(lease.claim(&tick(2)));
        assert!(lease.claim(&tick(10)));
        assert!(!lease.claim(&tick(10)));
    }
}
