//! Functions' logs: the events (`event.rs`), the hub of rings and live
//! followers (`hub.rs`), and the sink the runtime hands each invocation's
//! record to (`sink.rs`), which turns it into the request's event; in
//! cluster mode, `cluster.rs` passes events between nodes for followers.
pub mod cluster;
mod event;
mod hub;
mod sink;

pub use event::{
    ContainerEvent, Event, Line, OutputEvent, RequestEvent, Run, ScheduledEvent, StatusFilter,
};
pub use hub::{Followed, Follower, Item, LogHub, MAX_FOLLOWERS, Relay, TooManyFollowers};
pub use sink::{
    Counted, RequestLog, container_notices, outcome_name, perch_status, request_id, unix_ms,
};
