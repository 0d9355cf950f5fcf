//! Tests of `guest.rs`.
use std::io::Write;
use std::sync::Mutex;

use super::*;
use crate::Page;

const DETAIL: &str = "redb: I/O error reading page 42 of /srv/perch/perch.redb";

/// A store whose every call fails inside the storage layer.
struct Broken;

#[async_trait::async_trait]
impl KvStore for Broken {
    async fn get(&self, _: &NamespaceId, _: &str) -> Result<Option<Entry>, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn write(&self, _: &NamespaceId, _: Vec<WriteOp>) -> Result<Vec<WriteResult>, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn list(
        &self,
        _: &NamespaceId,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<Page, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn create_namespace(&self, _: &NamespaceId) -> Result<bool, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn namespace_exists(&self, _: &NamespaceId) -> Result<bool, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn list_namespaces(&self, _: &str) -> Result<Vec<String>, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn delete_tenant(&self, _: &str) -> Result<(), KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    async fn usage(&self, _: &str) -> Result<crate::KvUsage, KvError> {
        Err(KvError::Storage(DETAIL.into()))
    }
    fn namespace_known(&self, ns: &NamespaceId) -> bool {
        ns.name == "default"
    }
}

/// The server log, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the guest receives for `r`'s error.
fn guest_sees<T>(host: &mut KvHost<'_>, r: GResult<T>) -> String {
    let Err(e) = r else {
        panic!("the call succeeded")
    };
    match store::Host::convert_error(host, e) {
        Ok(store::Error::Other(m)) => m,
        Ok(other) => panic!("unexpected guest error {other:?}"),
        Err(trap) => panic!("trapped: {trap}"),
    }
}

#[tokio::test]
async fn storage_failures_reach_the_guest_without_their_detail() {
    let log = Log::default();
    let writer = log.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let access = KvAccess {
        store: Arc::new(Broken),
        tenant: "t".into(),
        bindings: HashMap::from([("OTHER".into(), "other".into())]),
        max_ops: 100,
        counters: Arc::default(),
    };
    let counters = access.counters.clone();
    let spans = Spans::default();
    let mut ctx = KvCtx::new(Arc::new(access), Some(Arc::new(spans.clone())));
    let mut table = ResourceTable::new();
    let mut host = KvHost(Some(KvCtxView {
        ctx: &mut ctx,
        table: &mut table,
    }));
    let bucket = store::Host::open(&mut host, "default".into())
        .await
        .unwrap_or_else(|_| panic!("a known namespace opens without the store"));
    let b = || Resource::<Bucket>::new_borrow(bucket.rep());

    let mut seen = Vec::new();
    let r = store::Host::open(&mut host, "OTHER".into()).await;
    seen.push(guest_sees(&mut host, r));
    let r = store::HostBucket::get(&mut host, b(), "k".into()).await;
    seen.push(guest_sees(&mut host, r));
    let r = store::HostBucket::set(&mut host, b(), "k".into(), b"v".to_vec()).await;
    seen.push(guest_sees(&mut host, r));
    let r = store::HostBucket::list_keys(&mut host, b(), None).await;
    seen.push(guest_sees(&mut host, r));
    let r = atomics::Host::increment(&mut host, b(), "n".into(), 1).await;
    seen.push(guest_sees(&mut host, r));
    let r = batch::Host::get_many(&mut host, b(), vec!["k".into()]).await;
    seen.push(guest_sees(&mut host, r));
    let r = ext::Host::scan(&mut host, b(), String::new(), None, 10).await;
    seen.push(guest_sees(&mut host, r));
    assert_eq!(seen, vec!["storage error"; 7]);

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches(DETAIL).count(), 7, "{log}");

    // Each call was counted by how it ended, and traced as one span.
    let counts: Vec<_> = counters
        .counts()
        .filter(|(_, ok, err)| ok + err > 0)
        .collect();
    assert_eq!(
        counts,
        [
            ("open", 1, 1),
            ("get", 0, 1),
            ("get_many", 0, 1),
            ("set", 0, 1),
            ("increment", 0, 1),
            ("list_keys", 0, 1),
            ("scan", 0, 1),
        ]
    );
    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 8);
    assert_eq!(spans[0], ("open", None));
    assert!(
        spans[1..]
            .iter()
            .all(|(_, e)| e.as_deref() == Some("storage error")),
        "{spans:?}"
    );
    assert_eq!(spans[2], ("get", Some("storage error".to_string())));
}

/// A span seen: the op and the error it ended with.
type Seen = (&'static str, Option<String>);

/// Records the spans of guest calls.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Seen>>>);

struct Span(Spans, KvOp);

impl CallTracer for Spans {
    fn start(&self, op: KvOp) -> Box<dyn CallSpan> {
        Box::new(Span(self.clone(), op))
    }
}

impl CallSpan for Span {
    fn end(self: Box<Self>, error: Option<&str>) {
        let Span(spans, op) = *self;
        spans
            .0
            .lock()
            .unwrap()
            .push((op.as_str(), error.map(str::to_string)));
    }
}

#[test]
fn request_errors_keep_their_text() {
    let e = GuestError::from(KvError::KeyTooLong(600, 512));
    assert!(matches!(e, GuestError::Other(m) if m == "key is 600 bytes; the limit is 512"));
    let e = GuestError::from(KvError::InvalidMetadata);
    assert!(matches!(e, GuestError::Other(m) if m == "metadata must be valid JSON"));
}
