//! A function's deployment: which versions serve its traffic, in what
//! share, with an optional sticky key; the one it replaced is kept as
//! `previous` (what `perch rollback` returns to).
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::common::{Resp, TenantCall, blocking, invalid_name, read_json};
use crate::http::{error, json, method_not_allowed, tri};
use crate::names::valid_name;
use crate::registry::{Deployment, Function, MAX_DEPLOYED, Split};

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "versions": d.versions.iter().map(|s| json!({"version": s.version, "percent": s.percent})).collect::<Vec<_>>(),
        "sticky": d.sticky,
        "updated_at": d.updated_at,
    })
}

/// `{"function","versions","sticky","updated_at","previous"}`; a function
/// with nothing deployed has no versions.
fn answer(f: &Function) -> Value {
    let mut body = match &f.deployment {
        Some(d) => deployment_json(d),
        None => json!({"versions": [], "sticky": null, "updated_at": null}),
    };
    body["function"] = json!(f.name);
    body["previous"] = f
        .deployment
        .as_ref()
        .and_then(|d| d.previous.as_deref())
        .map_or(Value::Null, deployment_json);
    body
}

fn invalid(message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_deployment", message)
}

/// The body of a PUT, or why it is not a deployment.
fn parse(body: &Value) -> Result<(Vec<Split>, Option<String>), String> {
    let obj = body.as_object().ok_or("the body must be a JSON object")?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["versions", "sticky"].contains(&k.as_str()))
    {
        return Err(format!("unknown field `{k}` (versions, sticky)"));
    }
    let list = obj
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("`versions` must be a list of {\"version\", \"percent\"}")?;
    if list.is_empty() || list.len() > MAX_DEPLOYED {
        return Err(format!(
            "a deployment names 1 to {MAX_DEPLOYED} versions, not {}",
            list.len()
        ));
    }
    let mut splits = Vec::new();
    for item in list {
        let entry = item
            .as_object()
            .filter(|o| o.len() == 2)
            .ok_or("each entry must be {\"version\": N, \"percent\": P}")?;
        let int = |field: &str| {
            entry.get(field).and_then(Value::as_u64).ok_or(format!(
                "`{field}` must be a positive integer, not {}",
                entry
                    .get(field)
                    .map_or("missing".to_string(), Value::to_string)
            ))
        };
        let version = u32::try_from(int("version")?).map_err(|_| "version out of range")?;
        let percent = int("percent")?;
        if !(1..=100).contains(&percent) {
            return Err(format!(
                "version {version}: percent must be 1 to 100, not {percent}"
            ));
        }
        splits.push(Split {
            version,
            percent: percent as u8,
        });
    }
    let sticky = match obj.get("sticky") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("`sticky` must be a string or null, not {other}")),
    };
    Ok((splits, sticky))
}

/// `GET`, `PUT …/functions/{name}/deployment`.
pub(super) async fn handle(call: TenantCall, name: String) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    match method {
        Method::GET => {
            let f = tri!(blocking(move || app.registry.get_function(&tenant, &name)).await);
            json(StatusCode::OK, &answer(&f))
        }
        Method::PUT => {
            let body: Value = tri!(read_json(req, false).await).expect("required body");
            let (splits, sticky) = match parse(&body) {
                Ok(parsed) => parsed,
                Err(m) => return invalid(&m),
            };
            let registry = app.registry.clone();
            let (t, n) = (tenant.clone(), name.clone());
            let f = tri!(blocking(move || registry.set_deployment(&t, &n, splits, sticky)).await);
            tracing::info!(%tenant, function = %name, active_version = f.active_version, "deployment changed");
            json(StatusCode::OK, &answer(&f))
        }
        _ => method_not_allowed("GET, PUT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_deployments_say_why() {
        let ok = parse(&json!({"versions":[{"version":7,"percent":90},{"version":8,"percent":10}],"sticky":"cookie:uid"})).unwrap();
        assert_eq!(ok.0.len(), 2);
        assert_eq!(ok.1.as_deref(), Some("cookie:uid"));
        for bad in [
            json!([]),
            json!({"versions": []}),
            json!({"versions": [{"version": 1, "percent": 0}]}),
            json!({"versions": [{"version": 1, "percent": 50.5}]}),
            json!({"versions": [{"version": "1", "percent": 100}]}),
            json!({"versions": [{"version": 1}]}),
            json!({"versions": [{"version": 1, "percent": 100, "x": 1}]}),
            json!({"versions": [{"version": 1, "percent": 101}]}),
            json!({"versions": [{"version": 1, "percent": 100}], "extra": 1}),
            json!({"versions": [{"version": 1, "percent": 100}], "sticky": 5}),
            json!({"versions": (1..=5).map(|v| json!({"version": v, "percent": 20})).collect::<Vec<_>>()}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
