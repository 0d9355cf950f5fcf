//! The function's log: what a guest printed during one invocation, and how
//! the invocation ended, handed to the invocation's [`LogSink`].
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of guest output (stdout and stderr together) kept per invocation.
pub(crate) const GUEST_LOG_CAPACITY: usize = 64 * 1024;
/// Lines kept per invocation: bounds the memory of a guest that prints
/// many empty lines.
const MAX_LINES: usize = 8192;

/// Which output stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl LogStream {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line of guest output, as printed (invalid UTF-8 replaced), without
/// its line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the guest began writing the line, Unix milliseconds.
    pub time_ms: u64,
    /// The stream it was written to.
    pub stream: LogStream,
    /// The line's text.
    pub message: String,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The guest answered and finished cleanly.
    Ok,
    /// The guest trapped, returned without a response, answered with an
    /// error, or the host failed to run it.
    Exception,
    /// The CPU-time limit was hit.
    ExceededCpu,
    /// The instance's memory limit was hit.
    ExceededMemory,
    /// The wall-clock limit was hit.
    ExceededWall,
    /// The client went away (the request future or the response body was
    /// dropped) before the instance finished.
    Canceled,
    /// No instance slot was free on the node.
    Overloaded,
    /// A container instance failed the request (another executor's
    /// outcome, reported through the same sink).
    ContainerError,
    /// No container instance became ready in time.
    ContainerUnavailable,
}

impl Outcome {
    /// The outcome's name in the function's log: `ok`, `exception`,
    /// `exceeded_cpu`, `exceeded_memory`, `exceeded_wall`, `canceled`,
    /// `overloaded`, `container_error`, `container_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Exception => "exception",
            Outcome::ExceededCpu => "exceeded_cpu",
            Outcome::ExceededMemory => "exceeded_memory",
            Outcome::ExceededWall => "exceeded_wall",
            Outcome::Canceled => "canceled",
            Outcome::Overloaded => "overloaded",
            Outcome::ContainerError => "container_error",
            Outcome::ContainerUnavailable => "container_unavailable",
        }
    }
}

/// One invocation, as the function's log sees it.
#[derive(Debug, Clone)]
pub struct InvocationRecord {
    /// The invocation's label, e.g. `tenant/function@3`.
    pub label: Arc<str>,
    /// How it ended.
    pub outcome: Outcome,
    /// The status of the guest's response, if it produced a head.
    pub status: Option<u16>,
    /// CPU time the guest used.
    pub cpu: Duration,
    /// From the start of the request until both the instance and the
    /// response were done.
    pub duration: Duration,
    /// What the guest printed, in order.
    pub logs: Vec<LogLine>,
    /// Whether output past the per-invocation cap (64 KiB) was dropped.
    pub truncated: bool,
    /// Whether this invocation paid a cold start: its component was loaded
    /// from disk or compiled (wasm), or its instance started (containers).
    pub coldstart: bool,
}

/// Where invocations' records go: the function's log.
pub trait LogSink: Send + Sync {
    /// Called once per invocation, when its instance has finished (or
    /// failed) and its response was sent or dropped. Runs on the async
    /// threads: it must not block.
    fn record(&self, record: InvocationRecord);

    /// The invocation's trace, when its request is traced: its KV calls
    /// and outbound requests become child spans. None by default.
    fn trace(&self) -> Option<Arc<dyn crate::RequestTrace>> {
        None
    }
}

/// The default [`LogSink`]: each line to the server log (`tracing` target
/// `perch_guest`, INFO, with `function` = the label), then a note when
/// output was truncated.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLogSink;

impl LogSink for TracingLogSink {
    fn record(&self, record: InvocationRecord) {
        let label = &record.label;
        for line in &record.logs {
            tracing::info!(target: "perch_guest", function = %label, "{}", line.message);
        }
        if record.truncated {
            tracing::info!(target: "perch_guest", function = %label, "[output truncated at {GUEST_LOG_CAPACITY} bytes]");
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bounded capture of an instance's stdout and stderr as lines. Output
/// past the cap is dropped (and noted), never an error the guest could
/// trip over.
#[derive(Clone, Default)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<Capture>>,
}

#[derive(Default)]
struct Capture {
    lines: Vec<LogLine>,
    /// The unfinished line of stdout and of stderr.
    open: [Option<(u64, Vec<u8>)>; 2],
    /// Bytes taken this invocation, both streams together.
    used: usize,
    truncated: bool,
}

impl Capture {
    fn end_line(&mut self, index: usize, stream: LogStream) {
        let Some((time_ms, bytes)) = self.open[index].take() else {
            return;
        };
        if self.lines.len() == MAX_LINES {
            self.truncated = true;
            self.used = GUEST_LOG_CAPACITY;
            return;
        }
        let message = String::from_utf8_lossy(&bytes).into_owned();
        self.lines.push(LogLine {
            time_ms,
            stream,
            message,
        });
    }
}

fn index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

impl GuestOutput {
    /// Appends what the guest wrote to `stream`.
    pub(crate) fn append(&self, stream: LogStream, data: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = GUEST_LOG_CAPACITY - c.used;
        if data.len() > room {
            c.truncated = true;
        }
        let mut rest = &data[..data.len().min(room)];
        c.used += rest.len();
        let i = index(stream);
        let now = if rest.is_empty() { 0 } else { unix_ms() };
        while !rest.is_empty() {
            let line = &mut c.open[i].get_or_insert_with(|| (now, Vec::new())).1;
            match rest.iter().position(|&b| b == b'\n') {
                Some(n) => {
                    let text = &rest[..n];
                    // `\r\n` ends a line too, as in `str::lines`.
                    line.extend_from_slice(text.strip_suffix(b"\r").unwrap_or(text));
                    rest = &rest[n + 1..];
                    c.end_line(i, stream);
                }
                None => {
                    line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
    }

    /// Takes the lines captured so far (unfinished lines too) and whether
    /// some output was dropped; the next invocation starts afresh.
    pub(crate) fn take(&self) -> (Vec<LogLine>, bool) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.end_line(0, LogStream::Stdout);
        c.end_line(1, LogStream::Stderr);
        c.used = 0;
        (
            std::mem::take(&mut c.lines),
            std::mem::take(&mut c.truncated),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(lines: &[LogLine]) -> Vec<(LogStream, &str)> {
        lines
            .iter()
            .map(|l| (l.stream, l.message.as_str()))
            .collect()
    }

    #[test]
    fn output_is_split_into_lines_per_stream() {
        use LogStream::{Stderr, Stdout};
        let out = GuestOutput::default();
        out.append(Stdout, b"one\r\ntw");
        out.append(Stderr, b"err\n\n");
        out.append(Stdout, b"o\nthree");
        let (lines, truncated) = out.take();
        assert_eq!(
            messages(&lines),
            [
                (Stdout, "one"),
                (Stderr, "err"),
                (Stderr, ""),
                (Stdout, "two"),
                (Stdout, "three")
            ]
        );
        assert!(!truncated);
        assert!(lines.iter().all(|l| l.time_ms > 1_600_000_000_000));
        assert_eq!(out.take().0, []);
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_noted() {
        let out = GuestOutput::default();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        for i in 0..70 {
            let stream = [LogStream::Stdout, LogStream::Stderr][i % 2];
            out.append(stream, &line);
        }
        let (lines, truncated) = out.take();
        // 64 KiB across both streams: 64 lines of 1023 bytes and a break.
        assert!(truncated);
        assert_eq!(lines.len(), 64);
        assert!(lines.iter().all(|l| l.message.len() == 1023));
        assert_eq!(lines[1].stream, LogStream::Stderr);
        // The cap is per invocation.
        out.append(LogStream::Stdout, b"again\n");
        let (lines, truncated) = out.take();
        assert_eq!(
            (messages(&lines), truncated),
            (vec![(LogStream::Stdout, "again")], false)
        );

        let many = GuestOutput::default();
        many.append(LogStream::Stdout, &[b'\n'; 10_000]);
        let (lines, truncated) = many.take();
        assert_eq!((lines.len(), truncated), (MAX_LINES, true));
    }
}
