//! Day-2 client commands: versions, deployments, rollback, logs.
use std::io::Write;

use http::Method;
use serde_json::{Value, json};

use super::args::{ApiArgs, DeploymentAction};
use super::client::{Client, ClientError, encode_path};
use super::output::{cell, colour, list_all, print_json, print_list, table, wants_json};

fn body(v: Value) -> Option<(bytes::Bytes, &'static str)> {
    Some((bytes::Bytes::from(v.to_string()), "application/json"))
}

/// `7=90` → (7, 90).
fn parse_share(text: &str) -> Result<(u32, u32), ClientError> {
    let bad = || ClientError(format!("`{text}` is not VERSION=PERCENT (e.g. 7=90)"));
    let (v, p) = text.split_once('=').ok_or_else(bad)?;
    Ok((
        v.trim().parse().map_err(|_| bad())?,
        p.trim().parse().map_err(|_| bad())?,
    ))
}

fn deployment_line(d: &Value) -> String {
    let shares: Vec<String> = d["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("v{} {}%", s["version"], s["percent"]))
        .collect();
    let sticky = match d["sticky"].as_str() {
        Some(k) => format!(" (sticky {k})"),
        None => String::new(),
    };
    if shares.is_empty() {
        "nothing deployed".into()
    } else {
        format!("{}{sticky}", shares.join(", "))
    }
}

fn print_deployment(api: &ApiArgs, tenant: &str, d: &Value) {
    if wants_json(api) {
        return print_json(d);
    }
    println!("{tenant}/{}: {}", cell(&d["function"]), deployment_line(d));
    if !d["previous"].is_null() {
        println!("  previous: {}", deployment_line(&d["previous"]));
    }
}

/// `perch versions`.
pub(super) fn versions(
    c: &Client,
    api: &ApiArgs,
    tenant: &str,
    name: &str,
) -> Result<(), ClientError> {
    let base = format!("/v1/tenants/{tenant}/functions/{name}");
    let mut list = list_all(c, &format!("{base}/versions"), "versions")?;
    let deployment = c.call(Method::GET, &format!("{base}/deployment"), None)?;
    let percent = |v: &Value| {
        deployment["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["version"] == *v)
            .map_or(Value::Null, |s| json!(format!("{}%", s["percent"])))
    };
    for item in list["versions"].as_array_mut().into_iter().flatten() {
        item["deployed"] = percent(&item["version"]);
        if let Some(d) = item["digest"].as_str() {
            item["digest_short"] = json!(d.chars().take(12).collect::<String>());
        }
    }
    if wants_json(api) {
        for item in list["versions"].as_array_mut().into_iter().flatten() {
            if let Some(o) = item.as_object_mut() {
                o.remove("digest_short");
            }
        }
    }
    print_list(
        api,
        &list,
        "versions",
        &[
            ("VERSION", "version"),
            ("KIND", "kind"),
            ("DIGEST", "digest_short"),
            ("CREATED", "created_at"),
            ("DEPLOYED", "deployed"),
        ],
    );
    Ok(())
}

/// `perch deployments show|set`.
pub(super) fn deployments(
    c: &Client,
    api: &ApiArgs,
    tenant: &str,
    action: DeploymentAction,
) -> Result<(), ClientError> {
    match action {
        DeploymentAction::Show { name } => {
            let path = format!("/v1/tenants/{tenant}/functions/{name}/deployment");
            print_deployment(api, tenant, &c.call(Method::GET, &path, None)?);
        }
        DeploymentAction::Set {
            name,
            shares,
            sticky,
        } => {
            let versions = shares
                .iter()
                .map(|s| parse_share(s).map(|(v, p)| json!({"version": v, "percent": p})))
                .collect::<Result<Vec<_>, _>>()?;
            let path = format!("/v1/tenants/{tenant}/functions/{name}/deployment");
            let d = c.call(
                Method::PUT,
                &path,
                body(json!({"versions": versions, "sticky": sticky})),
            )?;
            print_deployment(api, tenant, &d);
        }
    }
    Ok(())
}

/// `perch rollback`: to the previous deployment, or all traffic to `to`.
pub(super) fn rollback(
    c: &Client,
    api: &ApiArgs,
    tenant: &str,
    name: &str,
    to: Option<u32>,
) -> Result<(), ClientError> {
    let path = format!("/v1/tenants/{tenant}/functions/{name}/deployment");
    let target = match to {
        Some(v) => json!({"versions": [{"version": v, "percent": 100}], "sticky": null}),
        None => {
            let current = c.call(Method::GET, &path, None)?;
            let previous = &current["previous"];
            if previous.is_null() {
                return Err(ClientError(format!(
                    "{tenant}/{name} has no previous deployment; use --to VERSION"
                )));
            }
            json!({"versions": previous["versions"], "sticky": previous["sticky"]})
        }
    };
    let d = c.call(Method::PUT, &path, body(target))?;
    if !wants_json(api) {
        print!("rolled back: ");
    }
    print_deployment(api, tenant, &d);
    Ok(())
}

/// One event as a readable line.
fn event_line(e: &Value, colour: bool) -> String {
    let time = e["time"].as_u64().unwrap_or(0);
    let stamp = format!("{}.{:03}", time / 1000, time % 1000);
    let status = e["status"].as_u64();
    let paint = |text: String| match (colour, status) {
        (true, Some(500..)) => format!("\x1b[31m{text}\x1b[0m"),
        (true, Some(400..)) => format!("\x1b[33m{text}\x1b[0m"),
        (true, Some(_)) => format!("\x1b[32m{text}\x1b[0m"),
        _ => text,
    };
    let what = match e["type"].as_str() {
        Some("request") => format!("{} {}", cell(&e["method"]), cell(&e["path"])),
        Some("scheduled") => format!("cron {}", cell(&e["cron"])),
        Some("lagged") => {
            return format!("… {} events lost (this follower fell behind)", e["dropped"]);
        }
        Some("output") => {
            return format!(
                "{stamp} {}@{} [{}] {}: {}",
                cell(&e["function"]),
                cell(&e["version"]),
                cell(&e["instance"]),
                cell(&e["stream"]),
                cell(&e["message"]),
            );
        }
        Some("container") => {
            return format!(
                "{stamp} {}@{} container {}: {}",
                cell(&e["function"]),
                cell(&e["version"]),
                cell(&e["event"]),
                cell(&e["message"]),
            );
        }
        _ => e.to_string(),
    };
    let mut line = format!(
        "{stamp} {}@{} {what} {} {} {}ms cpu {}ms",
        cell(&e["function"]),
        cell(&e["version"]),
        paint(status.map_or("-".into(), |s| s.to_string())),
        cell(&e["outcome"]),
        cell(&e["duration_ms"]),
        cell(&e["cpu_ms"]),
    );
    if let Some(id) = e["request_id"].as_str() {
        line.push_str(&format!(" [{id}]"));
    }
    for l in e["logs"].as_array().into_iter().flatten() {
        line.push_str(&format!(
            "\n    {}: {}",
            cell(&l["stream"]),
            cell(&l["message"])
        ));
    }
    if e["truncated"] == true {
        line.push_str("\n    [output truncated]");
    }
    line
}

/// Arguments of `perch logs`.
pub(super) struct LogsQuery<'a> {
    pub(super) tenant: &'a str,
    pub(super) name: Option<&'a str>,
    pub(super) follow: bool,
    pub(super) status: Option<&'a str>,
    pub(super) limit: u32,
}

/// `perch logs`.
pub(super) fn logs(c: &Client, api: &ApiArgs, q: LogsQuery<'_>) -> Result<(), ClientError> {
    let mut query = vec![format!("limit={}", q.limit)];
    if let Some(n) = q.name {
        query.push(format!("function={}", encode_path(n, false)));
    }
    if let Some(s) = q.status {
        query.push(format!("status={}", encode_path(s, false)));
    }
    let json_out = wants_json(api);
    let colour = colour();
    let show = |e: &Value| {
        let text = if json_out {
            e.to_string()
        } else {
            event_line(e, colour)
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the command quietly.
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    };
    let path = format!("/v1/tenants/{}/logs?{}", q.tenant, query.join("&"));
    if !q.follow {
        let v = c.call(Method::GET, &path, None)?;
        if json_out {
            print_json(&v);
        } else {
            for e in v["events"].as_array().into_iter().flatten() {
                if !show(e) {
                    break;
                }
            }
        }
        return Ok(());
    }
    c.stream_lines(
        &format!("{path}&follow=1"),
        |line| match serde_json::from_str::<Value>(line) {
            Ok(e) if e["type"] == "keepalive" => true,
            Ok(e) => show(&e),
            Err(_) => true,
        },
    )
}

/// The table columns of the existing list commands.
pub(super) const FUNCTION_COLUMNS: &[(&str, &str)] =
    &[("NAME", "name"), ("ACTIVE", "active_version")];
/// Routes.
pub(super) const ROUTE_COLUMNS: &[(&str, &str)] = &[("HOST", "host"), ("FUNCTION", "function")];
/// Tenants.
pub(super) const TENANT_COLUMNS: &[(&str, &str)] = &[("NAME", "name"), ("DOMAINS", "domains")];
/// Tokens.
pub(super) const TOKEN_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("CREATED", "created_at"),
    ("EXPIRES", "expires_at"),
];

/// A tenant's usage: JSON, or at a terminal one line per counter with its
/// quota (`-` for none).
pub(super) fn print_usage(api: &ApiArgs, v: &Value) {
    if wants_json(api) {
        return print_json(v);
    }
    let rows: Vec<Vec<String>> = v["usage"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, used)| vec![name.clone(), cell(used), cell(&v["quotas"][name])])
        .collect();
    println!("{}", table(&["USAGE", "VALUE", "QUOTA"], &rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_or_say_why_not() {
        assert_eq!(parse_share("7=90").unwrap(), (7, 90));
        for bad in ["7", "x=1", "7=", "=5", "7:90"] {
            assert!(
                parse_share(bad).unwrap_err().0.contains("VERSION=PERCENT"),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_read_as_one_line_plus_output() {
        let e = json!({"type":"request","time":1700000000123u64,"request_id":"ab","function":"f","version":2,
            "method":"GET","path":"/x","status":500,"outcome":"exception","duration_ms":3,"cpu_ms":1,
            "logs":[{"time":1,"stream":"stderr","message":"boom"}],"truncated":false});
        let line = event_line(&e, false);
        assert_eq!(
            line,
            "1700000000.123 f@2 GET /x 500 exception 3ms cpu 1ms [ab]\n    stderr: boom"
        );
        assert!(event_line(&json!({"type":"lagged","dropped":4}), false).contains("4 events lost"));
    }
}
