//! Start-up warm-up: load the components of routed functions into the
//! component cache so their first requests find them ready.
use std::sync::Arc;

use crate::app::App;

/// Loads the components of routed functions into the component cache after
/// a start (newest versions first, up to the cache's capacity), one at a time
/// on a blocking thread, so that their first requests find them ready. An
/// artifact compiled by another engine version is recompiled here rather
/// than on a request. Uploads are not held up: it takes one of the two
/// compile slots only while loading.
pub(super) async fn warm_up(app: Arc<App>) {
    let started = std::time::Instant::now();
    let registry = app.registry.clone();
    let Ok(digests) = tokio::task::spawn_blocking(move || registry.routed_digests()).await else {
        return;
    };
    let capacity = usize::try_from(app.runtime.cache_capacity()).unwrap_or(usize::MAX);
    let (mut loaded, mut failed) = (0usize, 0usize);
    for digest in digests.into_iter().take(capacity) {
        let Ok(digest) = digest.parse::<perch_runtime::Digest>() else {
            continue;
        };
        let Ok(_slot) = app.compile_slots.acquire().await else {
            return;
        };
        let runtime = app.runtime.clone();
        match tokio::task::spawn_blocking(move || runtime.preload(&digest)).await {
            Ok(Ok(true)) => loaded += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                failed += 1;
                tracing::warn!(%digest, error = %e, "warm-up could not load a component")
            }
            Err(_) => return,
        }
    }
    tracing::info!(
        loaded,
        failed,
        ms = started.elapsed().as_millis() as u64,
        "component cache warmed up"
    );
}
