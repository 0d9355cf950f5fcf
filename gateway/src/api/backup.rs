//! `GET /v1/backup` (admin): a backup of the node (`crate::backup`),
//! written to a scratch file under the data directory while the server
//! keeps serving, then streamed as `application/x-tar`. The scratch file
//! is unlinked as soon as it is open, so nothing is left behind.
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use super::common::Resp;
use crate::app::App;
use crate::backup::{self, Sources};
use crate::http::{ChannelBody, error, method_not_allowed};

/// Bytes per frame of the streamed tar.
const CHUNK: usize = 256 << 10;

pub(super) async fn get(app: Arc<App>, method: Method) -> Resp {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let Some(db) = app.db.clone() else {
        return error(
            StatusCode::CONFLICT,
            "cluster_mode",
            "this node keeps its state in PostgreSQL: back it up with pg_dump (see deploy/README.md)",
        );
    };
    let work = backup::work_dir(&app.config.data_dir);
    let out = work.join("backup.tar");
    let written = {
        let (app, work, out) = (app.clone(), work.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            let sources = Sources {
                db: &db,
                runtime: &app.runtime,
                artifacts: &app.artifacts,
                images_dir: &crate::api::images_dir(&app.config.data_dir),
                secrets: app.registry.secrets(),
            };
            backup::write(&sources, &work, &out)
        })
        .await
        .unwrap_or_else(|e| Err(format!("backup task: {e}")))
    };
    let opened = match written {
        Ok(manifest) => tokio::fs::File::open(&out)
            .await
            .map(|f| (f, manifest))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_dir_all(&work).await;
    let (mut file, manifest) = match opened {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "backup failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                &format!("the backup could not be taken: {e}"),
            );
        }
    };
    let size = file.metadata().await.map(|m| m.len()).ok();
    tracing::info!(revision = manifest.revision, files = manifest.files.len(), bytes = ?size, "backup taken");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Ending early leaves the client a tar without its
                    // manifest, which a restore refuses.
                    tracing::error!(error = %e, "reading the backup file failed");
                    return;
                }
            }
        }
    });
    let mut resp = Response::new(ChannelBody::new(rx).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Some(n) = size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"perch-backup.tar\""),
    );
    headers.insert(
        "perch-backup-revision",
        HeaderValue::from(manifest.revision),
    );
    resp
}
