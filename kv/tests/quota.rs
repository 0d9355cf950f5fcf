//! KV usage and quotas: what each write does to a tenant's usage, writes
//! past `kv_bytes` or `kv_keys` refused whole while earlier ones stay,
//! concurrent writers held to the quota, usage counted for data written
//! before it was kept.
use std::sync::Arc;
use std::time::Duration;

use perch_kv::{
    CheckedKv, KvError, KvLimits, KvQuota, KvQuotas, KvStore, KvUsage, NamespaceId, PutOptions,
    RedbKv, WriteOp,
};

fn open(dir: &std::path::Path, quotas: Arc<KvQuotas>) -> (Arc<RedbKv>, Arc<dyn KvStore>) {
    let db = Arc::new(redb::Database::create(dir.join("kv.redb")).unwrap());
    let redb = Arc::new(RedbKv::open_full(db, Duration::from_secs(3600), 1 << 20, quotas).unwrap());
    let kv: Arc<dyn KvStore> = Arc::new(CheckedKv::new(redb.clone(), KvLimits::default()));
    (redb, kv)
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
    let dir = tempfile::tempdir().unwrap();
    let (redb, kv) = open(dir.path(), Arc::default());
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
    };
    kv.put(&ns, "gone", b"soon".to_vec(), ttl).await.unwrap();
    assert_eq!(u().await, usage(16, 4));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(redb.purge_expired().await.unwrap(), 1);
    assert_eq!(u().await, usage(8, 3));
    kv.delete_tenant("t").await.unwrap();
    assert_eq!(u().await, usage(0, 0));
    assert_eq!(kv.usage("u").await.unwrap(), usage(2, 1));
}

#[tokio::test]
async fn a_write_past_a_quota_is_refused_whole_and_earlier_writes_stay() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Arc::new(KvQuotas::default());
    quotas.set(
        "t",
        KvQuota {
            bytes: Some(20),
            keys: Some(3),
        },
    );
    let (_redb, kv) = open(dir.path(), quotas.clone());
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
    let dir = tempfile::tempdir().unwrap();
    let quotas = Arc::new(KvQuotas::default());
    quotas.set(
        "t",
        KvQuota {
            bytes: None,
            keys: Some(10),
        },
    );
    let (_redb, kv) = open(dir.path(), quotas);
    let ns = NamespaceId::new("t", "default");
    let writes: Vec<_> = (0..50)
        .map(|i| {
            let (kv, ns) = (kv.clone(), ns.clone());
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
    assert_eq!(kv.usage("t").await.unwrap().keys, 10);
    assert_eq!(kv.list(&ns, "", None, 100).await.unwrap().keys.len(), 10);
}

#[tokio::test]
async fn data_from_before_usage_was_kept_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_redb, kv) = open(dir.path(), Arc::default());
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
    let (_redb, kv) = open(dir.path(), Arc::default());
    assert_eq!(kv.usage("t").await.unwrap(), usage(7, 2));
}
