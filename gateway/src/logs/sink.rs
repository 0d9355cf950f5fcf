//! From an invocation's record to its request event: what the client got
//! (the guest's status, or the one Perch answered for it), the outcome,
//! CPU and time, and the guest's output, which also goes to the server
//! log as before.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use perch_runtime::{InvocationRecord, LogSink, Outcome, TracingLogSink};

use super::event::{ContainerEvent, Event, Line, OutputEvent, RequestEvent, Run};
use super::hub::LogHub;
use crate::telemetry::trace::Traced;
use crate::telemetry::{Metrics, TenantUsage};

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits.
pub fn request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// An outcome's name in an event (`overloaded` is a `rejected` request:
/// the guest never ran).
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Overloaded => "rejected",
        other => other.as_str(),
    }
}

impl Run {
    /// The run `record` describes; `status` is what the client got when
    /// the guest gave none.
    pub fn of(record: &InvocationRecord, status: Option<u16>) -> Run {
        Run {
            status: record.status.or(status),
            outcome: outcome_name(record.outcome),
            duration_ms: record.duration.as_millis() as u64,
            cpu_ms: record.cpu.as_millis() as u64,
            logs: record
                .logs
                .iter()
                .map(|l| Line {
                    time: l.time_ms,
                    stream: l.stream.as_str(),
                    message: l.message.clone(),
                })
                .collect(),
            truncated: record.truncated,
        }
    }
}

/// The status Perch answers when the guest gave none.
pub fn perch_status(outcome: Outcome) -> Option<u16> {
    match outcome {
        Outcome::Ok | Outcome::Canceled => None,
        Outcome::ExceededCpu | Outcome::ExceededWall => Some(504),
        Outcome::Overloaded | Outcome::ContainerUnavailable => Some(503),
        Outcome::ContainerError => Some(502),
        _ => Some(500),
    }
}

/// The container backend's notices: lifecycle changes as container events
/// (also in the server log), output lines as output events, in the
/// function's log.
pub fn container_notices(hub: Arc<LogHub>, node: Arc<str>) -> perch_containers::Notices {
    use perch_containers::Lifecycle;
    Arc::new(move |id, instance, change| {
        let message = match change {
            Lifecycle::Output { stderr, line } => {
                let stream = if stderr { "stderr" } else { "stdout" };
                let event = OutputEvent {
                    time: unix_ms(),
                    function: id.function.clone(),
                    version: id.version,
                    instance: instance.to_string(),
                    stream,
                    message: line,
                };
                hub.push(&id.tenant, Event::Output(event));
                return;
            }
            Lifecycle::Started { ms } => format!("ready {ms} ms after the start began"),
            Lifecycle::Stopped => "stopped".to_string(),
            Lifecycle::Crashed { code } => format!("exited with {code}"),
            Lifecycle::Oom => "killed: out of memory".to_string(),
            Lifecycle::Unhealthy { ref reason } => reason.clone(),
        };
        let name = change.name();
        tracing::info!(tenant = %id.tenant, function = %id.function, version = id.version, %instance, event = name, %message, "container");
        hub.push(
            &id.tenant,
            Event::Container(ContainerEvent {
                time: unix_ms(),
                node: node.clone(),
                function: id.function.clone(),
                version: id.version,
                instance: instance.to_string(),
                event: name,
                message,
            }),
        );
    })
}

/// The status a finished run is counted under: what the client got, or
/// 499 when the client went away before any head (nginx's convention).
const CLIENT_GONE: u16 = 499;

/// Where a finished invocation is counted: the node's metrics, the
/// tenant's usage, and its trace span when it is sampled.
pub struct Counted {
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The tenant's usage counters.
    pub usage: Arc<TenantUsage>,
    /// The function's label in metrics.
    pub function: Arc<str>,
    /// The version runs wasm (its CPU time is measured).
    pub wasm: bool,
    /// The invocation's trace, when it is sampled.
    pub trace: Option<Arc<Traced>>,
}

impl Counted {
    /// Counts a finished invocation (`run` as its event has it) and ends
    /// its span.
    pub fn finished(&self, tenant: &str, run: &Run, record: &InvocationRecord) {
        let status = run.status.unwrap_or(CLIENT_GONE);
        if let Some(t) = &self.trace {
            t.finish(status, run.outcome, record.cpu, record.coldstart);
        }
        let cpu = self.wasm.then_some(record.cpu);
        self.metrics
            .record(tenant, &self.function, status, run.outcome, cpu);
        self.usage.request(cpu.unwrap_or_default());
    }

    /// Counts a request Perch refused before the guest ran, and ends its
    /// span.
    pub fn rejected(&self, tenant: &str, status: u16) {
        if let Some(t) = &self.trace {
            t.finish(status, "rejected", Duration::ZERO, false);
        }
        self.metrics
            .record(tenant, &self.function, status, "rejected", None);
    }

    /// The trace as the runtime's seam sees it (`LogSink::trace`).
    pub fn request_trace(&self) -> Option<Arc<dyn perch_runtime::RequestTrace>> {
        self.trace
            .clone()
            .map(|t| t as Arc<dyn perch_runtime::RequestTrace>)
    }
}

/// One data-plane request on its way to the function's log.
pub struct RequestLog {
    /// Where the event goes.
    pub hub: Arc<LogHub>,
    /// The function's tenant.
    pub tenant: String,
    /// The event, filled in as the request goes; the record completes it.
    pub event: RequestEvent,
    /// Set when the request body crossed its limit (the client got 413).
    pub body_exceeded: Arc<AtomicBool>,
    /// Where it is counted (and traced).
    pub counted: Counted,
}

impl RequestLog {
    /// Writes the event of a request Perch answered itself before the
    /// guest ran (`rejected`).
    pub fn rejected(mut self, status: u16, duration_ms: u64) {
        self.counted.rejected(&self.tenant, status);
        self.event.run = Run {
            status: Some(status),
            outcome: "rejected",
            duration_ms,
            ..Run::default()
        };
        self.hub.push(&self.tenant, Event::Request(self.event));
    }
}

impl LogSink for RequestLog {
    fn record(&self, record: InvocationRecord) {
        let status = match self.body_exceeded.load(Ordering::Relaxed) {
            true => Some(413),
            false => perch_status(record.outcome),
        };
        let event = RequestEvent {
            run: Run::of(&record, status),
            ..self.event.clone()
        };
        self.counted.finished(&self.tenant, &event.run, &record);
        TracingLogSink.record(record);
        self.hub.push(&self.tenant, Event::Request(event));
    }

    fn trace(&self) -> Option<Arc<dyn perch_runtime::RequestTrace>> {
        self.counted.request_trace()
    }
}
