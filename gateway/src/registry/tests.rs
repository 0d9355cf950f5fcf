//! The registry's rules, checked on every `RegistryStore`.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::store::memory::MemoryStore;
use super::*;
use crate::routing::Target;

/// A registry over `store`, as a node would open it.
fn open_on(store: Arc<dyn RegistryStore>) -> Registry {
    Registry::open(
        store,
        crate::limits::DEFAULT_LIMITS,
        Arc::new(SecretBox::new(&[7; 32])),
    )
    .unwrap()
    .with_max_versions(4)
}

fn redb_store(dir: &Path) -> Arc<dyn RegistryStore> {
    let db = redb::Database::create(dir.join("registry.redb")).unwrap();
    Arc::new(RedbStore::open(Arc::new(db)).unwrap())
}

/// Every store implementation the rules are checked on. A new store adds
/// itself here and inherits every test below that loops over `stores`.
fn stores(dir: &Path) -> Vec<(&'static str, Arc<dyn RegistryStore>)> {
    let mut stores: Vec<(&'static str, Arc<dyn RegistryStore>)> = vec![
        ("redb", redb_store(dir)),
        ("memory", Arc::new(MemoryStore::default())),
    ];
    if let Some(url) = super::pg_store::test_database() {
        stores.push(("postgres", Arc::new(PgStore::open(&url).unwrap())));
    }
    stores
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after
/// `seconds`.
fn wait_until(what: &str, seconds: u64, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Two nodes on one PostgreSQL database: each commit of one is announced
/// (NOTIFY) to the other, which installs it; two changes computed on the
/// same revision get one commit and one clean retry; a newer schema is
/// refused.
#[test]
fn two_nodes_share_a_postgres_registry() {
    let Some(url) = super::pg_store::test_database() else {
        return;
    };
    let node = || -> Arc<dyn RegistryStore> { Arc::new(PgStore::open(&url).unwrap()) };
    let (sa, sb) = (node(), node());
    let a = Arc::new(open_on(sa.clone()));
    let b = Arc::new(open_on(sb.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(b.clone().follow());
    a.put_tenant("t", None).unwrap();
    a.add_version("t", "f", &digest(5), 0, true).unwrap();
    a.put_route("t", "f.test", "f").unwrap();
    wait_until("b sees a's route", 10, || {
        b.routes().lookup("f.test", "/").is_some()
    });
    assert_eq!(b.revision(), a.revision());
    // b's listening connection dies: b reconnects and catches up with what
    // a committed meanwhile, without a restart.
    let mut admin =
        perch_pg::postgres::Client::connect(&url.url, perch_pg::postgres::NoTls).unwrap();
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'perch-registry-listen' AND datname = current_database()",
            &[],
        )
        .unwrap();
    assert_eq!(killed.len(), 2, "one listener per store");
    a.put_route("t", "g.test", "f").unwrap();
    wait_until("b catches up after losing its connection", 20, || {
        b.routes().lookup("g.test", "/").is_some()
    });
    // Both stores at the same base: one wins, the other conflicts.
    let base = sa.load().unwrap().revision;
    let tenant = |n: &str| {
        Change::PutTenant(Tenant {
            name: n.into(),
            domains: vec![],
            created_at: 0,
            quotas: Quotas::default(),
            verifications: Default::default(),
        })
    };
    assert_eq!(sa.commit(base, &[tenant("x")]), Ok(base + 1));
    assert!(matches!(
        sb.commit(base, &[tenant("y")]),
        Err(StoreError::Conflict { .. })
    ));
    // Through the registries the loser is recomputed, never lost.
    let (a2, b2) = (a.clone(), b.clone());
    let one = std::thread::spawn(move || a2.add_version("t", "f", &digest(6), 0, true).unwrap());
    let two = std::thread::spawn(move || b2.add_version("t", "f", &digest(7), 0, true).unwrap());
    let mut numbers = [one.join().unwrap().version, two.join().unwrap().version];
    numbers.sort();
    assert_eq!(numbers, [2, 3]);
    // A database from a newer perch is refused.
    admin
        .execute("UPDATE perch_schema SET version = version + 1", &[])
        .unwrap();
    let refused = PgStore::open(&url).err().expect("refused");
    assert!(refused.to_string().contains("upgrade perch"), "{refused}");
    drop(rt);
}

/// Host → (tenant, function, deployed versions, metric label): what a
/// snapshot routes where.
type View = BTreeMap<String, (String, String, Vec<u32>, String)>;

fn view(t: &RouteTable) -> View {
    let row = |t: &Arc<Target>| {
        let versions = t.versions.iter().map(|d| d.version).collect();
        let label = t.metric_function.to_string();
        (t.tenant.clone(), t.function.clone(), versions, label)
    };
    t.entries()
        .iter()
        .map(|(p, t)| (p.clone(), row(t)))
        .collect()
}

/// What a snapshot built from scratch out of the current state routes.
fn rebuilt(r: &Registry) -> View {
    let state = r.lock().state.clone();
    let scratch = Registry {
        revisions: r.store.subscribe(),
        store: r.store.clone(),
        secrets: r.secrets.clone(),
        kv: std::sync::OnceLock::new(),
        containers: std::sync::OnceLock::new(),
        directory: Arc::default(),
        inner: Mutex::new(Inner::default()),
        routes: ArcSwap::from_pointee(RouteTable::default()),
        gates: Mutex::new(HashMap::new()),
        holds: Mutex::default(),
        usage: Arc::default(),
        kv_counters: Arc::default(),
        kv_quotas: Arc::default(),
        defaults: r.defaults,
        max_versions: r.max_versions,
        quota_defaults: r.quota_defaults,
        certificates: tokio::sync::watch::channel(0).0,
        installs: tokio::sync::watch::channel(0).0,
        verify_hosts: r.verify_hosts,
    };
    scratch.republish(&mut scratch.lock(), state, 0);
    view(&scratch.routes())
}

#[derive(Debug, Clone)]
enum Op {
    Tenant(usize),
    DeleteTenant(usize),
    Version(usize, usize, u8),
    Stage(usize, usize, u8),
    Split(usize, usize),
    Settings(usize, usize),
    DeleteFunction(usize, usize),
    Route(usize, usize, usize),
    DeleteRoute(usize, usize),
}

const TENANTS: [&str; 3] = ["a", "b", "c"];
const FUNCTIONS: [&str; 3] = ["f", "g", "h"];
const HOSTS: [&str; 8] = [
    "x.test",
    "y.x.test",
    "*.x.test",
    "*.y.x.test",
    "z.test",
    "*.z.test",
    "x.test/api/*",
    "*.z.test/health",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize).prop_map(Op::Tenant),
        (0..3usize).prop_map(Op::DeleteTenant),
        (0..3usize, 0..3usize, any::<u8>()).prop_map(|(t, f, d)| Op::Version(t, f, d)),
        (0..3usize, 0..3usize, any::<u8>()).prop_map(|(t, f, d)| Op::Stage(t, f, d)),
        (0..3usize, 0..3usize).prop_map(|(t, f)| Op::Split(t, f)),
        (0..3usize, 0..3usize).prop_map(|(t, f)| Op::Settings(t, f)),
        (0..3usize, 0..3usize).prop_map(|(t, f)| Op::DeleteFunction(t, f)),
        (0..3usize, 0..8usize, 0..3usize).prop_map(|(t, h, f)| Op::Route(t, h, f)),
        (0..3usize, 0..8usize).prop_map(|(t, h)| Op::DeleteRoute(t, h)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// After any sequence of changes (refused ones included), the
    /// incrementally maintained snapshot routes exactly like one rebuilt
    /// from the whole state.
    #[test]
    fn incremental_snapshot_matches_a_full_rebuild(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        for (_, store) in stores(dir.path()) {
        let r = open_on(store);
        for op in ops.clone() {
            let _ = match op {
                Op::Tenant(t) => r.put_tenant(TENANTS[t], None).map(drop),
                Op::DeleteTenant(t) => r.delete_tenant(TENANTS[t]).map(drop),
                Op::Version(t, f, d) => r
                    .add_version(TENANTS[t], FUNCTIONS[f], &format!("{d:064x}"), 0, true)
                    .map(drop),
                Op::Stage(t, f, d) => r
                    .add_version(TENANTS[t], FUNCTIONS[f], &format!("{d:064x}"), 0, false)
                    .map(drop),
                Op::Split(t, f) => match r.get_function(TENANTS[t], FUNCTIONS[f]) {
                    Ok(func) if func.versions.len() >= 2 => {
                        let n = func.versions.len();
                        let split = |v: &Version, percent| Split { version: v.version, percent };
                        r.set_deployment(
                            TENANTS[t],
                            FUNCTIONS[f],
                            vec![split(&func.versions[n - 2], 70), split(&func.versions[n - 1], 30)],
                            Some("cookie:uid".into()),
                        )
                        .map(drop)
                    }
                    _ => Ok(()),
                },
                Op::Settings(t, f) => r
                    .put_settings(TENANTS[t], FUNCTIONS[f], true, |s| {
                        s.vars.insert("N".into(), "1".into());
                        Ok(())
                    })
                    .map(drop),
                Op::DeleteFunction(t, f) => r.delete_function(TENANTS[t], FUNCTIONS[f]).map(drop),
                Op::Route(t, h, f) => r.put_route(TENANTS[t], HOSTS[h], FUNCTIONS[f]).map(drop),
                Op::DeleteRoute(t, h) => r.delete_route(TENANTS[t], HOSTS[h]),
            };
            prop_assert_eq!(view(&r.routes()), rebuilt(&r));
        }
        }
    }
}

#[test]
fn exact_host_overlap_finds_covering_wildcards_only() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let r = open_on(store);
        let digest = format!("{:064x}", 1);
        for t in ["a", "b"] {
            r.put_tenant(t, None).unwrap();
            r.add_version(t, "f", &digest, 0, true).unwrap();
        }
        r.put_route("a", "*.x.test", "f").unwrap();
        r.put_route("a", "one.test", "f").unwrap();
        assert!(matches!(
            r.put_route("b", "deep.y.x.test", "f"),
            Err(RegistryError::HostTaken(_))
        ));
        assert!(matches!(
            r.put_route("b", "one.test", "f"),
            Err(RegistryError::HostTaken(_))
        ));
        // Not below the wildcard: the suffix itself and an unrelated host.
        r.put_route("b", "x.test", "f").unwrap();
        r.put_route("b", "two.test", "f").unwrap();
        assert_eq!(r.routes().lookup("x.test", "/").unwrap().tenant, "b");
        assert_eq!(
            r.routes().lookup("q.x.test", "/").unwrap().tenant,
            "a",
            "{name}"
        );
    }
}

#[test]
fn records_and_revision_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("r.redb")).unwrap());
    {
        let r = open_on(Arc::new(RedbStore::open(db.clone()).unwrap()));
        r.put_tenant("a", Some(vec!["*.a.test".into()])).unwrap();
        r.add_version("a", "f", &format!("{:064x}", 3), 0, true)
            .unwrap();
        r.put_route("a", "x.a.test", "f").unwrap();
        assert_eq!(r.revision(), 3);
    }
    let r = open_on(Arc::new(RedbStore::open(db).unwrap()));
    assert_eq!(r.revision(), 3);
    assert_eq!(r.list_tenants()[0].domains, vec!["*.a.test".to_string()]);
    assert_eq!(r.get_function("a", "f").unwrap().active_version, 1);
    assert_eq!(r.routes().lookup("x.a.test", "/").unwrap().function, "f");
}

#[test]
fn commits_are_compare_and_set_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let t = |n: &str| {
            Change::PutTenant(Tenant {
                name: n.into(),
                domains: vec![],
                created_at: 0,
                quotas: Quotas::default(),
                verifications: Default::default(),
            })
        };
        assert_eq!(store.commit(0, &[t("a")]), Ok(1), "{name}");
        assert_eq!(
            store.commit(0, &[t("b")]),
            Err(StoreError::Conflict {
                base: 0,
                current: 1
            }),
            "{name}"
        );
        assert_eq!(store.commit(1, &[]), Ok(1), "{name}: empty batch");
        let loaded = store.load().unwrap();
        assert_eq!(loaded.revision, 1, "{name}");
        assert_eq!(
            loaded.records.tenants.len(),
            1,
            "{name}: nothing of the refused batch"
        );
    }
}

/// Two registries over one store are two nodes. When a commit of one has
/// not been announced to the other yet, the other's change (computed on a
/// stale state) loses the compare-and-set, is recomputed on the reloaded
/// state and retried: nothing is lost and version numbers stay unique.
#[test]
fn a_lost_commit_race_is_recomputed_not_lost() {
    let store: Arc<dyn RegistryStore> = Arc::new(MemoryStore::silent());
    let digest = format!("{:064x}", 9);
    let a = open_on(store.clone());
    a.put_tenant("t", None).unwrap();
    let b = open_on(store.clone());
    assert_eq!(
        a.add_version("t", "f", &digest, 0, true).unwrap().version,
        1
    );
    assert_eq!(
        b.add_version("t", "f", &digest, 0, true).unwrap().version,
        2
    );
    assert_eq!(b.get_function("t", "f").unwrap().versions.len(), 2);
    assert_eq!(
        a.add_version("t", "f", &digest, 0, true).unwrap().version,
        3
    );
    let loaded = store.load().unwrap();
    assert_eq!(loaded.revision, 4);
    assert_eq!(loaded.records.functions[0].versions.len(), 3);
}

/// With announcements, a node applies the other's commits before running
/// its rules, so it never refuses a change on a stale state.
#[test]
fn announced_commits_are_seen_before_the_rules_run() {
    let store: Arc<dyn RegistryStore> = Arc::new(MemoryStore::default());
    let a = open_on(store.clone());
    let b = open_on(store);
    a.put_tenant("t", None).unwrap();
    assert_eq!(
        b.add_version("t", "f", &format!("{:064x}", 1), 0, true)
            .unwrap()
            .version,
        1
    );
}

#[tokio::test]
async fn a_follower_installs_commits_made_by_another_registry() {
    let store: Arc<dyn RegistryStore> = Arc::new(MemoryStore::default());
    let a = open_on(store.clone());
    let b = Arc::new(open_on(store));
    tokio::spawn(b.clone().follow());
    a.put_tenant("t", None).unwrap();
    a.add_version("t", "f", &format!("{:064x}", 5), 0, true)
        .unwrap();
    a.put_route("t", "f.test", "f").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.routes().lookup("f.test", "/").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "b never saw a's route"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(b.revision(), a.revision());
    assert!(b.tenant_exists("t"));
}

fn digest(n: u8) -> String {
    format!("{n:064x}")
}

#[test]
fn staging_deployments_and_rollback_targets() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let r = open_on(store);
        r.put_tenant("t", None).unwrap();
        assert!(r.add_version("t", "f", &digest(1), 0, true).unwrap().active);
        let staged = r.add_version("t", "f", &digest(2), 0, false).unwrap();
        assert_eq!((staged.version, staged.active), (2, false), "{name}");
        let f = r.get_function("t", "f").unwrap();
        assert_eq!(f.active_version, 1, "{name}: staging leaves the deployment");
        // A staged upload inherits the active version's settings.
        r.put_settings("t", "f", true, |s| {
            s.vars.insert("A".into(), "1".into());
            Ok(())
        })
        .unwrap();
        let v4 = r.add_version("t", "f", &digest(4), 0, false).unwrap();
        assert_eq!(
            r.get_function("t", "f")
                .unwrap()
                .version(v4.version)
                .unwrap()
                .settings
                .vars["A"],
            "1"
        );

        let f = r
            .set_deployment(
                "t",
                "f",
                vec![
                    Split {
                        version: 4,
                        percent: 10,
                    },
                    Split {
                        version: 1,
                        percent: 90,
                    },
                ],
                None,
            )
            .unwrap();
        let d = f.deployment.as_ref().unwrap();
        assert_eq!(
            d.versions.iter().map(|s| s.version).collect::<Vec<_>>(),
            [1, 4],
            "{name}: ascending"
        );
        assert_eq!(f.active_version, 1);
        assert_eq!(d.previous.as_ref().unwrap().versions[0].version, 3);
        assert!(d.previous.as_ref().unwrap().previous.is_none());

        // Bad deployments change nothing.
        let bad = [
            vec![],
            vec![
                Split {
                    version: 1,
                    percent: 50,
                },
                Split {
                    version: 1,
                    percent: 50,
                },
            ],
            vec![
                Split {
                    version: 1,
                    percent: 0,
                },
                Split {
                    version: 4,
                    percent: 100,
                },
            ],
            vec![
                Split {
                    version: 1,
                    percent: 60,
                },
                Split {
                    version: 4,
                    percent: 60,
                },
            ],
            (1..=5)
                .map(|v| Split {
                    version: v,
                    percent: 20,
                })
                .collect(),
        ];
        for splits in bad {
            let e = r
                .set_deployment("t", "f", splits.clone(), None)
                .unwrap_err();
            assert!(
                matches!(e, RegistryError::InvalidDeployment(_)),
                "{name}: {splits:?} {e}"
            );
        }
        let e = r
            .set_deployment(
                "t",
                "f",
                vec![Split {
                    version: 9,
                    percent: 100,
                }],
                None,
            )
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
        let e = r
            .set_deployment(
                "t",
                "f",
                vec![Split {
                    version: 1,
                    percent: 100,
                }],
                Some("query:x".into()),
            )
            .unwrap_err();
        assert!(matches!(e, RegistryError::InvalidDeployment(_)), "{e}");
        assert_eq!(r.get_function("t", "f").unwrap(), f, "{name}: unchanged");
    }
}

#[test]
fn retention_drops_the_oldest_undeployed_version_only() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let r = open_on(store).with_max_versions(3);
        r.put_tenant("t", None).unwrap();
        for n in 1..=3 {
            assert!(
                r.add_version("t", "f", &digest(n), 0, true)
                    .unwrap()
                    .dropped
                    .is_empty()
            );
        }
        // Deployed: 3; previous: 2. A fourth drops 1.
        let v4 = r.add_version("t", "f", &digest(4), 0, false).unwrap();
        assert_eq!(v4.dropped, [digest(1)], "{name}");
        let kept = |r: &Registry| {
            r.get_function("t", "f")
                .unwrap()
                .versions
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&r), [2, 3, 4]);
        // Staged again: 2 and 3 are protected, 4 is the oldest free one;
        // numbers are never reused.
        let v5 = r.add_version("t", "f", &digest(5), 0, false).unwrap();
        assert_eq!(v5.version, 5);
        assert_eq!(
            (v5.dropped, kept(&r)),
            (vec![digest(4)], vec![2, 3, 5]),
            "{name}"
        );
        // Activating: 3 becomes `previous`, 2 is no longer protected.
        let v6 = r.add_version("t", "f", &digest(6), 0, true).unwrap();
        assert_eq!(
            (v6.dropped, kept(&r)),
            (vec![digest(2)], vec![3, 5, 6]),
            "{name}"
        );
        // Every kept version deployed: 409, nothing changes.
        let split = |version, percent| Split { version, percent };
        r.set_deployment(
            "t",
            "f",
            vec![split(3, 34), split(5, 33), split(6, 33)],
            None,
        )
        .unwrap();
        let e = r.add_version("t", "f", &digest(7), 0, false).unwrap_err();
        assert!(
            matches!(e, RegistryError::TooManyVersions(_)),
            "{name}: {e}"
        );
        assert_eq!(kept(&r), [3, 5, 6]);
        // Which digests are still used, by anyone.
        r.add_version("t", "g", &digest(2), 0, true).unwrap();
        assert_eq!(
            r.unreferenced(&[digest(1), digest(2), digest(3), digest(9)]),
            [digest(1), digest(9)]
        );
        let gone = r.delete_function("t", "f").unwrap();
        assert_eq!(gone, [digest(3), digest(5), digest(6)]);
    }
}

#[test]
fn records_from_before_deployments_are_read_as_deployed() {
    let mut f = Function {
        tenant: "t".into(),
        name: "f".into(),
        active_version: 2,
        versions: vec![],
        latest_version: 2,
        deployment: None,
        created: 0,
    };
    let old: Function = serde_json::from_str(
        r#"{"tenant":"t","name":"f","active_version":2,"versions":[{"version":2,"digest":"ab","created_at":5}]}"#,
    )
    .unwrap();
    assert_eq!(old.versions[0].world, WORLD_P2);
    let mut old = old;
    old.upgrade();
    let d = old.deployment.unwrap();
    assert_eq!(
        (d.versions[0].version, d.versions[0].percent, d.updated_at),
        (2, 100, 5)
    );
    f.upgrade();
    assert!(f.deployment.is_some());
}

#[test]
fn an_expired_token_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in stores(dir.path()) {
        let r = open_on(store);
        r.put_tenant("t", None).unwrap();
        let token = |hash: &str, expires_at: Option<u64>| TokenRecord {
            id: hash.into(),
            tenant: "t".into(),
            scopes: vec!["*".into()],
            created_at: 1,
            hash: hash.into(),
            name: Some("ci".into()),
            expires_at,
        };
        r.add_token(token("past", Some(now() - 1))).unwrap();
        r.add_token(token("future", Some(now() + 3600))).unwrap();
        r.add_token(token("never", None)).unwrap();
        assert!(r.lookup_token("past").is_none(), "{name}");
        assert!(r.lookup_token("future").is_some(), "{name}");
        assert_eq!(r.lookup_token("never").unwrap().name.as_deref(), Some("ci"));
        // Still listed (with its expiry) until it is revoked.
        assert_eq!(r.list_tokens("t").unwrap().len(), 3);
    }
}

/// A tenant's first 50 functions (by creation, then name) have metric
/// series of their own, the rest are `_other`; deleting one of the first
/// gives the next its own label, as a rebuild from scratch would.
#[test]
fn functions_past_the_first_fifty_share_the_other_label() {
    let r = open_on(Arc::new(MemoryStore::default()));
    r.put_tenant("t", None).unwrap();
    for i in 0..52 {
        let name = format!("f{i:02}");
        r.add_version("t", &name, &format!("{i:064x}"), 0, true)
            .unwrap();
        r.put_route("t", &format!("{name}.test"), &name).unwrap();
    }
    let label = |host: &str| view(&r.routes())[host].3.clone();
    assert_eq!(label("f00.test"), "f00");
    assert_eq!(label("f49.test"), "f49");
    assert_eq!(label("f50.test"), "_other");
    assert_eq!(label("f51.test"), "_other");
    assert_eq!(&*r.metric_function("t", "f51"), "_other");
    r.delete_function("t", "f03").unwrap();
    assert_eq!(label("f50.test"), "f50");
    assert_eq!(label("f51.test"), "_other");
    assert_eq!(view(&r.routes()), rebuilt(&r));
}
