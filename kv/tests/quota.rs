//! KV usage and quotas: what each write does to a tenant's usage, writes
//! past `kv_bytes` or `kv_keys` refused whole while earlier ones stay,
//! concurrent writers held to the quota, usage counted for data written
//! before it was kept.
use std::sync::Arc;
use std::time::Duration;

use perch_kv::{
    CheckedKv, KvError, KvLimits, KvQuota, KvQuotas, KvStore, KvUsage, NamespaceId, PgKv,
    PutOptions, RedbKv, WriteOp,
};

type Purging = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>;

/// A store under test and its purge of expired keys.
struct Store {
    kv: Arc<dyn KvStore>,
    purge: Box<dyn Fn() -> Purging + Send>,
}

type Open = fn(&std::path::Path, Arc<KvQuotas>) -> Store;

/// redb, and PostgreSQL (skipped only with `PERCH_SKIP_EXTERNAL=1` and no
/// `PERCH_TEST_POSTGRES_URL`).
fn backends() -> Vec<(&'static str, Open)> {
    let mut all: Vec<(&'static str, Open)> = vec![("redb", open_redb)];
    if std::env::var_os("PERCH_TEST_POSTGRES_URL").is_some()
        || std::env::var("PERCH_SKIP_EXTERNAL").as_deref() != Ok("1")
    {
        all.push(("postgres", open_postgres));
    }
    all
}

fn open_redb(dir: &std::path::Path, quotas: Arc<KvQuotas>) -> Store {
    let db = Arc::new(redb::Database::create(dir.join("kv.redb")).unwrap());
    let redb = Arc::new(RedbKv::open_full(db, Duration::from_secs(3600), 1 << 20, quotas).unwrap());
    let purger = redb.clone();
    Store {
        kv: Arc::new(CheckedKv::new(redb, KvLimits::default())),
        purge: Box::new(move || {
            let redb = purger.clone();
            Box::pin(async move { redb.purge_expired().await.unwrap() })
        }),
    }
}

/// One database per directory; every open of it is another node.
fn open_postgres(dir: &std::path::Path, quotas: Arc<KvQuotas>) -> Store {
    std::thread::scope(|s| {
        s.spawn(|| {
            let marker = dir.join("postgres-url");
            let url = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
                let url = perch_pg::test_database().expect("PostgreSQL for the tests");
                std::fs::write(&marker, &url).unwrap();
                url
            });
            let config = perch_pg::PgConfig::new(&url);
            let pg =
                Arc::new(PgKv::open(&config, quotas, Duration::from_secs(3600), 1 << 20).unwrap());
            let purger = pg.clone();
            Store {
                kv: Arc::new(CheckedKv::new(pg, KvLimits::default())),
                purge: Box::new(move || {
                    let pg = purger.clone();
                    Box::pin(async move { pg.purge_expired().await.unwrap() })
                }),
            }
        })
        .join()
        .unwrap()
    })
}

fn usage(bytes: u64, keys: u64) -> KvUsage {
    KvUsage { bytes, keys }
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        options: PutOptions::default(),
    }
}

#[tokio::test]
async fn usage_follows_every_kind_of_write() {
    for (backend, open) in backends() {
        eprintln!("{backend}");
        usage_follows_writes(open).await;
    }
}

async fn usage_follows_writes(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Arc::default());
    let kv = store.kv.clone();
    let ns = NamespaceId::new("t", "default");
    let other = NamespaceId::new("t", "cache");
    let u = || async { kv.usage("t").await.unwrap() };

    kv.put(&ns, "ab", b"xyz".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(u().await, usage(5, 1));
    // Overwrite with metadata: key + value + metadata.
    let meta = PutOptions {
        ttl: None,
        metadata: Some("{}".into()),
        expires_at_ms: None,
    };
    kv.put(&ns, "ab", b"x".to_vec(), meta).await.unwrap();
    assert_eq!(u().await, usage(5, 1));
    // Another namespace of the same tenant counts; another tenant does not.
    kv.put(&other, "k", b"vv".to_vec(), PutOptions::default())
        .await
        .unwrap();
    kv.put(
        &NamespaceId::new("u", "default"),
        "k",
        b"1".to_vec(),
        PutOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(u().await, usage(8, 2));
    assert_eq!(kv.usage("u").await.unwrap(), usage(2, 1));
    // Increment and compare-and-swap (the overlay path).
    assert_eq!(kv.increment(&ns, "n", 100).await.unwrap(), 100);
    assert_eq!(u().await, usage(12, 3));
    assert!(
        kv.compare_and_swap(&ns, "n", Some(b"100".to_vec()), None)
            .await
            .unwrap()
    );
    assert_eq!(u().await, usage(8, 2));
    // A batch, and a delete.
    kv.write(
        &ns,
        vec![
            put("a", "1"),
            put("b", "22"),
            WriteOp::Delete { key: "ab".into() },
        ],
    )
    .await
    .unwrap();
    assert_eq!(u().await, usage(3 + 2 + 3, 3));
    kv.delete(&ns, "missing").await.unwrap();
    assert_eq!(u().await, usage(8, 3));
    // An expired key counts until it is purged.
    let ttl = PutOptions {
        ttl: Some(Duration::from_millis(1)),
        metadata: None,
        expires_at_ms: None,
    };
    kv.put(&ns, "gone", b"soon".to_vec(), ttl).await.unwrap();
    assert_eq!(u().await, usage(16, 4));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!((store.purge)().await, 1);
    assert_eq!(u().await, usage(8, 3));
    kv.delete_tenant("t").await.unwrap();
    assert_eq!(u().await, usage(0, 0));
    assert_eq!(kv.usage("u").await.unwrap(), usage(2, 1));
}

#[tokio::test]
async fn a_write_past_a_quota_is_refused_whole_and_earlier_writes_stay() {
    for (backend, open) in backends() {
        eprintln!("{backend}");
        refused_whole(open).await;
    }
}

async fn refused_whole(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Arc::new(KvQuotas::default());
    quotas.set(
        "t",
        KvQuota {
            bytes: Some(20),
            keys: Some(3),
        },
    );
    let kv = open(dir.path(), quotas.clone()).kv;
    let ns = NamespaceId::new("t", "default");
    kv.put(&ns, "a", b"123456789".to_vec(), PutOptions::default())
        .await
        .unwrap(); // 10
    let refused = kv
        .put(&ns, "b", b"1234567890".to_vec(), PutOptions::default())
        .await; // 11
    assert_eq!(
        refused,
        Err(KvError::QuotaExceeded {
            quota: "kv_bytes",
            limit: 20
        })
    );
    assert_eq!(refused.unwrap_err().to_string(), "quota_exceeded: kv_bytes");
    // A batch that would cross is refused whole.
    let batch = kv
        .write(&ns, vec![put("c", "1"), put("d", "123456789")])
        .await;
    assert!(matches!(
        batch,
        Err(KvError::QuotaExceeded {
            quota: "kv_bytes",
            ..
        })
    ));
    assert!(kv.get(&ns, "c").await.unwrap().is_none());
    assert_eq!(kv.get(&ns, "a").await.unwrap().unwrap().value, b"123456789");
    assert_eq!(kv.usage("t").await.unwrap(), usage(10, 1));
    // Up to the quota exactly is fine; then the key count.
    kv.put(&ns, "b", b"123456789".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.usage("t").await.unwrap(), usage(20, 2));
    kv.put(&ns, "b", b"1".to_vec(), PutOptions::default())
        .await
        .unwrap();
    kv.put(&ns, "c", b"1".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        kv.increment(&ns, "d", 1).await,
        Err(KvError::QuotaExceeded {
            quota: "kv_keys",
            limit: 3
        })
    );
    // Over a lowered quota, shrinking and deleting still work.
    quotas.set(
        "t",
        KvQuota {
            bytes: Some(5),
            keys: None,
        },
    );
    kv.put(&ns, "a", b"1".to_vec(), PutOptions::default())
        .await
        .unwrap();
    kv.delete(&ns, "b").await.unwrap();
    assert_eq!(kv.usage("t").await.unwrap(), usage(4, 2));
    // Other tenants are not held to it.
    let free = NamespaceId::new("u", "default");
    kv.put(&free, "big", vec![b'x'; 1000], PutOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_pass_a_quota() {
    for (backend, open) in backends() {
        eprintln!("{backend}");
        held_to_the_quota(open).await;
    }
}

/// 50 concurrent puts of new keys against `kv_keys: 10`, spread over two
/// stores on the same data (for PostgreSQL: two nodes).
async fn held_to_the_quota(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Arc::new(KvQuotas::default());
    quotas.set(
        "t",
        KvQuota {
            bytes: None,
            keys: Some(10),
        },
    );
    let first = open(dir.path(), quotas.clone()).kv;
    // redb holds its file alone: its second store is the same one.
    let second = if std::fs::exists(dir.path().join("postgres-url")).unwrap() {
        open(dir.path(), quotas).kv
    } else {
        first.clone()
    };
    let ns = NamespaceId::new("t", "default");
    let writes: Vec<_> = (0..50)
        .map(|i| {
            let kv = if i % 2 == 0 { &first } else { &second }.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                kv.put(&ns, &format!("k{i}"), b"v".to_vec(), PutOptions::default())
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for w in writes {
        match w.await.unwrap() {
            Ok(()) => ok += 1,
            Err(KvError::QuotaExceeded {
                quota: "kv_keys", ..
            }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(first.usage("t").await.unwrap().keys, 10);
    assert_eq!(
        second.list(&ns, "", None, 100).await.unwrap().keys.len(),
        10
    );
}

#[tokio::test]
async fn data_from_before_usage_was_kept_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open_redb(dir.path(), Arc::default()).kv;
        let ns = NamespaceId::new("t", "default");
        kv.put(&ns, "ab", b"xyz".to_vec(), PutOptions::default())
            .await
            .unwrap();
        kv.put(
            &NamespaceId::new("t", "x"),
            "k",
            b"1".to_vec(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    }
    // As an older Perch left it: no usage table.
    {
        let db = redb::Database::create(dir.path().join("kv.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let table: redb::TableDefinition<&str, (u64, u64)> = redb::TableDefinition::new("kv_usage");
        assert!(txn.delete_table(table).unwrap());
        txn.commit().unwrap();
    }
    let kv = open_redb(dir.path(), Arc::default()).kv;
    assert_eq!(kv.usage("t").await.unwrap(), usage(7, 2));
}
