//! Garbage collection of components no kept version runs any more.
//!
//! Crash-safe by order: a component is deleted only after the registry
//! change that dropped its last version has committed, so nothing
//! committed ever names a missing component. A crash between the commit
//! and the deletion (or an upload whose version never committed) leaves
//! an unreferenced file, which [`Artifacts::sweep`] removes at the next
//! start. An upload holds its digest from before its bytes are written
//! until its version has committed, and a collection never deletes a held
//! digest: the two take the same lock around "is it used?" and "write" /
//! "delete".
//!
//! Cluster mode: [`Artifacts::collect`] only forgets this node's copy (the
//! store is shared); the shared store is collected by
//! [`collect_shared_every`] on every node, one at a time, keeping what was
//! stored within `storage.artifact_grace_s` (uploads under way on any node).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use perch_runtime::{Digest, PgArtifactStore, Runtime};

use crate::registry::Registry;

/// The components of this node's versions.
pub struct Artifacts {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    /// Digests of uploads under way, and how many.
    holds: Mutex<HashMap<Digest, usize>>,
    /// Cluster mode: the artifact store is shared, and what no version of
    /// this node's registry runs is only forgotten locally (another node
    /// may be uploading the same bytes at this moment).
    shared: bool,
}

/// An upload's claim on its digest; released when dropped.
pub struct Hold {
    artifacts: Arc<Artifacts>,
    digest: Digest,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut holds = self.artifacts.lock();
        if let Some(n) = holds.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.digest);
            }
        }
    }
}

impl Artifacts {
    /// Collection over `runtime`'s components, asking `registry` which are
    /// still used.
    pub fn new(runtime: Arc<Runtime>, registry: Arc<Registry>) -> Arc<Artifacts> {
        Arc::new(Artifacts {
            runtime,
            registry,
            holds: Mutex::default(),
            shared: false,
        })
    }

    /// For a node whose artifact store is shared with others: components
    /// no version uses are removed from this node's cache only.
    pub fn new_shared(runtime: Arc<Runtime>, registry: Arc<Registry>) -> Arc<Artifacts> {
        Arc::new(Artifacts {
            runtime,
            registry,
            holds: Mutex::default(),
            shared: true,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `digest` for an upload until the returned hold is dropped
    /// (after its version committed, or failed to).
    pub fn hold(self: &Arc<Self>, digest: Digest) -> Hold {
        *self.lock().entry(digest).or_insert(0) += 1;
        Hold {
            artifacts: self.clone(),
            digest,
        }
    }

    /// Deletes those of `candidates` (digests of dropped versions) that no
    /// kept version runs and no upload holds; returns how many. Blocking.
    pub fn collect(&self, candidates: &[String]) -> usize {
        if candidates.is_empty() {
            return 0;
        }
        let holds = self.lock();
        let mut removed = 0;
        for text in self.registry.unreferenced(candidates) {
            let Ok(digest) = text.parse::<Digest>() else {
                continue;
            };
            if holds.contains_key(&digest) {
                continue;
            }
            let removed_here = if self.shared {
                self.runtime.forget_local(&digest)
            } else {
                self.runtime.remove_component(&digest)
            };
            match removed_here {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(digest = %text, "deleted a component no version uses");
                }
                Err(e) => {
                    tracing::warn!(digest = %text, error = %e, "could not delete an unused component")
                }
            }
        }
        removed
    }

    /// Deletes every local component no kept version runs (left by a
    /// crash between a commit and a deletion, or by an upload whose
    /// version never committed). Run at start, before uploads are
    /// accepted. Blocking.
    pub fn sweep(&self) -> usize {
        match self.runtime.local_components() {
            Ok(local) => {
                let candidates: Vec<String> = local.iter().map(Digest::to_string).collect();
                self.collect(&candidates)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the artifacts directory");
                0
            }
        }
    }

    /// One round of cluster collection: this node's cached copies no
    /// version runs are forgotten ([`Artifacts::sweep`]), then the shared
    /// store's unused components older than `grace` are deleted, unless
    /// another node is collecting; returns how many it deleted. Blocking.
    pub fn collect_shared(&self, store: &PgArtifactStore, grace: Duration) -> usize {
        self.sweep();
        let collected = store.collect(grace, |candidates| {
            let holds = self.lock();
            let texts: Vec<String> = candidates.iter().map(Digest::to_string).collect();
            self.registry
                .unreferenced(&texts)
                .iter()
                .filter_map(|t| t.parse::<Digest>().ok())
                .filter(|d| !holds.contains_key(d))
                .collect()
        });
        match collected {
            Ok(Some(deleted)) => {
                for digest in &deleted {
                    tracing::info!(%digest, "deleted a stored component no version uses (cluster)");
                    if let Err(e) = self.runtime.forget_local(digest) {
                        tracing::warn!(%digest, error = %e, "could not forget a deleted component here");
                    }
                }
                deleted.len()
            }
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cluster artifact collection failed; trying again later");
                0
            }
        }
    }
}

/// Runs [`Artifacts::collect_shared`] at start and then every half grace
/// (between 1 s and 10 min) until `stop` turns true.
pub async fn collect_shared_every(
    artifacts: Arc<Artifacts>,
    store: Arc<PgArtifactStore>,
    grace: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let (a, s) = (artifacts.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || a.collect_shared(&s, grace)).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
