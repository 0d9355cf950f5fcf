//! The artifact store seam: a node whose local directory is empty loads a
//! component from the (shared) store, compiles it and serves it.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use perch_runtime::{ArtifactStore, Digest, RuntimeError};

use crate::{get, guest, invocation, runtime, store_guest, text};

/// A store in memory, standing in for one shared by several nodes.
#[derive(Debug, Default)]
struct MemoryStore {
    items: Mutex<HashMap<Digest, Vec<u8>>>,
    gets: AtomicUsize,
}

impl MemoryStore {
    fn items(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Vec<u8>>> {
        self.items.lock().unwrap()
    }
}

impl ArtifactStore for MemoryStore {
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.items().insert(*digest, bytes.to_vec());
        Ok(())
    }
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        Ok(self.items().get(digest).cloned())
    }
    fn contains(&self, digest: &Digest) -> Result<bool, RuntimeError> {
        Ok(self.items().contains_key(digest))
    }
    fn delete(&self, digest: &Digest) -> Result<(), RuntimeError> {
        self.items().remove(digest);
        Ok(())
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_empty_cache_fetches_compiles_and_serves_from_the_store() {
    let store = Arc::new(MemoryStore::default());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Node A takes the upload: it ends up in the store.
    let a = runtime(dir_a.path(), Some(store.clone()));
    let digest = store_guest(&a).await;
    assert_eq!(store.items()[&digest], guest::bytes());
    drop(a);

    // Node B has never seen it.
    let b = runtime(dir_b.path(), Some(store.clone()));
    assert!(names(dir_b.path()).is_empty());
    let loader = b.clone();
    assert!(
        tokio::task::spawn_blocking(move || loader.has_component(&digest))
            .await
            .unwrap()
    );
    let response = b.handle(&invocation(digest), get("/")).await.unwrap();
    assert_eq!(text(response).await, (200, "ok".to_string()));

    // Fetched once, compiled once; both are now in B's cache.
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats().compilations.load(Ordering::Relaxed), 1);
    let cached = names(dir_b.path());
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(cached.contains(&format!("{digest}.wasm")), "{cached:?}");
    assert!(cached.iter().any(|n| n.ends_with(".cwasm")), "{cached:?}");

    // A third node finds the component in its cache: no fetch.
    drop(b);
    let again = runtime(dir_b.path(), Some(store.clone()));
    let loader = again.clone();
    tokio::task::spawn_blocking(move || loader.load(&digest).map(drop))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_the_store_must_match_their_digest() {
    let store = Arc::new(MemoryStore::default());
    let digest = Digest::of(guest::bytes());
    store
        .items()
        .insert(digest, b"\0asm something else".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let node = runtime(dir.path(), Some(store.clone()));
    let err = tokio::task::spawn_blocking(move || node.load(&digest).map(drop))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("other bytes"), "{err}");
    assert!(names(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_already_cached_locally_is_still_put_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // Uploaded once with the default store (the directory itself).
    let digest = store_guest(&runtime(dir.path(), None)).await;
    // The node now uses a shared store that does not have it yet.
    let store = Arc::new(MemoryStore::default());
    let node = runtime(dir.path(), Some(store.clone()));
    assert_eq!(store_guest(&node).await, digest);
    assert!(store.items().contains_key(&digest));
}
