//! A tenant's container images: upload a `docker save` / `podman save`
//! archive (streamed to the node's image directory under the size cap,
//! checked by Perch, then loaded into the engine), list them, show and
//! delete one (409 `image_in_use` while a kept version runs it). The
//! engine's own error text never reaches the client.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use perch_containers::archive::archive_path;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::common::{Resp, TenantCall, blocking, storage_unavailable};
use crate::app::App;
use crate::http::{
    declared_length, error, internal_error, json, media_type, method_not_allowed, no_content,
    off_thread, tri,
};
use crate::registry::{ImageRecord, now};

/// Bodies read and dropped before an early refusal is answered; past this
/// the connection closes after the answer instead.
const DRAIN_BYTES: usize = 16 << 20;

/// An answer given before the request body was read. The body is read and
/// dropped first (up to 16 MiB, for 5 s), so the client, which may still be
/// sending it, gets the answer rather than a broken pipe; a larger or
/// slower body closes the connection after the answer, so it is never
/// taken for the next request.
pub(super) async fn refuse_unread(req: Request<Incoming>, resp: Resp) -> Resp {
    let drained = match declared_length(req.headers()) {
        Some(n) if n > DRAIN_BYTES as u64 => false,
        _ => {
            let read = http_body_util::Limited::new(req.into_body(), DRAIN_BYTES).collect();
            matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), read).await,
                Ok(Ok(_))
            )
        }
    };
    if drained { resp } else { closing(resp) }
}

/// An answer after which the connection closes (the body was not read).
fn closing(mut resp: Resp) -> Resp {
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// 400 `containers_disabled`: the node has no container engine.
pub(super) fn containers_disabled() -> Resp {
    error(
        StatusCode::BAD_REQUEST,
        "containers_disabled",
        "this node runs no containers (the operator has not configured [containers])",
    )
}

fn invalid_image(message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_image", message)
}

fn image_json(i: &ImageRecord) -> Value {
    json!({"image": i.id, "tags": i.tags, "size": i.size, "created_at": i.created_at})
}

/// Where image archives are kept: `<data_dir>/images/<hex>.tar`.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// `PUT` (upload) and `GET` (list) `…/images`.
pub(super) async fn list_or_upload(call: TenantCall) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match method {
        Method::GET => {
            let list = tri!(
                blocking({
                    let app = app.clone();
                    move || app.registry.list_images(&tenant)
                })
                .await
            );
            let items: Vec<Value> = list.iter().map(image_json).collect();
            json(StatusCode::OK, &json!({ "images": items }))
        }
        Method::PUT => upload(app, req, tenant).await,
        _ => method_not_allowed("GET, PUT"),
    }
}

/// Streams the body into `path`, at most `limit` bytes.
async fn spool(req: Request<Incoming>, path: &Path, limit: u64) -> Result<u64, Resp> {
    let too_large = || {
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("image archives are limited to {} MiB", limit >> 20),
        ))
    };
    if declared_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let failed = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "writing an image archive");
        internal_error()
    };
    let mut file = tokio::fs::File::create(path).await.map_err(failed)?;
    let mut body = req.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("could not read the request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            written += data.len() as u64;
            if written > limit {
                return Err(too_large());
            }
            file.write_all(data).await.map_err(failed)?;
        }
    }
    file.sync_all().await.map_err(failed)?;
    Ok(written)
}

async fn upload(app: Arc<App>, req: Request<Incoming>, tenant: String) -> Resp {
    let (Some(backend), Some(cc)) = (app.containers.clone(), app.config.containers.as_ref()) else {
        return refuse_unread(req, containers_disabled()).await;
    };
    if !app.registry.tenant_exists(&tenant) {
        let missing = error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("tenant `{tenant}` does not exist"),
        );
        return refuse_unread(req, missing).await;
    }
    if media_type(req.headers()).is_some_and(|m| m != "application/x-tar") {
        let refused = invalid_image("an image upload's Content-Type is application/x-tar");
        return refuse_unread(req, refused).await;
    }
    let dir = images_dir(&app.config.data_dir);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::error!(error = %e, "creating the image directory");
        return internal_error();
    }
    let spooled = dir.join(format!(".upload-{:016x}.tar", fastrand::u64(..)));
    let result = store(&app, &backend, req, &tenant, &spooled, cc.max_image_bytes).await;
    // Gone already when it was renamed into place.
    let _ = tokio::fs::remove_file(&spooled).await;
    result
}

async fn store(
    app: &Arc<App>,
    backend: &perch_containers::Backend,
    req: Request<Incoming>,
    tenant: &str,
    spooled: &Path,
    limit: u64,
) -> Resp {
    let size = tri!(spool(req, spooled, limit).await);
    let path = spooled.to_path_buf();
    let image = tri!(
        off_thread(
            move || perch_containers::archive::inspect(&path),
            |e| invalid_image(&e.0)
        )
        .await
    );
    let kept = archive_path(&images_dir(&app.config.data_dir), &image.id);
    // The tenant's own already (200), or refused before the engine sees it
    // when the tenant has no room for it.
    let admitted = tri!(
        blocking({
            let app = app.clone();
            let (tenant, id) = (tenant.to_string(), image.id.clone());
            move || app.registry.admit_image(&tenant, &id, size)
        })
        .await
    );
    if let Some(have) = admitted {
        return json(StatusCode::OK, &image_json(&have));
    }
    if let Err(e) = tokio::fs::rename(spooled, &kept).await {
        tracing::error!(error = %e, "keeping an image archive");
        return internal_error();
    }
    let driver = backend.driver();
    let loaded = match driver.load_image(&kept).await {
        Ok(()) => driver.has_image(&image.id).await,
        Err(e) => Err(e),
    };
    match loaded {
        Ok(true) => {}
        Ok(false) => {
            forget_archive(app, tenant, &image.id).await;
            return invalid_image(
                "the engine loaded the archive but has no image with the id of its config",
            );
        }
        Err(e) => {
            tracing::warn!(%tenant, image = %image.id, error = %e, "the engine refused an image archive");
            forget_archive(app, tenant, &image.id).await;
            return match e {
                perch_containers::DriverError::Refused { .. } => {
                    invalid_image("the container engine could not load this archive")
                }
                perch_containers::DriverError::Unavailable(_) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "engine_unavailable",
                    "the container engine is not reachable",
                ),
            };
        }
    }
    // Cluster mode: the archive where every node can fetch it, before the
    // record that lets a version name it commits.
    if let Some(shared) = backend.shared_archives().cloned() {
        let (id, path) = (image.id.clone(), kept.clone());
        let put = move || {
            shared
                .put(&id, &path)
                .map_err(|e| format!("storing image {id}'s archive: {e}"))
        };
        if let Err(resp) = off_thread(put, |e: String| storage_unavailable(&e)).await {
            forget_archive(app, tenant, &image.id).await;
            return resp;
        }
    }
    let record = ImageRecord {
        tenant: tenant.to_string(),
        id: image.id.clone(),
        tags: image.tags,
        size,
        created_at: now(),
    };
    let recorded = blocking({
        let app = app.clone();
        move || app.registry.put_image(record)
    })
    .await;
    let (record, created) = match recorded {
        Ok(r) => r,
        Err(resp) => {
            forget_archive(app, tenant, &image.id).await;
            return resp;
        }
    };
    tracing::info!(%tenant, image = %record.id, size, "image uploaded");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &image_json(&record))
}

/// Removes the archive (and the engine's image) unless another tenant
/// holds the same image.
async fn forget_archive(app: &Arc<App>, tenant: &str, id: &str) {
    if app.registry.image_held_elsewhere(tenant, id) {
        return;
    }
    let path = archive_path(&images_dir(&app.config.data_dir), id);
    let _ = tokio::fs::remove_file(path).await;
    let Some(backend) = &app.containers else {
        return;
    };
    if let Err(e) = backend.driver().remove_image(id).await {
        tracing::warn!(image = %id, error = %e, "removing an image from the engine");
    }
    // (Other nodes keep the copies they fetched in their image directory,
    // a cache: a node that lacks an image fetches it again, and none is
    // fetched once no version names it.)
    if let Some(shared) = backend.shared_archives().cloned() {
        let image = id.to_string();
        let deleted = tokio::task::spawn_blocking(move || shared.delete(&image)).await;
        if let Err(e) = deleted.map_err(|e| e.to_string()).and_then(|r| r) {
            tracing::warn!(image = %id, error = %e, "deleting an image archive from the cluster's store");
        }
    }
}

/// `GET` and `DELETE …/images/{id}`.
pub(super) async fn one(call: TenantCall, id: String) -> Resp {
    let (app, method, _req, tenant) = call.into_parts();
    if !perch_containers::archive::is_image_id(&id) {
        return invalid_image(&format!("`{id}` is not an image id (sha256:<64 hex>)"));
    }
    match method {
        Method::GET => {
            let list = tri!(
                blocking({
                    let app = app.clone();
                    let tenant = tenant.clone();
                    move || app.registry.list_images(&tenant)
                })
                .await
            );
            match list.iter().find(|i| i.id == id) {
                Some(i) => json(StatusCode::OK, &image_json(i)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("tenant `{tenant}` has no image `{id}`"),
                ),
            }
        }
        Method::DELETE => {
            tri!(
                blocking({
                    let app = app.clone();
                    let (tenant, id) = (tenant.clone(), id.clone());
                    move || app.registry.delete_image(&tenant, &id)
                })
                .await
            );
            forget_archive(&app, &tenant, &id).await;
            no_content()
        }
        _ => method_not_allowed("GET, DELETE"),
    }
}

/// After a tenant was deleted: removes its images from the engine and the
/// image directory, except those another tenant also holds.
pub(crate) async fn forget_tenant_images(app: &Arc<App>, tenant: &str, images: Vec<String>) {
    for id in images {
        forget_archive(app, tenant, &id).await;
    }
}
