//! The events of a function's log, in the shape the API sends them.
use std::sync::Arc;

use serde::Serialize;

fn shared_str<S: serde::Serializer>(s: &Arc<str>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(s)
}

/// One line the guest printed.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Unix milliseconds.
    pub time: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// As printed (invalid UTF-8 replaced), without the line break.
    pub message: String,
}

/// One event of a function's log.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A data-plane request.
    Request(RequestEvent),
    /// A cron tick.
    Scheduled(ScheduledEvent),
    /// A container instance's lifecycle change.
    Container(ContainerEvent),
    /// A line a container instance printed.
    Output(OutputEvent),
}

/// A line a container instance printed (stdout or stderr), as printed.
#[derive(Debug, Clone, Serialize)]
pub struct OutputEvent {
    /// Unix milliseconds when Perch read it.
    pub time: u64,
    /// Function name.
    pub function: String,
    /// The version it runs.
    pub version: u32,
    /// The instance (short container id).
    pub instance: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its break.
    pub message: String,
}

/// A container instance started, stopped, crashed, was killed for
/// memory, or did not become healthy.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerEvent {
    /// Unix milliseconds.
    pub time: u64,
    /// The node that runs it.
    #[serde(serialize_with = "shared_str")]
    pub node: Arc<str>,
    /// Function name.
    pub function: String,
    /// The version it runs.
    pub version: u32,
    /// The instance (short container id; empty when none was created).
    pub instance: String,
    /// `started`, `stopped`, `crashed`, `oom` or `unhealthy`.
    pub event: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// How an invocation went: the part request and cron events share.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// The status the client (or the scheduler) got; null when it went
    /// away first, or the handler gave none.
    pub status: Option<u16>,
    /// `ok`, `exception`, `exceeded_cpu`, `exceeded_memory`,
    /// `exceeded_wall`, `canceled` or `rejected`.
    pub outcome: &'static str,
    /// Milliseconds until the instance and the response were done.
    pub duration_ms: u64,
    /// CPU milliseconds the guest used.
    pub cpu_ms: u64,
    /// What the guest printed, in order.
    pub logs: Vec<Line>,
    /// Whether output past 64 KiB was dropped.
    pub truncated: bool,
}

impl Run {
    /// A run not finished yet.
    pub fn pending() -> Run {
        Run {
            outcome: "ok",
            ..Run::default()
        }
    }
}

/// A data-plane request's event. It never carries request headers,
/// bodies, secrets or tokens: only what is listed here.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEvent {
    /// Unix milliseconds when the request arrived.
    pub time: u64,
    /// The `Perch-Request-Id` of the answer.
    pub request_id: String,
    /// The node that served it.
    #[serde(serialize_with = "shared_str")]
    pub node: Arc<str>,
    /// Function name.
    pub function: String,
    /// The version that served it.
    pub version: u32,
    /// Request method.
    pub method: String,
    /// Request path, without the query string.
    pub path: String,
    /// How it went.
    #[serde(flatten)]
    pub run: Run,
}

/// A cron tick's event.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledEvent {
    /// Unix milliseconds of the tick.
    pub time: u64,
    /// The node that ran it.
    #[serde(serialize_with = "shared_str")]
    pub node: Arc<str>,
    /// Function name.
    pub function: String,
    /// The version that ran it.
    pub version: u32,
    /// The schedule's expression.
    pub cron: String,
    /// How it went.
    #[serde(flatten)]
    pub run: Run,
}

impl Event {
    /// Unix milliseconds.
    pub fn time(&self) -> u64 {
        match self {
            Event::Request(e) => e.time,
            Event::Scheduled(e) => e.time,
            Event::Container(e) => e.time,
            Event::Output(e) => e.time,
        }
    }

    /// The function it belongs to.
    pub fn function(&self) -> &str {
        match self {
            Event::Request(e) => &e.function,
            Event::Scheduled(e) => &e.function,
            Event::Container(e) => &e.function,
            Event::Output(e) => &e.function,
        }
    }

    /// The status, if there was one.
    pub fn status(&self) -> Option<u16> {
        self.run().and_then(|r| r.status)
    }

    /// How it went (a request or a tick).
    pub fn run(&self) -> Option<&Run> {
        match self {
            Event::Request(e) => Some(&e.run),
            Event::Scheduled(e) => Some(&e.run),
            Event::Container(_) | Event::Output(_) => None,
        }
    }

    /// Roughly the bytes the event holds (what the ring budgets).
    pub fn size(&self) -> usize {
        let strings = match self {
            Event::Request(e) => {
                e.request_id.len() + e.function.len() + e.method.len() + e.path.len()
            }
            Event::Scheduled(e) => e.function.len() + e.cron.len(),
            Event::Container(e) => e.function.len() + e.instance.len() + e.message.len(),
            Event::Output(e) => e.function.len() + e.instance.len() + e.message.len(),
        };
        let lines = self.run().map_or(&[][..], |r| &r.logs);
        256 + strings + lines.iter().map(|l| 48 + l.message.len()).sum::<usize>()
    }
}

/// A status filter: a class (`2xx` … `5xx`) or one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `Nxx`: N × 100 ≤ status < (N + 1) × 100.
    Class(u16),
    /// One status code.
    Code(u16),
}

impl StatusFilter {
    /// Parses `2xx`…`5xx` or a 3-digit code (100–599).
    pub fn parse(text: &str) -> Option<StatusFilter> {
        let b = text.as_bytes();
        if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
            return None;
        }
        if text[1..].eq_ignore_ascii_case("xx") {
            return Some(StatusFilter::Class(u16::from(b[0] - b'0')));
        }
        text.parse().ok().map(StatusFilter::Code)
    }

    /// Whether `status` passes.
    pub fn matches(self, status: Option<u16>) -> bool {
        match (self, status) {
            (StatusFilter::Class(c), Some(s)) => s / 100 == c,
            (StatusFilter::Code(c), Some(s)) => s == c,
            (_, None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(StatusFilter::parse("5xx"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("404"), Some(StatusFilter::Code(404)));
        for bad in ["6xx", "0xx", "50", "5000", "abc", "", "x04"] {
            assert_eq!(StatusFilter::parse(bad), None, "{bad}");
        }
        assert!(StatusFilter::Class(5).matches(Some(504)));
        assert!(!StatusFilter::Class(5).matches(Some(404)));
        assert!(!StatusFilter::Class(5).matches(None));
        assert!(StatusFilter::Code(404).matches(Some(404)));
    }
}
