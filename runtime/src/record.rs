//! Putting together an invocation's [`InvocationRecord`] from the two
//! sides that finish it: the instance's task, and the consumer (the
//! `handle` future, then the response body). The record goes to the sink
//! when the last of them lets go, so it is complete: the guest's output
//! up to the end of its body, the response status, and whether the client
//! went away first.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::InvokeError;
use crate::logs::{InvocationRecord, LogLine, LogSink, Outcome};

/// How the instance's task ended.
pub(crate) struct TaskEnd {
    /// `None` when the guest finished cleanly.
    pub(crate) failure: Option<Outcome>,
    pub(crate) cpu: Duration,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) truncated: bool,
}

impl TaskEnd {
    /// The end of an invocation that never ran (the host failed first).
    pub(crate) fn host_failure() -> TaskEnd {
        TaskEnd {
            failure: Some(Outcome::Exception),
            cpu: Duration::ZERO,
            logs: Vec::new(),
            truncated: false,
        }
    }
}

/// The outcome an invocation error stands for.
pub(crate) fn outcome_of(e: &InvokeError) -> Outcome {
    match e {
        InvokeError::CpuTimeout => Outcome::ExceededCpu,
        InvokeError::MemoryLimit => Outcome::ExceededMemory,
        InvokeError::WallTimeout => Outcome::ExceededWall,
        InvokeError::Overloaded => Outcome::Overloaded,
        _ => Outcome::Exception,
    }
}

#[derive(Default)]
struct State {
    task: Option<TaskEnd>,
    /// The guest's response status, once it produced a head.
    status: Option<u16>,
    /// The guest answered with an error, or not at all.
    refused: bool,
    /// The consumer went away before the task ended.
    canceled: bool,
    /// The component was loaded or compiled for this invocation.
    coldstart: bool,
}

/// Shared by the task and the consumer; reports when dropped.
pub(crate) struct Ledger {
    sink: Arc<dyn LogSink>,
    label: Arc<str>,
    started: Instant,
    state: Mutex<State>,
}

impl Ledger {
    pub(crate) fn new(sink: Arc<dyn LogSink>, label: Arc<str>) -> Arc<Ledger> {
        Arc::new(Ledger {
            sink,
            label,
            started: Instant::now(),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the component had to be loaded (or compiled) first.
    pub(crate) fn cold_start(&self, cold: bool) {
        self.state().coldstart = cold;
    }

    /// The task's side: the instance finished or failed.
    pub(crate) fn task_ended(self: Arc<Self>, end: TaskEnd) {
        self.state().task = Some(end);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let state = std::mem::take(&mut *self.state());
        // No report: the task panicked, or was dropped unfinished.
        let task = state.task.unwrap_or_else(TaskEnd::host_failure);
        let outcome = match (state.canceled, task.failure) {
            (true, _) => Outcome::Canceled,
            (false, Some(failure)) => failure,
            (false, None) if state.refused || state.status.is_none() => Outcome::Exception,
            (false, None) => Outcome::Ok,
        };
        self.sink.record(InvocationRecord {
            label: self.label.clone(),
            outcome,
            status: state.status,
            cpu: task.cpu,
            duration: self.started.elapsed(),
            logs: task.logs,
            truncated: task.truncated,
            coldstart: state.coldstart,
        });
    }
}

/// The consumer's hold on the ledger. Dropped before [`Consumer::done`],
/// while the task is still running, it marks the invocation canceled.
pub(crate) struct Consumer(Option<Arc<Ledger>>);

impl Consumer {
    pub(crate) fn new(ledger: Arc<Ledger>) -> Consumer {
        Consumer(Some(ledger))
    }

    /// The guest produced its response head.
    pub(crate) fn head(&self, status: u16) {
        if let Some(ledger) = &self.0 {
            ledger.state().status = Some(status);
        }
    }

    /// The guest answered with an error, or not at all.
    pub(crate) fn refused(&self) {
        if let Some(ledger) = &self.0 {
            ledger.state().refused = true;
        }
    }

    /// The consumer has all it will take (the body ended, or there is
    /// none): letting go now is no cancellation.
    pub(crate) fn done(&mut self) {
        self.0 = None;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(ledger) = self.0.take() {
            let mut state = ledger.state();
            if state.task.is_none() {
                state.canceled = true;
            }
        }
    }
}
