//! A tenant's routes: list, bind a host (or `*.suffix`) to a function,
//! unbind. Ownership and domain rules live in the registry.
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, invalid_name, not_found_endpoint, read_json};
use crate::app::App;
use crate::http::{json, method_not_allowed, no_content, tri};
use crate::names::valid_name;

/// `…/routes` and `…/routes/{host}`; `rest` starts after `routes`.
pub(super) async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match rest {
        [] => match method {
            Method::GET => {
                let list = tri!(blocking(move || app.registry.list_routes(&tenant)).await);
                let list: Vec<_> = list
                    .iter()
                    .map(|r| json!({"host": r.host, "function": r.function}))
                    .collect();
                json(StatusCode::OK, &json!({ "routes": list }))
            }
            _ => method_not_allowed("GET"),
        },
        [host] => one(app, method, req, tenant, host.to_string()).await,
        _ => not_found_endpoint(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    function: String,
}

async fn one(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
    host: String,
) -> Resp {
    match method {
        Method::PUT => {
            let body: RouteBody = tri!(read_json(req, false).await).expect("required body");
            if !valid_name(&body.function) {
                return invalid_name("function", &body.function);
            }
            let (route, created) = tri!(
                blocking(move || app.registry.put_route(&tenant, &host, &body.function)).await
            );
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(
                status,
                &json!({"host": route.host, "function": route.function}),
            )
        }
        Method::DELETE => {
            tri!(blocking(move || app.registry.delete_route(&tenant, &host)).await);
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}
