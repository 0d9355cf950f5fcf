//! A function's settings: vars, write-only secrets (sealed before they are
//! stored), KV bindings, limits within the operator maxima, the outbound
//! allow-list. Each PUT creates a version on the same artifact (deployed
//! alone, or staged with `?activate=false`).
use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::common::{
    Resp, TenantCall, blocking, collect_garbage, invalid_name, query_flag, read_json,
};
use crate::http::{error, json, method_not_allowed, tri};
use crate::limits::{LimitOverrides, LimitSet};
use crate::names::{NAME_RULE, valid_name};
use crate::registry::{Outbound, RegistryError, secret_context, var_secret_collision};

fn both_message(name: &str) -> String {
    format!("`{name}` is both a var and a secret")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    #[serde(default)]
    vars: BTreeMap<String, String>,
    secrets: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    outbound: Outbound,
    #[serde(default)]
    cron: Vec<String>,
}

/// Bytes of vars and secrets a version may carry.
const MAX_SETTINGS_BYTES: usize = 64 * 1024;

fn invalid_settings(message: String) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_settings", &message)
}

/// Schedules a version may list.
const MAX_SCHEDULES: usize = 5;

/// The schedules in their normal form, or why not.
fn check_cron(list: &[String]) -> Result<Vec<String>, String> {
    if list.len() > MAX_SCHEDULES {
        return Err(format!(
            "at most {MAX_SCHEDULES} schedules, not {}",
            list.len()
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for text in list {
        let expr = crate::cron::CronExpr::parse(text)?;
        if !out.iter().any(|e| e == expr.text()) {
            out.push(expr.text().to_string());
        }
    }
    Ok(out)
}

fn check_settings(body: &SettingsBody, max: &LimitSet) -> Result<(), String> {
    let secret_names = body.secrets.iter().flat_map(|m| m.keys());
    for name in body.vars.keys().chain(secret_names) {
        if !crate::names::valid_var_name(name) {
            return Err(format!(
                "`{name}` is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
    }
    if let Some(both) = var_secret_collision(&body.vars, body.secrets.iter().flat_map(|m| m.keys()))
    {
        return Err(both_message(&both));
    }
    let size: usize = body
        .vars
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + body
            .secrets
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
            .sum::<usize>();
    if size > MAX_SETTINGS_BYTES {
        return Err(format!(
            "vars and secrets total {size} bytes; the limit is {MAX_SETTINGS_BYTES}"
        ));
    }
    for (binding, ns) in &body.kv {
        if binding.is_empty() || binding.len() > 64 || binding == "default" {
            return Err(format!(
                "KV binding `{binding}` must be 1 to 64 characters and not `default`"
            ));
        }
        if !valid_name(ns) {
            return Err(format!("KV namespace `{ns}` must match {NAME_RULE}"));
        }
    }
    body.limits.check(max)?;
    for host in &body.outbound.allow {
        crate::names::HostPattern::parse(host).map_err(|e| format!("outbound.allow: {e}"))?;
    }
    Ok(())
}

/// `PUT …/functions/{name}/settings`.
pub(super) async fn handle(call: TenantCall, name: String) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if method != Method::PUT {
        return method_not_allowed("PUT");
    }
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    let activate = tri!(query_flag(&req, "activate", true));
    let body: SettingsBody = tri!(read_json(req, false).await).expect("required body");
    if let Err(m) = check_settings(&body, &app.config.max) {
        return invalid_settings(m);
    }
    let cron = match check_cron(&body.cron) {
        Ok(c) => c,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_cron", &m),
    };
    // Sealed once: a commit that lost a race reapplies the same values.
    let sealer = app.registry.secrets().clone();
    let secrets: Option<Vec<(String, Option<String>)>> = body.secrets.map(|m| {
        m.into_iter()
            .map(|(secret, value)| {
                let context = secret_context(&tenant, &name, &secret);
                let sealed = value.map(|v| sealer.seal(&context, &v));
                (secret, sealed)
            })
            .collect()
    });
    let (vars, kv, limits, outbound) = (body.vars, body.kv, body.limits, body.outbound);
    let registry = app.registry.clone();
    let (t, n) = (tenant.clone(), name.clone());
    let added = tri!(
        blocking(move || {
            registry.put_settings(&t, &n, activate, |st| {
                st.vars = vars.clone();
                st.kv = kv.clone();
                st.limits = limits.clone();
                st.outbound = outbound.clone();
                st.cron = cron.clone();
                for (secret, sealed) in secrets.iter().flatten() {
                    match sealed {
                        Some(v) => st.secrets.insert(secret.clone(), v.clone()),
                        None => st.secrets.remove(secret),
                    };
                }
                match var_secret_collision(&st.vars, st.secrets.keys()) {
                    Some(both) => Err(RegistryError::Invalid(both_message(&both))),
                    None => Ok(()),
                }
            })
        })
        .await
    );
    tracing::info!(%tenant, function = %name, version = added.version, active = added.active, "settings updated");
    collect_garbage(&app, added.dropped).await;
    json(
        StatusCode::CREATED,
        &json!({"function": name, "version": added.version, "active": added.active}),
    )
}
