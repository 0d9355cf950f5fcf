//! `GET /v1/nodes` (admin): the nodes whose heartbeat is recent
//! (`crate::nodes`): this node alone on a single node, every live node of
//! the cluster in cluster mode.
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;

use super::common::{Resp, storage_unavailable};
use crate::app::App;
use crate::http::{json, method_not_allowed};

pub(super) async fn list(app: Arc<App>, method: Method) -> Resp {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let store = app.nodes.clone();
    match tokio::task::spawn_blocking(move || store.live())
        .await
        .unwrap_or_else(|e| Err(format!("node list task: {e}")))
    {
        Ok(nodes) => json(StatusCode::OK, &json!({ "nodes": nodes })),
        Err(e) => storage_unavailable(&e),
    }
}
