//! The cluster's members: every node writes a heartbeat ([`beat_every`])
//! to its [`NodeStore`] — the database in cluster mode, memory on a single
//! node — which `GET /v1/nodes` lists. The heartbeat is also how a node
//! knows whether its storage answers: while it fails, `/readyz` says
//! `degraded` (and stays 200: routed functions keep answering).
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::app::App;

/// How often a node writes its heartbeat.
pub const BEAT: Duration = Duration::from_secs(2);
/// A node is listed while its last heartbeat is this recent.
pub const LIVE: Duration = Duration::from_secs(10);

/// One node, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRecord {
    /// The node's name (`[node] name`).
    pub id: String,
    /// Its data-plane address.
    pub address: String,
    /// The registry revision its snapshot holds.
    pub revision: u64,
    /// Its Perch version.
    pub version: String,
    /// When it was last seen (unix seconds).
    pub last_seen: u64,
}

/// Where heartbeats go. Every method blocks.
pub trait NodeStore: Send + Sync {
    /// Records `me` as seen now.
    fn beat(&self, me: &NodeRecord) -> Result<(), String>;
    /// The nodes seen within [`LIVE`], by id.
    fn live(&self) -> Result<Vec<NodeRecord>, String>;
    /// Forgets node `id` (it shuts down).
    fn leave(&self, id: &str) -> Result<(), String>;
}

/// A single node's store: itself.
#[derive(Default)]
pub struct LocalNodes(Mutex<Option<NodeRecord>>);

impl NodeStore for LocalNodes {
    fn beat(&self, me: &NodeRecord) -> Result<(), String> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(me.clone());
        Ok(())
    }

    fn live(&self) -> Result<Vec<NodeRecord>, String> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect())
    }

    fn leave(&self, _id: &str) -> Result<(), String> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes the node's heartbeat every [`BEAT`] until `stop` turns true,
/// keeping `app.storage_ok` to whether the last one was stored; then the
/// node leaves the list.
pub async fn beat_every(
    app: Arc<App>,
    address: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = app.config.node_name.clone();
    loop {
        let me = NodeRecord {
            id: id.clone(),
            address: address.clone(),
            revision: app.registry.revision(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            last_seen: now(),
        };
        let store = app.nodes.clone();
        let beat = tokio::task::spawn_blocking(move || store.beat(&me))
            .await
            .unwrap_or_else(|e| Err(format!("heartbeat task: {e}")));
        let was = app.storage_ok.swap(beat.is_ok(), Ordering::Relaxed);
        match (&beat, was) {
            (Err(e), true) => {
                tracing::warn!(error = %e, "storage unavailable: the node is degraded (routed functions keep answering)");
            }
            (Ok(()), false) => tracing::info!("storage available again"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(BEAT) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let store = app.nodes.clone();
    let left = tokio::task::spawn_blocking(move || store.leave(&id)).await;
    if let Ok(Err(e)) = left {
        tracing::warn!(error = %e, "could not take the node off the node list");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: &str, revision: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            revision,
            version: "0".into(),
            last_seen: 1000,
        }
    }

    #[test]
    fn a_single_node_lists_itself_until_it_leaves() {
        let nodes = LocalNodes::default();
        assert!(nodes.live().unwrap().is_empty());
        nodes.beat(&record("a", 1)).unwrap();
        nodes.beat(&record("a", 2)).unwrap();
        assert_eq!(nodes.live().unwrap(), vec![record("a", 2)]);
        nodes.leave("a").unwrap();
        assert!(nodes.live().unwrap().is_empty());
    }
}
