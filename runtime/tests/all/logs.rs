//! The invocation log sink: the guest's output per stream, the outcome and
//! the status of each request, from a real guest.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perch_runtime::{Invocation, InvocationRecord, Limits, LogSink, LogStream, Outcome, Runtime};

use crate::{get, invocation, runtime, store_guest, text};

/// Keeps every record.
#[derive(Default)]
struct Collect(Mutex<Vec<InvocationRecord>>);

impl LogSink for Collect {
    fn record(&self, record: InvocationRecord) {
        self.0.lock().unwrap().push(record);
    }
}

impl Collect {
    /// The one record, once it has arrived (it may follow the response).
    async fn one(&self) -> InvocationRecord {
        for _ in 0..500 {
            {
                let mut records = self.0.lock().unwrap();
                assert!(records.len() <= 1, "{records:?}");
                if let Some(record) = records.pop() {
                    return record;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no record within 10 s");
    }
}

struct Fixture {
    runtime: Arc<Runtime>,
    invocation: Invocation,
    sink: Arc<Collect>,
    _dir: tempfile::TempDir,
}

async fn fixture(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), None);
    let digest = store_guest(&runtime).await;
    let sink = Arc::new(Collect::default());
    let mut invocation = invocation(digest);
    invocation.limits = limits;
    invocation.log_sink = sink.clone();
    Fixture {
        runtime,
        invocation,
        sink,
        _dir: dir,
    }
}

fn lines(record: &InvocationRecord) -> Vec<(LogStream, &str)> {
    record
        .logs
        .iter()
        .map(|l| (l.stream, l.message.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_output_is_recorded_per_stream_with_its_outcome() {
    let f = fixture(Limits::default()).await;
    let response = f.runtime.handle(&f.invocation, get("/log")).await.unwrap();
    assert_eq!(text(response).await, (201, "logged".to_string()));
    let record = f.sink.one().await;
    assert_eq!(record.outcome, Outcome::Ok);
    assert_eq!(record.status, Some(201));
    assert_eq!(&*record.label, "t/f@1");
    assert_eq!(
        lines(&record),
        [
            (LogStream::Stdout, "first stdout line"),
            (LogStream::Stderr, "the stderr line"),
            (LogStream::Stdout, "second stdout line"),
        ]
    );
    assert!(!record.truncated);
    let now = perch_runtime_now_ms();
    assert!(
        record
            .logs
            .iter()
            .all(|l| l.time_ms <= now && l.time_ms + 60_000 > now)
    );
    assert!(record.cpu > Duration::ZERO && record.duration >= record.cpu);

    // Output written while the body streams (after the head) is in it too.
    let response = f
        .runtime
        .handle(&f.invocation, get("/stream?chunks=3"))
        .await
        .unwrap();
    assert_eq!(text(response).await, (200, "0;1;2;".to_string()));
    let record = f.sink.one().await;
    assert_eq!((record.outcome, record.status), (Outcome::Ok, Some(200)));
    let stdout = |m| (LogStream::Stdout, m);
    assert_eq!(
        lines(&record),
        [stdout("chunk 0"), stdout("chunk 1"), stdout("chunk 2")]
    );
}

fn perch_runtime_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_64_kib_is_truncated() {
    let f = fixture(Limits::default()).await;
    let response = f
        .runtime
        .handle(&f.invocation, get("/flood?kib=100"))
        .await
        .unwrap();
    assert_eq!(text(response).await.0, 200);
    let record = f.sink.one().await;
    assert_eq!(record.outcome, Outcome::Ok);
    assert!(record.truncated);
    let kept: usize = record.logs.iter().map(|l| l.message.len() + 1).sum();
    assert_eq!(kept, 64 * 1024);
    assert!(record.logs.iter().all(|l| l.stream == LogStream::Stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_recorded_with_their_outcome() {
    let limits = Limits {
        memory_bytes: 32 << 20,
        cpu: Duration::from_millis(50),
        wall: Duration::from_millis(500),
        ..Limits::default()
    };
    let f = fixture(limits).await;
    for (path, outcome) in [
        ("/trap", Outcome::Exception),
        ("/spin", Outcome::ExceededCpu),
        ("/alloc?mib=64", Outcome::ExceededMemory),
        ("/hang", Outcome::ExceededWall),
    ] {
        assert!(
            f.runtime.handle(&f.invocation, get(path)).await.is_err(),
            "{path}"
        );
        let record = f.sink.one().await;
        assert_eq!((record.outcome, record.status), (outcome, None), "{path}");
        if path == "/trap" {
            assert_eq!(lines(&record)[0], (LogStream::Stderr, "about to trap"));
            assert!(
                record.logs[1..]
                    .iter()
                    .any(|l| l.message.contains("deliberate trap"))
            );
        }
    }
    // Within its limits the same instance setup answers.
    let response = f
        .runtime
        .handle(&f.invocation, get("/alloc?mib=1"))
        .await
        .unwrap();
    assert_eq!(text(response).await.0, 200);
    assert_eq!(f.sink.one().await.outcome, Outcome::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_recorded_as_canceled() {
    let limits = Limits {
        wall: Duration::from_millis(800),
        ..Limits::default()
    };
    let f = fixture(limits).await;
    // Gone before the head.
    let pending = f.runtime.handle(&f.invocation, get("/hang"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pending)
            .await
            .is_err()
    );
    let record = f.sink.one().await;
    assert_eq!((record.outcome, record.status), (Outcome::Canceled, None));

    // Gone in the middle of the body.
    let response = f
        .runtime
        .handle(&f.invocation, get("/stream?chunks=5&ms=100"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "0;");
    drop(body);
    let record = f.sink.one().await;
    assert_eq!(
        (record.outcome, record.status),
        (Outcome::Canceled, Some(200))
    );
    assert_eq!(lines(&record)[0], (LogStream::Stdout, "chunk 0"));
}
