//! The redb backend against an in-memory model: random sequences of put,
//! get, delete, list, increment, compare-and-swap and TTL, seeded so a
//! failure reproduces (`PERCH_KV_SEED=<n>`).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use perch_kv::{
    Entry, KvBackend, KvError, KvLimits, NamespaceId, PutOptions, RedbKv, WriteOp, WriteResult,
};

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

fn open(dir: &tempfile::TempDir) -> RedbKv {
    let db = Arc::new(redb::Database::create(dir.path().join("kv.redb")).unwrap());
    // A long purge interval: expiry must hold on reads alone.
    RedbKv::open_with(db, KvLimits::default(), Duration::from_secs(3600), 1 << 20).unwrap()
}

fn key(rng: &mut Rng) -> String {
    const PARTS: [&str; 5] = ["a", "b", "user/", "user/1", "z"];
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

#[test]
fn random_operations_agree_with_the_model() {
    let seed: u64 = std::env::var("PERCH_KV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
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
        let mut kv = open(&dir);
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
            let ctx = format!("seed {seed} round {round} step {step}");
            match rng.below(10) {
                0 | 1 => {
                    let value = format!("v{}", rng.below(1000)).into_bytes();
                    let metadata =
                        (rng.below(3) == 0).then(|| format!("{{\"n\":{}}}", rng.below(9)));
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
                        },
                    )
                    .unwrap();
                    if short_ttl {
                        std::thread::sleep(Duration::from_millis(3));
                        model.remove(&mk(&k));
                    } else {
                        model.insert(mk(&k), (value, metadata));
                    }
                }
                2 => {
                    kv.delete(ns, &k).unwrap();
                    model.remove(&mk(&k));
                }
                3 | 4 => {
                    let got = kv
                        .get(ns, &k)
                        .unwrap()
                        .map(|e: Entry| (e.value, e.metadata));
                    assert_eq!(got, model.get(&mk(&k)).cloned(), "{ctx}: get {k}");
                    assert_eq!(
                        kv.exists(ns, &k).unwrap(),
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
                    let got = kv.increment(ns, &k, delta);
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
                        .unwrap();
                    model.insert(mk(&k2), (b"not a number".to_vec(), None));
                    let r = kv.write(
                        ns,
                        vec![
                            WriteOp::Put {
                                key: k.clone(),
                                value: b"batched".to_vec(),
                                options: PutOptions::default(),
                            },
                            WriteOp::Increment {
                                key: k2.clone(),
                                delta: 1,
                            },
                        ],
                    );
                    if k == k2 {
                        // The put replaced the text: the increment sees "batched", still not a number.
                        assert!(r.is_err());
                    } else {
                        assert!(matches!(r, Err(KvError::NotACounter(_))), "{ctx}: {r:?}");
                    }
                    let got = kv.get(ns, &k).unwrap().map(|e| (e.value, e.metadata));
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
                        let page = kv.list(ns, prefix, cursor.as_deref(), limit).unwrap();
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
                    // Reopen: everything acknowledged is on disk.
                    drop(kv);
                    kv = open(&dir);
                }
            }
        }
        // Final full comparison, after a purge pass.
        kv.purge_expired().unwrap();
        for ((nsname, k), (v, m)) in &model {
            let (t, n) = nsname.split_once('/').unwrap();
            let got = kv.get(&NamespaceId::new(t, n), k).unwrap().unwrap();
            assert_eq!((&got.value, &got.metadata), (v, m));
        }
    }
    eprintln!(
        "kv model: {done} rounds of 600 operations in {:.1} s, no failure (PERCH_KV_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn limits_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let ns = NamespaceId::new("t", "default");
    assert_eq!(
        kv.put(&ns, &"k".repeat(513), vec![], PutOptions::default()),
        Err(KvError::KeyTooLong(513, 512))
    );
    assert_eq!(
        kv.put(&ns, "", vec![], PutOptions::default()),
        Err(KvError::EmptyKey)
    );
    let big = vec![0u8; (25 << 20) + 1];
    assert!(matches!(
        kv.put(&ns, "k", big, PutOptions::default()),
        Err(KvError::ValueTooLarge(..))
    ));
    let meta = Some("x".repeat(1025));
    assert!(matches!(
        kv.put(
            &ns,
            "k",
            vec![],
            PutOptions {
                ttl: None,
                metadata: meta
            }
        ),
        Err(KvError::MetadataTooLarge(..))
    ));
    assert_eq!(kv.list(&ns, "", None, 1001), Err(KvError::BadLimit(1000)));
    assert_eq!(kv.list(&ns, "", Some("zz"), 10), Err(KvError::BadCursor));
    assert!(kv.get(&ns, "k").unwrap().is_none());
}

#[test]
fn counters_are_decimal_text_and_namespaces_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir);
    let a = NamespaceId::new("a", "default");
    let b = NamespaceId::new("b", "default");
    assert_eq!(kv.increment(&a, "hits", 40).unwrap(), 40);
    assert_eq!(kv.increment(&a, "hits", 2).unwrap(), 42);
    assert_eq!(kv.get(&a, "hits").unwrap().unwrap().value, b"42");
    assert!(kv.get(&b, "hits").unwrap().is_none());
    assert_eq!(kv.list(&b, "", None, 10).unwrap().keys.len(), 0);
    assert!(kv.create_namespace(&a).unwrap());
    assert!(!kv.create_namespace(&a).unwrap());
    kv.create_namespace(&NamespaceId::new("a", "zeta")).unwrap();
    kv.create_namespace(&NamespaceId::new("ab", "x")).unwrap();
    assert_eq!(kv.list_namespaces("a").unwrap(), vec!["default", "zeta"]);
    kv.delete_tenant("a").unwrap();
    assert!(kv.get(&a, "hits").unwrap().is_none());
    assert!(kv.list_namespaces("a").unwrap().is_empty());
    assert_eq!(kv.list_namespaces("ab").unwrap(), vec!["x"]);
    let r = kv.write(
        &a,
        vec![
            WriteOp::Increment {
                key: "n".into(),
                delta: i64::MAX,
            },
            WriteOp::Increment {
                key: "n".into(),
                delta: 1,
            },
        ],
    );
    assert!(matches!(r, Err(KvError::NotACounter(_))));
    assert_eq!(
        kv.write(
            &a,
            vec![WriteOp::Increment {
                key: "n".into(),
                delta: 1
            }]
        )
        .unwrap(),
        vec![WriteResult::Counter(1)]
    );
}

#[test]
fn expired_keys_vanish_from_get_and_list_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("kv.redb")).unwrap());
    let kv =
        RedbKv::open_with(db, KvLimits::default(), Duration::from_millis(50), 1 << 20).unwrap();
    let ns = NamespaceId::new("t", "default");
    kv.put(
        &ns,
        "short",
        b"x".to_vec(),
        PutOptions {
            ttl: Some(Duration::from_millis(200)),
            metadata: None,
        },
    )
    .unwrap();
    kv.put(
        &ns,
        "long",
        b"y".to_vec(),
        PutOptions {
            ttl: Some(Duration::from_secs(60)),
            metadata: None,
        },
    )
    .unwrap();
    let e = kv.get(&ns, "short").unwrap().unwrap();
    let now = perch_kv::now_ms();
    assert!(e.expires_at_ms.unwrap() > now && e.expires_at_ms.unwrap() <= now + 200);
    std::thread::sleep(Duration::from_millis(400));
    assert!(kv.get(&ns, "short").unwrap().is_none());
    let names: Vec<_> = kv
        .list(&ns, "", None, 10)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, vec!["long"]);
    assert!(kv.stats().purged.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
