//! `POST …/functions/{name}/scheduled?cron=EXPR`: runs one tick of one of
//! the function's schedules now (202), for testing a schedule without
//! waiting for it. The tick runs like a scheduled one: headers, limits,
//! the `scheduled` event.
use http::{Method, StatusCode};
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, invalid_name, query_params};
use crate::cron::CronExpr;
use crate::http::{error, json, method_not_allowed, tri};
use crate::logs::unix_ms;
use crate::names::valid_name;

/// `POST …/scheduled`.
pub(super) async fn handle(call: TenantCall, name: String) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let Some(text) = query_params(&req)
        .into_iter()
        .find_map(|(k, v)| (k == "cron").then_some(v))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_cron",
            "give the schedule as ?cron=EXPR",
        );
    };
    let expr = match CronExpr::parse(&text) {
        Ok(e) => e,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_cron", &m),
    };
    let (registry, t, n) = (app.registry.clone(), tenant.clone(), name.clone());
    let f = tri!(blocking(move || registry.get_function(&t, &n)).await);
    let listed = f
        .active()
        .is_some_and(|v| v.settings.cron.iter().any(|c| c == expr.text()));
    if !listed {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_cron",
            &format!(
                "`{}` is not one of function `{name}`'s schedules",
                expr.text()
            ),
        );
    }
    let scheduler = app.scheduler.clone();
    let cron = expr.text().to_string();
    let now = unix_ms();
    let (t, n, c) = (tenant.clone(), name.clone(), cron.clone());
    tokio::spawn(async move {
        let _ = scheduler.run_tick(&t, &n, &c, now).await;
    });
    json(
        StatusCode::ACCEPTED,
        &json!({"function": name, "cron": cron, "scheduled_time": now}),
    )
}
