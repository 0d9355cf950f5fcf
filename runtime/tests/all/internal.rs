//! Internal destinations: an outbound request the resolver takes is
//! answered by it, without egress, and counts toward the budget.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use perch_runtime::{
    HttpError, InternalDestinations, OutboundPolicy, OutboundResponse, RequestOptions, Route,
    WasiBody,
};

use crate::{get, invocation, runtime, store_guest, text};

/// Serves `http://x.internal/` itself; hands everything else back.
#[derive(Default)]
struct Inside {
    asked: AtomicUsize,
}

impl InternalDestinations for Inside {
    fn route(&self, request: http::Request<WasiBody>, options: Option<RequestOptions>) -> Route {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if request.uri().host() != Some("x.internal") {
            return Route::External(request, options);
        }
        let path = request.uri().path().to_string();
        Route::Internal(Box::pin(async move {
            // Read the request body to its end, as a real server would:
            // the guest's writes to it fail once it is dropped.
            request.into_body().collect().await?;
            let body = Full::new(Bytes::from(format!("served inside at {path}")))
                .map_err(|never| match never {})
                .boxed_unsync();
            let response: OutboundResponse = (
                http::Response::new(body),
                Box::new(async { Ok::<(), HttpError>(()) }),
            );
            Ok(response)
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_answer_before_egress_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), None);
    let inside = Arc::new(Inside::default());
    let mut inv = invocation(store_guest(&runtime).await);
    inv.internal = Some(inside.clone());
    inv.outbound = Arc::new(OutboundPolicy {
        // The allow-list is the egress policy's: internal names skip it.
        allow: vec!["example.com".into()],
        max_requests: 2,
    });

    let fetch = |n: u32, url: &str| get(&format!("/fetch?n={n}&url={url}"));
    let response = runtime
        .handle(&inv, fetch(3, "http://x.internal/a"))
        .await
        .unwrap();
    let (status, body) = text(response).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[..2],
        ["200 served inside at /a", "200 served inside at /a"]
    );
    // The third is over the budget: refused before the resolver is asked.
    // (wstd reports the refusal as the failed write of the request body.)
    assert!(lines[2].starts_with("error:"), "{body}");
    assert_eq!(inside.asked.load(Ordering::Relaxed), 2);

    // A request handed back goes through the egress policy (here: refused
    // by the allow-list), still counted.
    let response = runtime
        .handle(&inv, fetch(1, "http://127.0.0.1:9/"))
        .await
        .unwrap();
    let (_, body) = text(response).await;
    assert!(body.starts_with("error:"), "{body}");
    assert_eq!(inside.asked.load(Ordering::Relaxed), 3);

    // Without internal destinations, the name goes to egress (and fails).
    inv.internal = None;
    let response = runtime
        .handle(&inv, fetch(1, "http://x.internal/a"))
        .await
        .unwrap();
    let (_, body) = text(response).await;
    assert!(body.starts_with("error:"), "{body}");
}
