//! The log hub: a bounded ring of recent events per function (1,000
//! events and 1 MiB, whichever comes first; 256 MiB per node), and a
//! broadcast channel per tenant that followers subscribe to. Writing an
//! event takes the function's ring lock for a push and, only while
//! someone follows the tenant, a channel send; nothing ever waits for a
//! follower: one that falls behind loses events and is told how many.
//!
//! In cluster mode a [`Relay`] (`cluster.rs`) passes the events of tenants
//! that someone follows on another node to that node, where they reach
//! the followers ([`LogHub::deliver`]) but not the rings: a node's rings
//! hold what it served.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use super::event::{Event, StatusFilter};

/// Events kept per function.
pub const RING_EVENTS: usize = 1000;
/// Bytes kept per function.
pub const RING_BYTES: usize = 1 << 20;
/// Bytes kept on the node, all rings together.
pub const NODE_BYTES: usize = 256 << 20;
/// Followers per function (and of a tenant's whole log).
pub const MAX_FOLLOWERS: usize = 8;
/// Events a follower may be behind before it loses some.
const CHANNEL_EVENTS: usize = 1024;

/// An event in a ring, with its size and its place in the node's
/// arrival order (which orders events of one millisecond across
/// functions).
struct Entry {
    event: Arc<Event>,
    size: usize,
    seq: u64,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Entry>,
    bytes: usize,
    /// The function was forgotten: its bytes are no longer counted.
    gone: bool,
}

/// One function's log.
struct FunctionLog {
    ring: Mutex<Ring>,
    followers: AtomicUsize,
}

/// What followers receive: an event of this node, or one another node
/// passed on (as the JSON it sends).
#[derive(Debug, Clone)]
pub enum Item {
    /// Served here.
    Local(Arc<Event>),
    /// Served by another node of the cluster.
    Remote(Arc<serde_json::Value>),
}

impl Item {
    fn function(&self) -> &str {
        match self {
            Item::Local(e) => e.function(),
            Item::Remote(v) => v["function"].as_str().unwrap_or(""),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Item::Local(e) => e.status(),
            Item::Remote(v) => v["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
        }
    }
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Local(e) => e.serialize(out),
            Item::Remote(v) => v.serialize(out),
        }
    }
}

/// Where a cluster node's events go besides its own followers.
pub trait Relay: Send + Sync {
    /// Whether another node follows `tenant` (checked on every event:
    /// cheap).
    fn wanted(&self, tenant: &str) -> bool;
    /// Passes an event on; never waits.
    fn send(&self, tenant: &str, event: &Arc<Event>);
    /// Someone here began following `tenant`.
    fn followed(&self, tenant: &str);
}

/// One tenant's logs and its live channel.
struct TenantLog {
    functions: RwLock<HashMap<String, Arc<FunctionLog>>>,
    tx: broadcast::Sender<Item>,
    /// Followers of any of the tenant's functions.
    followers: AtomicUsize,
    /// Followers of the whole tenant.
    all_followers: AtomicUsize,
}

/// Every function's log on this node.
pub struct LogHub {
    tenants: RwLock<HashMap<String, Arc<TenantLog>>>,
    bytes: AtomicUsize,
    /// Events pushed so far: the next event's place in arrival order.
    seq: AtomicU64,
    node_bytes: usize,
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
}

impl Default for LogHub {
    fn default() -> Self {
        LogHub::new(NODE_BYTES)
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a follower receives.
pub enum Followed {
    /// The next event that passed the filter.
    Event(Item),
    /// This many events were lost (the follower fell behind).
    Lagged(u64),
    /// The hub forgot the tenant (it was deleted).
    Closed,
}

/// A live subscription; gives its slot back when dropped.
pub struct Follower {
    rx: broadcast::Receiver<Item>,
    tenant: Arc<TenantLog>,
    function: Option<(String, Arc<FunctionLog>)>,
    status: Option<StatusFilter>,
}

impl Follower {
    /// The next event for this follower.
    pub async fn next(&mut self) -> Followed {
        loop {
            match self.rx.recv().await {
                Ok(ev) => {
                    let wanted = self
                        .function
                        .as_ref()
                        .is_none_or(|(name, _)| name == ev.function())
                        && self.status.is_none_or(|s| s.matches(ev.status()));
                    if wanted {
                        return Followed::Event(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Followed::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return Followed::Closed,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.tenant.followers.fetch_sub(1, Ordering::AcqRel);
        match &self.function {
            Some((_, f)) => f.followers.fetch_sub(1, Ordering::AcqRel),
            None => self.tenant.all_followers.fetch_sub(1, Ordering::AcqRel),
        };
    }
}

/// Why a follower was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyFollowers;

impl LogHub {
    /// A hub keeping at most `node_bytes` of events.
    pub fn new(node_bytes: usize) -> LogHub {
        LogHub {
            tenants: RwLock::default(),
            bytes: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            node_bytes,
            relay: std::sync::OnceLock::new(),
        }
    }

    /// Passes events on through `relay` too (cluster mode; once).
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.relay.set(relay);
    }

    /// Hands an event another node served to `tenant`'s followers here.
    pub fn deliver(&self, tenant: &str, event: serde_json::Value) {
        let Some(t) = read(&self.tenants).get(tenant).cloned() else {
            return;
        };
        if t.followers.load(Ordering::Acquire) > 0 {
            let _ = t.tx.send(Item::Remote(Arc::new(event)));
        }
    }

    /// Tenants someone here follows now.
    pub fn followed_tenants(&self) -> Vec<String> {
        read(&self.tenants)
            .iter()
            .filter(|(_, t)| t.followers.load(Ordering::Relaxed) > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn tenant(&self, tenant: &str) -> Arc<TenantLog> {
        if let Some(t) = read(&self.tenants).get(tenant) {
            return t.clone();
        }
        write(&self.tenants)
            .entry(tenant.to_string())
            .or_insert_with(|| {
                Arc::new(TenantLog {
                    functions: RwLock::default(),
                    tx: broadcast::channel(CHANNEL_EVENTS).0,
                    followers: AtomicUsize::new(0),
                    all_followers: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    fn function(t: &TenantLog, function: &str) -> Arc<FunctionLog> {
        if let Some(f) = read(&t.functions).get(function) {
            return f.clone();
        }
        write(&t.functions)
            .entry(function.to_string())
            .or_insert_with(|| {
                Arc::new(FunctionLog {
                    ring: Mutex::default(),
                    followers: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Writes an event to `tenant`'s log of `event.function()`.
    pub fn push(&self, tenant: &str, event: Event) {
        let t = self.tenant(tenant);
        let f = Self::function(&t, event.function());
        let size = event.size();
        let event = Arc::new(event);
        {
            let mut ring = lock(&f.ring);
            if ring.gone {
                return;
            }
            // Taken under the ring lock: a ring's entries ascend.
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            ring.events.push_back(Entry {
                event: event.clone(),
                size,
                seq,
            });
            ring.bytes += size;
            let total = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
            let mut over_node = total.saturating_sub(self.node_bytes);
            while ring.events.len() > RING_EVENTS || ring.bytes > RING_BYTES || over_node > 0 {
                let Some(Entry { size: old, .. }) = ring.events.pop_front() else {
                    break;
                };
                ring.bytes -= old;
                self.bytes.fetch_sub(old, Ordering::Relaxed);
                over_node = over_node.saturating_sub(old);
            }
        }
        if let Some(relay) = self.relay.get()
            && relay.wanted(tenant)
        {
            relay.send(tenant, &event);
        }
        if t.followers.load(Ordering::Acquire) > 0 {
            // No receiver left between the check and the send is fine.
            let _ = t.tx.send(Item::Local(event));
        }
    }

    /// Followers connected now, over every tenant.
    pub fn followers(&self) -> usize {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants
            .values()
            .map(|t| t.followers.load(Ordering::Relaxed))
            .sum()
    }

    /// The latest `limit` events that pass `status`, oldest first: of one
    /// function, or of all the tenant's functions merged by time.
    pub fn latest(
        &self,
        tenant: &str,
        function: Option<&str>,
        status: Option<StatusFilter>,
        limit: usize,
    ) -> Vec<Arc<Event>> {
        let Some(t) = read(&self.tenants).get(tenant).cloned() else {
            return Vec::new();
        };
        let rings: Vec<Arc<FunctionLog>> = match function {
            Some(name) => read(&t.functions).get(name).cloned().into_iter().collect(),
            None => read(&t.functions).values().cloned().collect(),
        };
        let mut out: Vec<(u64, u64, Arc<Event>)> = Vec::new();
        for f in rings {
            let ring = lock(&f.ring);
            let passing = ring
                .events
                .iter()
                .rev()
                .filter(|e| status.is_none_or(|s| s.matches(e.event.status())))
                .take(limit)
                .map(|e| (e.event.time(), e.seq, e.event.clone()));
            out.extend(passing);
        }
        // Events of one millisecond, of one function or of several, in the
        // order they arrived.
        out.sort_unstable_by_key(|(time, seq, _)| (*time, *seq));
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        out.into_iter().map(|(_, _, e)| e).collect()
    }

    /// Subscribes to new events of `tenant` (one function, or all), or
    /// refuses when that already has [`MAX_FOLLOWERS`].
    pub fn follow(
        &self,
        tenant: &str,
        function: Option<&str>,
        status: Option<StatusFilter>,
    ) -> Result<Follower, TooManyFollowers> {
        let t = self.tenant(tenant);
        let function = function.map(|name| (name.to_string(), Self::function(&t, name)));
        let slots = match &function {
            Some((_, f)) => &f.followers,
            None => &t.all_followers,
        };
        slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FOLLOWERS).then_some(n + 1)
            })
            .map_err(|_| TooManyFollowers)?;
        t.followers.fetch_add(1, Ordering::AcqRel);
        if let Some(relay) = self.relay.get() {
            relay.followed(tenant);
        }
        Ok(Follower {
            rx: t.tx.subscribe(),
            tenant: t,
            function,
            status,
        })
    }

    /// Forgets a function's log (the function was deleted).
    pub fn forget_function(&self, tenant: &str, function: &str) {
        let Some(t) = read(&self.tenants).get(tenant).cloned() else {
            return;
        };
        let removed = write(&t.functions).remove(function);
        if let Some(f) = removed {
            self.drop_ring(&f);
        }
    }

    /// Forgets a tenant's logs (its followers get nothing more).
    pub fn forget_tenant(&self, tenant: &str) {
        let removed = write(&self.tenants).remove(tenant);
        if let Some(t) = removed {
            for f in read(&t.functions).values() {
                self.drop_ring(f);
            }
        }
    }

    fn drop_ring(&self, f: &FunctionLog) {
        let mut ring = lock(&f.ring);
        self.bytes.fetch_sub(ring.bytes, Ordering::Relaxed);
        *ring = Ring {
            gone: true,
            ..Ring::default()
        };
    }

    /// Bytes of events kept on the node.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::event::{Line, RequestEvent, Run};

    fn event(function: &str, time: u64, status: u16, message_bytes: usize) -> Event {
        Event::Request(RequestEvent {
            time,
            request_id: format!("{time:032x}"),
            node: "n".into(),
            function: function.into(),
            version: 1,
            method: "GET".into(),
            path: "/".into(),
            run: Run {
                status: Some(status),
                outcome: "ok",
                duration_ms: 1,
                cpu_ms: 0,
                logs: vec![Line {
                    time,
                    stream: "stdout",
                    message: "x".repeat(message_bytes),
                }],
                truncated: false,
            },
        })
    }

    #[test]
    fn rings_keep_the_latest_within_their_bounds() {
        let hub = LogHub::default();
        for i in 0..1500 {
            hub.push("t", event("f", i, 200, 0));
        }
        let all = hub.latest("t", Some("f"), None, 5000);
        assert_eq!(all.len(), RING_EVENTS);
        assert_eq!(all[0].time(), 500);
        // 1 MiB: big events push out old ones sooner.
        for i in 0..100 {
            hub.push("t", event("big", i, 200, 64 << 10));
        }
        let big = hub.latest("t", Some("big"), None, 1000);
        assert!(big.len() < 17 && big.len() > 10, "{}", big.len());
        assert_eq!(big.last().unwrap().time(), 99);
        // The node's budget holds across functions.
        let small = LogHub::new(200 << 10);
        for i in 0..100 {
            small.push("t", event(&format!("f{}", i % 5), i, 200, 8 << 10));
        }
        assert!(small.bytes() <= 200 << 10, "{}", small.bytes());
        small.forget_tenant("t");
        assert_eq!(small.bytes(), 0);
    }

    #[test]
    fn listing_filters_merges_and_limits() {
        let hub = LogHub::default();
        hub.push("t", event("a", 1, 200, 0));
        hub.push("t", event("b", 2, 503, 0));
        hub.push("t", event("a", 3, 500, 0));
        hub.push("u", event("a", 4, 500, 0));
        let times = |v: Vec<Arc<Event>>| v.iter().map(|e| e.time()).collect::<Vec<_>>();
        assert_eq!(times(hub.latest("t", None, None, 10)), [1, 2, 3]);
        assert_eq!(times(hub.latest("t", None, None, 2)), [2, 3]);
        assert_eq!(times(hub.latest("t", Some("a"), None, 10)), [1, 3]);
        let five = StatusFilter::parse("5xx");
        assert_eq!(times(hub.latest("t", None, five, 10)), [2, 3]);
        assert_eq!(times(hub.latest("t", Some("a"), five, 10)), [3]);
        hub.forget_function("t", "a");
        assert_eq!(times(hub.latest("t", None, None, 10)), [2]);
    }

    #[test]
    fn events_of_one_millisecond_list_in_arrival_order_across_functions() {
        let hub = LogHub::default();
        // Many functions, so that the rings' (hash) order differs from the
        // order of arrival for some pair.
        let names: Vec<String> = (0..32).map(|i| format!("f{i}")).collect();
        for name in &names {
            hub.push("t", event(name, 7, 200, 0));
        }
        let listed: Vec<String> = hub
            .latest("t", None, None, 100)
            .iter()
            .map(|e| e.function().to_string())
            .collect();
        assert_eq!(listed, names);
        let last = hub.latest("t", None, None, 1);
        assert_eq!(last[0].function(), "f31");
    }

    #[tokio::test]
    async fn followers_get_new_events_and_learn_what_they_lost() {
        let hub = LogHub::default();
        let mut f = hub.follow("t", Some("a"), None).unwrap();
        let mut all = hub.follow("t", None, StatusFilter::parse("5xx")).unwrap();
        hub.push("t", event("b", 1, 200, 0));
        hub.push("t", event("a", 2, 500, 0));
        assert!(matches!(f.next().await, Followed::Event(Item::Local(e)) if e.time() == 2));
        assert!(matches!(all.next().await, Followed::Event(Item::Local(e)) if e.time() == 2));
        // A follower that stops reading loses events; the writer never waits.
        for i in 0..(CHANNEL_EVENTS as u64 + 10) {
            hub.push("t", event("a", 10 + i, 200, 0));
        }
        assert!(matches!(f.next().await, Followed::Lagged(n) if n == 10));
        // Slots per function, given back on drop.
        let more: Vec<_> = (1..MAX_FOLLOWERS)
            .map(|_| hub.follow("t", Some("a"), None).unwrap())
            .collect();
        assert_eq!(
            hub.follow("t", Some("a"), None).err(),
            Some(TooManyFollowers)
        );
        assert!(hub.follow("t", Some("b"), None).is_ok());
        drop(more);
        assert!(hub.follow("t", Some("a"), None).is_ok());
    }
}
