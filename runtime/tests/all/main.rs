//! perch-runtime's own tests with a real guest component (`tests/guest`,
//! built for wasm32-wasip2 on first use): the artifact store seam, the
//! invocation log sink, internal destinations, and the compiler child's
//! reasons.
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use perch_runtime::{ArtifactStore, Digest, Invocation, ResponseBody, Runtime, RuntimeConfig};

mod compile;
mod guest;
mod internal;
mod logs;
mod store;

/// A small runtime (a few pool slots) over `dir`, with `store` as its
/// artifact store when given.
fn runtime(dir: &Path, store: Option<Arc<dyn ArtifactStore>>) -> Arc<Runtime> {
    let mut config = RuntimeConfig::new(dir);
    config.max_instances = 8;
    config.warm_slots = 2;
    config.max_instance_memory = 256 << 20;
    if let Some(store) = store {
        config.artifact_store = store;
    }
    Arc::new(Runtime::new(config).unwrap())
}

/// Stores the test guest in `runtime` (on a blocking thread, as callers must).
async fn store_guest(runtime: &Arc<Runtime>) -> Digest {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || runtime.store_component(guest::bytes()))
        .await
        .unwrap()
        .unwrap()
}

fn get(path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(format!("http://fn.test{path}"))
        .body(Empty::new())
        .unwrap()
}

/// The status and the whole body as text.
async fn text(response: hyper::Response<ResponseBody>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// An invocation of `digest` labelled `t/f@1`.
fn invocation(digest: Digest) -> Invocation {
    Invocation::new(digest, perch_runtime::Limits::default(), "t/f@1")
}
