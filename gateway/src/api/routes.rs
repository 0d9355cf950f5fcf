//! A tenant's routes: list, bind a pattern (`host`, `*.suffix`, either
//! followed by a path: `/exact` or `/prefix/*`) to a function, unbind.
//! The pattern is the rest of the URL path, percent-decoded once.
//! Ownership and domain rules live in the registry.
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::common::{
    PageQuery, Resp, TenantCall, blocking, invalid_name, not_found_endpoint, read_json,
};
use crate::app::App;
use crate::http::{json, method_not_allowed, no_content, tri};
use crate::names::valid_name;
use crate::registry::Route;

/// `…/routes` and `…/routes/{pattern}`; `rest` starts after `routes`.
pub(super) async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match rest {
        [] => match method {
            Method::GET => {
                let page = tri!(PageQuery::of(&req));
                let list = tri!(blocking(move || app.registry.list_routes(&tenant)).await);
                let after = page.cursor.clone();
                let (items, cursor) = page.cut(
                    list.iter()
                        .filter(|r| after.as_deref().is_none_or(|c| r.pattern().as_str() > c)),
                    |r| r.pattern(),
                );
                let items: Vec<_> = items.iter().map(|r| route_json(r)).collect();
                json(
                    StatusCode::OK,
                    &json!({ "routes": items, "cursor": cursor }),
                )
            }
            _ => method_not_allowed("GET"),
        },
        [host, ..] if !host.is_empty() => one(app, method, req, tenant, rest.join("/")).await,
        _ => not_found_endpoint(),
    }
}

fn route_json(r: &Route) -> serde_json::Value {
    json!({"pattern": r.pattern(), "host": r.host, "path": r.path, "function": r.function})
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
    pattern: String,
) -> Resp {
    match method {
        Method::PUT => {
            let body: RouteBody = tri!(read_json(req, false).await).expect("required body");
            if !valid_name(&body.function) {
                return invalid_name("function", &body.function);
            }
            let (route, created) = tri!(
                blocking(move || app.registry.put_route(&tenant, &pattern, &body.function)).await
            );
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &route_json(&route))
        }
        Method::DELETE => {
            tri!(blocking(move || app.registry.delete_route(&tenant, &pattern)).await);
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}
