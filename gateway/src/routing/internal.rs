//! The hybrid pattern: a wasm function reaches its own tenant's container
//! function `NAME` at `http://NAME.containers.internal/…` through its
//! normal outbound fetch. Perch serves the request itself (an instance is
//! started if needed) without consulting the egress policy; it still counts
//! toward the invocation's `outbound_requests`. Another tenant's name, a
//! name that is not a container function, or `https` is refused like a
//! denied destination.
use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use http_body_util::BodyExt;
use perch_containers::Lease;
use perch_runtime::{
    HttpError, InternalDestinations, OutboundResponse, RequestOptions, Route, WasiBody,
};

use super::{Runnable, Target};

/// The suffix of internal container names.
pub const CONTAINERS_SUFFIX: &str = ".containers.internal";

/// Every function with a deployed container version, by `tenant/name`.
/// Weak, so the wasm invocations that resolve through it never keep an old
/// target alive.
#[derive(Default)]
pub struct ContainerDirectory {
    map: RwLock<HashMap<String, Weak<Target>>>,
}

impl ContainerDirectory {
    /// Records `target` under `key` when one of its versions is a
    /// container, or forgets `key`.
    pub fn set(&self, key: &str, target: Option<&Arc<Target>>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let container = target.filter(|t| {
            t.versions
                .iter()
                .any(|d| matches!(d.run, Runnable::Container(_)))
        });
        match container {
            Some(t) => map.insert(key.to_string(), Arc::downgrade(t)),
            None => map.remove(key),
        };
    }

    fn get(&self, tenant: &str, name: &str) -> Option<Arc<Target>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&format!("{tenant}/{name}"))?.upgrade()
    }
}

/// One tenant's view of the internal container names.
pub struct ContainerDestinations {
    /// The invoking function's tenant: the only one whose names resolve.
    pub tenant: String,
    /// Where the names are looked up.
    pub directory: Arc<ContainerDirectory>,
}

impl InternalDestinations for ContainerDestinations {
    fn route(&self, request: http::Request<WasiBody>, options: Option<RequestOptions>) -> Route {
        let Some(name) = request
            .uri()
            .host()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|h| h.strip_suffix(CONTAINERS_SUFFIX).map(str::to_string))
        else {
            return Route::External(request, options);
        };
        let denied =
            || -> Route { Route::Internal(Box::pin(async { Err(HttpError::HttpRequestDenied) })) };
        if request.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
            return denied();
        }
        let Some(target) = self.directory.get(&self.tenant, &name) else {
            tracing::info!(tenant = %self.tenant, %name, "internal request refused: no such container function of this tenant");
            return denied();
        };
        let index = target.pick(request.headers());
        let Runnable::Container(pool) = &target.versions[index].run else {
            return denied();
        };
        let pool = pool.clone();
        Route::Internal(Box::pin(async move {
            let lease = pool
                .acquire()
                .await
                .map_err(|_| HttpError::ConnectionRefused)?;
            send(request, options, lease).await
        }))
    }
}

/// Sends `request` to the lease's instance over a fresh connection, with
/// the timeouts of any outbound request.
async fn send(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    lease: Lease,
) -> Result<OutboundResponse, HttpError> {
    let sent = perch_runtime::send_direct(
        lease.addr(),
        request,
        options,
        perch_runtime::DEFAULT_MAX_TIMEOUTS,
    )
    .await;
    let (response, io) = match sent {
        Ok(answer) => answer,
        Err(e) => {
            lease.failed();
            return Err(e);
        }
    };
    let response = response.map(|body| crate::http::Holding::new(body, lease).boxed_unsync());
    Ok((response, io))
}
