//! A function's versions: the list (newest first, paged) and one version
//! with its settings (secret names only, never their values).
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::common::{PageQuery, Resp, TenantCall, blocking, invalid_name};
use crate::http::{error, json, method_not_allowed, tri};
use crate::names::valid_name;
use crate::registry::{Settings, Version};

/// A version's settings as the API shows them: secret names, not values.
pub(super) fn settings_json(st: &Settings) -> Value {
    json!({
        "vars": st.vars,
        "secrets": st.secrets.keys().collect::<Vec<_>>(),
        "kv": st.kv,
        "limits": st.limits,
        "outbound": st.outbound,
        "cron": st.cron,
    })
}

fn summary(v: &Version) -> Value {
    json!({
        "version": v.version,
        "kind": v.kind.as_str(),
        "world": v.world,
        "digest": v.digest,
        "container": v.container,
        "created_at": v.created_at,
    })
}

/// `GET …/functions/{name}/versions[/{v}]`.
pub(super) async fn handle(call: TenantCall, name: String, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    match rest {
        [] => {
            let page = tri!(PageQuery::of(&req));
            let after = match page.cursor.as_deref().map(str::parse::<u32>) {
                None => u32::MAX,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_cursor",
                        "the cursor is not one this listing returned",
                    );
                }
            };
            let f = tri!(blocking(move || app.registry.get_function(&tenant, &name)).await);
            let (items, cursor) = page
                .cut(f.versions.iter().rev().filter(|v| v.version < after), |v| {
                    v.version.to_string()
                });
            let items: Vec<Value> = items.into_iter().map(summary).collect();
            json(
                StatusCode::OK,
                &json!({"versions": items, "cursor": cursor}),
            )
        }
        [v] => {
            let Ok(n) = v.parse::<u32>() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("`{v}` is not a version number"),
                );
            };
            let f = tri!(blocking(move || app.registry.get_function(&tenant, &name)).await);
            let Some(version) = f.version(n) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("function `{}` has no version {n}", f.name),
                );
            };
            let mut body = summary(version);
            body["settings"] = settings_json(&version.settings);
            json(StatusCode::OK, &body)
        }
        _ => super::common::not_found_endpoint(),
    }
}
