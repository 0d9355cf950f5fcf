//! Cluster mode's log relay: a follower on any node receives the events
//! of every node.
//!
//! Nothing crosses the database unless someone follows: a node with a
//! follower of tenant T says so on the `perch_log_follow` channel (at once,
//! and every 5 s while the follower lasts); another node that heard it
//! within 15 s passes T's events on (`perch_logs`, one `NOTIFY` each, sent
//! in batches by a thread of its own), and the follower's node hands them
//! to its followers ([`LogHub::deliver`]). A payload over PostgreSQL's
//! 8000-byte limit loses the guest's log lines from the end until it fits
//! (and says `truncated`).
//! Relaying never waits: a full queue or a database out of reach drops
//! events (followers are told of lost events only for their own node's).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use perch_pg::{Dedicated, Listening, PgConfig};
use serde_json::{Value, json};

use super::event::Event;
use super::hub::{LogHub, Relay};

/// Where events go.
const EVENTS: &str = "perch_logs";
/// Where nodes say whom they follow.
const FOLLOWS: &str = "perch_log_follow";
/// How long a node's word that it follows a tenant holds.
const FOLLOW_FOR: Duration = Duration::from_secs(15);
/// How often a node repeats it.
const ANNOUNCE: Duration = Duration::from_secs(5);
/// The largest payload sent (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7900;
/// Events (and announcements) waiting to be sent.
const QUEUE: usize = 4096;
/// Notifications per transaction.
const BATCH: usize = 256;

/// The relay of one node.
pub struct ClusterLogs {
    node: String,
    /// Tenants other nodes follow, until when.
    wanted: Arc<RwLock<HashMap<String, Instant>>>,
    tx: SyncSender<(&'static str, String)>,
    /// Events not relayed (queue full, too large, or the database out of
    /// reach).
    dropped: Arc<AtomicU64>,
    _listening: Listening,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

impl ClusterLogs {
    /// Starts relaying `hub`'s events as node `node` and sets itself as the
    /// hub's relay.
    pub fn start(config: &PgConfig, node: &str, hub: &Arc<LogHub>) -> std::io::Result<()> {
        let wanted: Arc<RwLock<HashMap<String, Instant>>> = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let listening = {
            let (me, wanted, hub) = (node.to_string(), wanted.clone(), Arc::downgrade(hub));
            perch_pg::listen(
                config,
                "perch-logs",
                &[EVENTS, FOLLOWS],
                |_| Ok(()),
                move |channel, payload| heard(&me, &wanted, &hub, channel, payload),
            )?
        };
        {
            let (config, me, hub, dropped) = (
                config.clone(),
                node.to_string(),
                Arc::downgrade(hub),
                dropped.clone(),
            );
            std::thread::Builder::new()
                .name("perch-log-relay".into())
                .spawn(move || send_loop(&config, &me, &hub, &dropped, rx))?;
        }
        hub.set_relay(Arc::new(ClusterLogs {
            node: node.to_string(),
            wanted,
            tx,
            dropped,
            _listening: listening,
        }));
        Ok(())
    }

    fn queue(&self, channel: &'static str, payload: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((channel, payload))
            && channel == EVENTS
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn follow_payload(node: &str, tenant: &str) -> String {
    json!({"node": node, "tenant": tenant}).to_string()
}

/// The event as a payload that fits, or `None`.
fn event_payload(node: &str, tenant: &str, event: &Event) -> Option<String> {
    let mut value = serde_json::to_value(event).ok()?;
    loop {
        let text = json!({"node": node, "tenant": tenant, "event": &value}).to_string();
        if text.len() <= MAX_PAYLOAD {
            return Some(text);
        }
        let lines = value.get_mut("logs").and_then(Value::as_array_mut)?;
        lines.pop()?;
        value["truncated"] = Value::Bool(true);
    }
}

impl Relay for ClusterLogs {
    fn wanted(&self, tenant: &str) -> bool {
        read(&self.wanted)
            .get(tenant)
            .is_some_and(|until| *until > Instant::now())
    }

    fn send(&self, tenant: &str, event: &Arc<Event>) {
        match event_payload(&self.node, tenant, event) {
            Some(payload) => self.queue(EVENTS, payload),
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn followed(&self, tenant: &str) {
        self.queue(FOLLOWS, follow_payload(&self.node, tenant));
    }
}

/// A notification another node (or this one) sent.
fn heard(
    me: &str,
    wanted: &RwLock<HashMap<String, Instant>>,
    hub: &Weak<LogHub>,
    channel: &str,
    payload: &str,
) {
    let Ok(mut v) = serde_json::from_str::<Value>(payload) else {
        return;
    };
    if v["node"].as_str().is_none_or(|n| n == me) {
        return;
    }
    let Some(tenant) = v["tenant"].as_str().map(str::to_string) else {
        return;
    };
    if channel == FOLLOWS {
        let mut w = wanted.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        w.retain(|_, until| *until > now);
        w.insert(tenant, now + FOLLOW_FOR);
    } else if let Some(hub) = hub.upgrade() {
        hub.deliver(&tenant, v["event"].take());
    }
}

/// Sends what is queued, a batch per transaction, and says every
/// [`ANNOUNCE`] which tenants this node follows; ends with the hub.
fn send_loop(
    config: &PgConfig,
    me: &str,
    hub: &Weak<LogHub>,
    dropped: &AtomicU64,
    rx: mpsc::Receiver<(&'static str, String)>,
) {
    let mut client = Dedicated::new(config, "perch-log-relay");
    let mut announced = Instant::now();
    let mut failing = false;
    loop {
        let mut batch = Vec::new();
        match rx.recv_timeout(ANNOUNCE) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if announced.elapsed() >= ANNOUNCE {
            announced = Instant::now();
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(
                    events = lost,
                    "log relay: events other nodes' followers did not get (queue full, too large, or the database out of reach)"
                );
            }
            let Some(hub) = hub.upgrade() else { return };
            for tenant in hub.followed_tenants() {
                batch.push((FOLLOWS, follow_payload(me, &tenant)));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let sent = (|| -> Result<(), String> {
            let client = client.get()?;
            let mut txn = client.transaction().map_err(|e| perch_pg::describe(&e))?;
            for (channel, payload) in &batch {
                txn.execute("SELECT pg_notify($1, $2)", &[channel, payload])
                    .map_err(|e| perch_pg::describe(&e))?;
            }
            txn.commit().map_err(|e| perch_pg::describe(&e))
        })();
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("log relay: the database is back");
            }
            Ok(()) => {}
            Err(e) => {
                let lost = batch.iter().filter(|(c, _)| *c == EVENTS).count() as u64;
                dropped.fetch_add(lost, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "log relay: events for other nodes' followers are lost while the database is out of reach");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::event::{Line, RequestEvent, Run};

    #[test]
    fn a_payload_sheds_log_lines_until_it_fits() {
        let event = Event::Request(RequestEvent {
            time: 1,
            request_id: "r".into(),
            node: "n1".into(),
            function: "f".into(),
            version: 1,
            method: "GET".into(),
            path: "/".into(),
            run: Run {
                status: Some(200),
                outcome: "ok",
                duration_ms: 1,
                cpu_ms: 0,
                logs: (0..20)
                    .map(|i| Line {
                        time: i,
                        stream: "stdout",
                        message: "x".repeat(1000),
                    })
                    .collect(),
                truncated: false,
            },
        });
        let payload = event_payload("n1", "t", &event).unwrap();
        assert!(payload.len() <= MAX_PAYLOAD);
        let v: Value = serde_json::from_str(&payload).unwrap();
        let kept = v["event"]["logs"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 20);
        assert_eq!(kept[0]["time"], 0, "the first lines are kept");
        assert_eq!(
            (v["node"].as_str(), v["tenant"].as_str()),
            (Some("n1"), Some("t"))
        );
        assert_eq!(v["event"]["status"], 200);
        assert_eq!(v["event"]["truncated"], true);
    }
}
