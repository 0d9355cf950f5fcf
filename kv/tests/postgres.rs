//! The PostgreSQL backend as several nodes see it: each node's read cache
//! follows the others' writes, and concurrent increments from three nodes
//! add up. (The model and quota tests cover its semantics.)
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_kv::{CheckedKv, KvLimits, KvStore, NamespaceId, PgKv, PutOptions};

/// `n` nodes on one new database; `None` when PostgreSQL is skipped.
fn nodes(n: usize) -> Option<Vec<Arc<dyn KvStore>>> {
    std::thread::spawn(move || {
        let url = perch_pg::test_database()?;
        let config = perch_pg::PgConfig::new(&url);
        Some(
            (0..n)
                .map(|_| {
                    let pg =
                        PgKv::open(&config, Arc::default(), Duration::from_secs(3600), 1 << 20)
                            .unwrap();
                    Arc::new(CheckedKv::new(Arc::new(pg), KvLimits::default())) as Arc<dyn KvStore>
                })
                .collect(),
        )
    })
    .join()
    .unwrap()
}

/// Polls `get` on `kv` until it gives `want` (up to 10 s); how long it took.
async fn seen(kv: &dyn KvStore, ns: &NamespaceId, key: &str, want: Option<&[u8]>) -> Duration {
    let started = Instant::now();
    loop {
        let got = kv.get(ns, key).await.unwrap().map(|e| e.value);
        if got.as_deref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{key}: still {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_nodes_see_writes_through_their_caches() {
    let Some(nodes) = nodes(2) else { return };
    let (a, b) = (&nodes[0], &nodes[1]);
    let ns = NamespaceId::new("t", "default");
    // b caches the key as absent, then as a value; each write on a
    // replaces what b remembers.
    assert!(b.get(&ns, "k").await.unwrap().is_none());
    assert!(b.get_cached(&ns, "k").is_some(), "b remembers the miss");
    for v in ["one", "two", "three"] {
        a.put(&ns, "k", v.as_bytes().to_vec(), PutOptions::default())
            .await
            .unwrap();
        // a reads its own write at once.
        assert_eq!(a.get(&ns, "k").await.unwrap().unwrap().value, v.as_bytes());
        let took = seen(b.as_ref(), &ns, "k", Some(v.as_bytes())).await;
        eprintln!("node b saw {v:?} after {took:?}");
    }
    a.delete(&ns, "k").await.unwrap();
    seen(b.as_ref(), &ns, "k", None).await;
    // A tenant's deletion on a reaches b's cache and namespaces.
    b.create_namespace(&ns).await.unwrap();
    b.put(&ns, "x", b"1".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert!(a.get(&ns, "x").await.unwrap().is_some());
    assert!(b.namespace_exists(&ns).await.unwrap());
    a.delete_tenant("t").await.unwrap();
    seen(b.as_ref(), &ns, "x", None).await;
    assert!(!b.namespace_exists(&ns).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn increments_from_three_nodes_add_up() {
    let Some(nodes) = nodes(3) else { return };
    let ns = NamespaceId::new("t", "default");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (kv, ns) = (nodes[i % 3].clone(), ns.clone());
            tokio::spawn(async move { kv.increment(&ns, "hits", 1).await.unwrap() })
        })
        .collect();
    let mut seen_values = Vec::new();
    for t in tasks {
        seen_values.push(t.await.unwrap());
    }
    seen_values.sort_unstable();
    assert_eq!(
        seen_values,
        (1..=100).collect::<Vec<i64>>(),
        "each increment saw its own total"
    );
    for kv in &nodes {
        seen(kv.as_ref(), &ns, "hits", Some(b"100")).await;
    }
}
