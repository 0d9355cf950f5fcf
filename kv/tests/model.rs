//! Every backend, behind the checks as the server runs it, against an
//! in-memory model: random sequences of put, get, delete, list, increment,
//! compare-and-swap and TTL, seeded so a failure reproduces
//! (`PERCH_KV_SEED=<n>`).
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use perch_kv::{
    CheckedKv, Entry, KvError, KvLimits, KvStore, NamespaceId, PgKv, PutOptions, RedbKv, WriteOp,
    WriteResult,
};

/// A store under test, opened on the data in a directory.
struct Opened {
    kv: Arc<dyn KvStore>,
    /// Runs the backend's purge of expired keys now.
    purge: Box<dyn Fn() -> Purging + Send>,
}

type Purging = Pin<Box<dyn Future<Output = Result<usize, KvError>> + Send>>;

/// Opens (or, after a simulated crash, reopens) a store on a directory.
type Open = fn(&Path) -> Opened;

/// The backends under test: redb, and PostgreSQL on the server of
/// `PERCH_TEST_POSTGRES_URL` (`./test.sh` starts one; skipped, with a
/// note, only when `PERCH_SKIP_EXTERNAL=1`). Add a backend here with one
/// line.
fn backends() -> Vec<(&'static str, Open)> {
    let mut all: Vec<(&'static str, Open)> = vec![("redb", open_redb)];
    if std::env::var_os("PERCH_TEST_POSTGRES_URL").is_some()
        || std::env::var("PERCH_SKIP_EXTERNAL").as_deref() != Ok("1")
    {
        all.push(("postgres", open_postgres));
    } else {
        eprintln!("skipped: the PostgreSQL backend (PERCH_TEST_POSTGRES_URL is not set)");
    }
    all
}

/// A database of its own per directory: created at the first open, the
/// same one at every reopen.
fn open_postgres(dir: &Path) -> Opened {
    // Opening blocks: not on the test's async thread.
    std::thread::scope(|s| s.spawn(|| open_postgres_blocking(dir)).join().unwrap())
}

fn open_postgres_blocking(dir: &Path) -> Opened {
    let marker = dir.join("postgres-url");
    let url = match std::fs::read_to_string(&marker) {
        Ok(url) => url,
        Err(_) => {
            let url = perch_pg::test_database().expect("PostgreSQL for the tests");
            std::fs::write(&marker, &url).unwrap();
            url
        }
    };
    let pg = Arc::new(
        PgKv::open(
            &perch_pg::PgConfig::new(&url),
            Arc::default(),
            Duration::from_secs(3600),
            1 << 20,
        )
        .unwrap(),
    );
    let purger = pg.clone();
    Opened {
        kv: Arc::new(CheckedKv::new(pg, KvLimits::default())),
        purge: Box::new(move || {
            let pg = purger.clone();
            Box::pin(async move { pg.purge_expired().await })
        }),
    }
}

fn open_redb(dir: &Path) -> Opened {
    let db = Arc::new(redb::Database::create(dir.join("kv.redb")).unwrap());
    // A long purge interval: expiry must hold on reads alone.
    let redb = Arc::new(RedbKv::open_with(db, Duration::from_secs(3600), 1 << 20).unwrap());
    let purger = redb.clone();
    Opened {
        kv: Arc::new(CheckedKv::new(redb, KvLimits::default())),
        purge: Box::new(move || {
            let redb = purger.clone();
            Box::pin(async move { redb.purge_expired().await })
        }),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<(String, String), (Vec<u8>, Option<String>)>;

fn key(rng: &mut Rng) -> String {
    // U+0000 and non-ASCII too: keys are bytes, listed in byte order.
    const PARTS: [&str; 7] = ["a", "b", "user/", "user/1", "z", "\u{0}", "\u{e9}"];
    let mut k = String::new();
    for _ in 0..1 + rng.below(3) {
        k.push_str(PARTS[rng.below(PARTS.len() as u64) as usize]);
    }
    k
}

/// With `PERCH_FUZZ_SECS` set, rounds go on (each with a fresh seed) until
/// that many seconds have passed; otherwise four rounds.
fn rounds() -> (u64, Option<Duration>) {
    match std::env::var("PERCH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        Some(secs) => (u64::MAX, Some(Duration::from_secs_f64(secs.max(0.1)))),
        None => (4, None),
    }
}

#[tokio::test]
async fn random_operations_agree_with_the_model() {
    let seed: u64 = std::env::var("PERCH_KV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    for (backend, open) in backends() {
        agree_with_the_model(backend, open, seed).await;
    }
}

async fn agree_with_the_model(backend: &str, open: Open, seed: u64) {
    let started = std::time::Instant::now();
    let (max_rounds, budget) = rounds();
    let mut done = 0u64;
    for round in 0..max_rounds {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        done += 1;
        let mut rng = Rng(seed.wrapping_add(round * 7919) | 1);
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut kv = store.kv.clone();
        let namespaces = [
            NamespaceId::new("t1", "default"),
            NamespaceId::new("t1", "other"),
            NamespaceId::new("t2", "default"),
        ];
        let mut model: Model = BTreeMap::new();
        for step in 0..600 {
            let ns = &namespaces[rng.below(3) as usize];
            let mk = |k: &str| (format!("{}/{}", ns.tenant, ns.name), k.to_string());
            let k = key(&mut rng);
            let ctx = format!("{backend}: seed {seed} round {round} step {step}");
            match rng.below(10) {
                0 | 1 => {
                    let value = format!("v{}", rng.below(1000)).into_bytes();
                    let metadata = (rng.below(3) == 0)
                        .then(|| format!("{{\"n\": {},  \"a\":[]}}", rng.below(9)));
                    let short_ttl = rng.below(8) == 0;
                    let ttl = if short_ttl {
                        Some(Duration::from_millis(1))
                    } else if rng.below(4) == 0 {
                        Some(Duration::from_secs(3600))
                    } else {
                        None
                    };
                    kv.put(
                        ns,
                        &k,
                        value.clone(),
                        PutOptions {
                            ttl,
                            metadata: metadata.clone(),
                            expires_at_ms: None,
                        },
                    )
                    .await
                    .unwrap();
                    if short_ttl {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        model.remove(&mk(&k));
                    } else {
                        model.insert(mk(&k), (value, metadata));
                    }
                }
                2 => {
                    kv.delete(ns, &k).await.unwrap();
                    model.remove(&mk(&k));
                }
                3 | 4 => {
                    let got = kv
                        .get(ns, &k)
                        .await
                        .unwrap()
                        .map(|e: Entry| (e.value, e.metadata));
                    assert_eq!(got, model.get(&mk(&k)).cloned(), "{ctx}: get {k}");
                    assert_eq!(
                        kv.exists(ns, &k).await.unwrap(),
                        model.contains_key(&mk(&k)),
                        "{ctx}"
                    );
                }
                5 => {
                    let delta = rng.below(20) as i64 - 5;
                    let cur = model.get(&mk(&k)).cloned();
                    let expected = match &cur {
                        None => Ok(delta),
                        Some((v, _)) => std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                            .map(|n| n + delta)
                            .ok_or(()),
                    };
                    let got = kv.increment(ns, &k, delta).await;
                    match expected {
                        Ok(n) => {
                            assert_eq!(got, Ok(n), "{ctx}: increment");
                            let meta = cur.and_then(|c| c.1);
                            model.insert(mk(&k), (n.to_string().into_bytes(), meta));
                        }
                        Err(()) => assert!(
                            matches!(got, Err(KvError::NotACounter(_))),
                            "{ctx}: {got:?}"
                        ),
                    }
                }
                6 => {
                    let cur = model.get(&mk(&k)).map(|c| c.0.clone());
                    let guess = if rng.below(2) == 0 {
                        cur.clone()
                    } else {
                        Some(b"nope".to_vec())
                    };
                    let new = (rng.below(4) != 0).then(|| {
                        (
                            format!("c{}", rng.below(100)).into_bytes(),
                            PutOptions::default(),
                        )
                    });
                    let swapped = kv
                        .compare_and_swap(ns, &k, guess.clone(), new.clone())
                        .await
                        .unwrap();
                    assert_eq!(swapped, guess == cur, "{ctx}: cas");
                    if swapped {
                        match new {
                            Some((v, _)) => {
                                model.insert(mk(&k), (v, None));
                            }
                            None => {
                                model.remove(&mk(&k));
                            }
                        }
                    }
                }
                7 => {
                    // A batch that fails part-way applies nothing.
                    let k2 = key(&mut rng);
                    kv.put(ns, &k2, b"not a number".to_vec(), PutOptions::default())
                        .await
                        .unwrap();
                    model.insert(mk(&k2), (b"not a number".to_vec(), None));
                    let batch = vec![
                        WriteOp::Put {
                            key: k.clone(),
                            value: b"batched".to_vec(),
                            options: PutOptions::default(),
                        },
                        WriteOp::Increment {
                            key: k2.clone(),
                            delta: 1,
                        },
                    ];
                    let r = kv.write(ns, batch).await;
                    if k == k2 {
                        // The put replaced the text: the increment sees "batched", still not a number.
                        assert!(r.is_err());
                    } else {
                        assert!(matches!(r, Err(KvError::NotACounter(_))), "{ctx}: {r:?}");
                    }
                    let got = kv.get(ns, &k).await.unwrap().map(|e| (e.value, e.metadata));
                    assert_eq!(
                        got,
                        model.get(&mk(&k)).cloned(),
                        "{ctx}: failed batch leaked a write"
                    );
                }
                8 => {
                    let prefix = ["", "user/", "a", "zz"][rng.below(4) as usize];
                    let limit = 1 + rng.below(5) as usize;
                    let mut cursor: Option<String> = None;
                    let mut all = Vec::new();
                    loop {
                        let page = kv.list(ns, prefix, cursor.as_deref(), limit).await.unwrap();
                        assert!(page.keys.len() <= limit);
                        all.extend(page.keys.into_iter().map(|k| k.name));
                        match page.cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    let nsname = format!("{}/{}", ns.tenant, ns.name);
                    let expected: Vec<String> = model
                        .keys()
                        .filter(|(n, k)| *n == nsname && k.starts_with(prefix))
                        .map(|(_, k)| k.clone())
                        .collect();
                    assert_eq!(all, expected, "{ctx}: list {prefix:?} limit {limit}");
                }
                _ => {
                    // Reopen: everything acknowledged is stored.
                    drop((kv, store));
                    store = open(dir.path());
                    kv = store.kv.clone();
                }
            }
        }
        // Final full comparison, after a purge pass.
        (store.purge)().await.unwrap();
        for ((nsname, k), (v, m)) in &model {
            let (t, n) = nsname.split_once('/').unwrap();
            let got = kv.get(&NamespaceId::new(t, n), k).await.unwrap().unwrap();
            assert_eq!(
                (&got.value, &got.metadata),
                (v, m),
                "{backend}: {nsname} {k}"
            );
        }
    }
    eprintln!(
        "kv model ({backend}): {done} rounds of 600 operations in {:.1} s, no failure (PERCH_KV_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn limits_are_errors_not_panics() {
    for (backend, open) in backends() {
        let dir = tempfile::tempdir().unwrap();
        let kv = open(dir.path()).kv;
        let ns = NamespaceId::new("t", "default");
        assert_eq!(
            kv.put(&ns, &"k".repeat(513), vec![], PutOptions::default())
                .await,
            Err(KvError::KeyTooLong(513, 512)),
            "{backend}"
        );
        assert_eq!(
            kv.put(&ns, "", vec![], PutOptions::default()).await,
            Err(KvError::EmptyKey),
            "{backend}"
        );
        let big = vec![0u8; (25 << 20) + 1];
        assert!(
            matches!(
                kv.put(&ns, "k", big, PutOptions::default()).await,
                Err(KvError::ValueTooLarge(..))
            ),
            "{backend}"
        );
        let metadata = Some("x".repeat(1025));
        let options = PutOptions {
            ttl: None,
            metadata,
            expires_at_ms: None,
        };
        assert!(
            matches!(
                kv.put(&ns, "k", vec![], options).await,
                Err(KvError::MetadataTooLarge(..))
            ),
            "{backend}"
        );
        assert_eq!(
            kv.list(&ns, "", None, 1001).await,
            Err(KvError::BadLimit(1000)),
            "{backend}"
        );
        assert_eq!(
            kv.list(&ns, "", Some("zz"), 10).await,
            Err(KvError::BadCursor),
            "{backend}"
        );
        assert!(kv.get(&ns, "k").await.unwrap().is_none(), "{backend}");
    }
}

#[tokio::test]
async fn counters_are_decimal_text_and_namespaces_are_separate() {
    for (backend, open) in backends() {
        let dir = tempfile::tempdir().unwrap();
        let kv = open(dir.path()).kv;
        counters_and_namespaces(kv.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
    }
}

async fn counters_and_namespaces(kv: &dyn KvStore) -> Result<(), KvError> {
    let a = NamespaceId::new("a", "default");
    let b = NamespaceId::new("b", "default");
    assert_eq!(kv.increment(&a, "hits", 40).await?, 40);
    assert_eq!(kv.increment(&a, "hits", 2).await?, 42);
    assert_eq!(kv.get(&a, "hits").await?.unwrap().value, b"42");
    assert!(kv.get(&b, "hits").await?.is_none());
    assert_eq!(kv.list(&b, "", None, 10).await?.keys.len(), 0);
    let many = kv
        .get_many(&a, &["hits".into(), "none".into(), "hits".into()])
        .await?;
    let values: Vec<_> = many.into_iter().map(|e| e.map(|e| e.value)).collect();
    assert_eq!(
        values,
        vec![Some(b"42".to_vec()), None, Some(b"42".to_vec())]
    );
    assert!(kv.create_namespace(&a).await?);
    assert!(!kv.create_namespace(&a).await?);
    assert!(kv.namespace_exists(&a).await?);
    assert!(!kv.namespace_exists(&b).await?);
    kv.create_namespace(&NamespaceId::new("a", "zeta")).await?;
    kv.create_namespace(&NamespaceId::new("ab", "x")).await?;
    assert_eq!(kv.list_namespaces("a").await?, vec!["default", "zeta"]);
    kv.delete_tenant("a").await?;
    assert!(kv.get(&a, "hits").await?.is_none());
    assert!(kv.list_namespaces("a").await?.is_empty());
    assert!(!kv.namespace_exists(&a).await?);
    assert_eq!(kv.list_namespaces("ab").await?, vec!["x"]);
    let overflow = vec![
        WriteOp::Increment {
            key: "n".into(),
            delta: i64::MAX,
        },
        WriteOp::Increment {
            key: "n".into(),
            delta: 1,
        },
    ];
    assert!(matches!(
        kv.write(&a, overflow).await,
        Err(KvError::NotACounter(_))
    ));
    let one = vec![WriteOp::Increment {
        key: "n".into(),
        delta: 1,
    }];
    assert_eq!(kv.write(&a, one).await?, vec![WriteResult::Counter(1)]);
    Ok(())
}

#[tokio::test]
async fn expired_keys_vanish_from_get_and_list_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("kv.redb")).unwrap());
    let kv = RedbKv::open_with(db, Duration::from_millis(50), 1 << 20).unwrap();
    let ns = NamespaceId::new("t", "default");
    let ttl = |d| PutOptions {
        ttl: Some(d),
        metadata: None,
        expires_at_ms: None,
    };
    kv.put(&ns, "short", b"x".to_vec(), ttl(Duration::from_millis(200)))
        .await
        .unwrap();
    kv.put(&ns, "long", b"y".to_vec(), ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let e = kv.get(&ns, "short").await.unwrap().unwrap();
    let now = perch_kv::now_ms();
    assert!(e.expires_at_ms.unwrap() > now && e.expires_at_ms.unwrap() <= now + 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(kv.get(&ns, "short").await.unwrap().is_none());
    let names: Vec<_> = kv
        .list(&ns, "", None, 10)
        .await
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, vec!["long"]);
    assert!(kv.stats().purged.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
