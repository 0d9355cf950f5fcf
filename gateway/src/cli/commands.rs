//! The client subcommands: each is one or two admin API calls, printed as
//! JSON or a one-line summary; failures are one line naming the API's error.
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::args::{
    ApiArgs, Command, FunctionAction, KvAction, RouteAction, TenantAction, TokenAction,
};
use super::client::{self, Client, ClientError};
use super::ops;
use super::output::{list_all, print_list};

fn client(api: &ApiArgs) -> Result<Client, ClientError> {
    Client::new(&api.url, api.token.clone())
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn body(v: Value) -> Option<(Bytes, &'static str)> {
    Some((Bytes::from(v.to_string()), "application/json"))
}

pub(super) fn run_client(cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Backup { to, api } => {
            let written = client(&api)?.download("/v1/backup", &to)?;
            println!("backup written to {} ({written} bytes)", to.display());
            Ok(())
        }
        Command::Serve(_)
        | Command::New(_)
        | Command::Compile(_)
        | Command::Restore(_)
        | Command::Storage { .. } => {
            unreachable!("handled by main")
        }
        Command::Deploy {
            file,
            image,
            container,
            tenant,
            name,
            route,
            stage,
            api,
        } => {
            let c = client(&api)?;
            let query = if stage { "?activate=false" } else { "" };
            let Some(file) = file else {
                let archive = image.expect("clap: a file or --image");
                let id = upload_image(&c, &tenant, &archive)?;
                let v = c.call(
                    Method::PUT,
                    &format!("/v1/tenants/{tenant}/functions/{name}{query}"),
                    body(json!({ "container": container.spec(&id) })),
                )?;
                println!(
                    "{} {tenant}/{name} version {} (container {id})",
                    if stage { "staged" } else { "deployed" },
                    v["version"],
                );
                return bind_route(&c, &tenant, &name, route);
            };
            let bytes = std::fs::read(&file)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", file.display())))?;
            // The server's limit, checked here too so a large file is not
            // sent only to be refused.
            let limit = crate::config::MAX_UPLOAD_BYTES;
            if bytes.len() as u64 > limit {
                return Err(ClientError(format!(
                    "{} is {} bytes; uploads are limited to {} MiB",
                    file.display(),
                    bytes.len(),
                    limit >> 20
                )));
            }
            let v = c.call(
                Method::PUT,
                &format!("/v1/tenants/{tenant}/functions/{name}{query}"),
                Some((Bytes::from(bytes), "application/wasm")),
            )?;
            println!(
                "{} {tenant}/{name} version {} ({})",
                if stage { "staged" } else { "deployed" },
                v["version"],
                v["digest"].as_str().unwrap_or("")
            );
            bind_route(&c, &tenant, &name, route)
        }
        Command::Tenants { action, api } => {
            let c = client(&api)?;
            match action {
                TenantAction::List => print_list(
                    &api,
                    &list_all(&c, "/v1/tenants", "tenants")?,
                    "tenants",
                    ops::TENANT_COLUMNS,
                ),
                TenantAction::Create { name, domains } => {
                    let b = if domains.is_empty() {
                        None
                    } else {
                        body(json!({ "domains": domains }))
                    };
                    print(&c.call(Method::PUT, &format!("/v1/tenants/{name}"), b)?)
                }
                TenantAction::Delete { name } => {
                    c.call(Method::DELETE, &format!("/v1/tenants/{name}"), None)?;
                    println!("deleted tenant {name}");
                }
                TenantAction::SetQuota {
                    name,
                    quotas,
                    reset,
                } => {
                    let mut edits = serde_json::Map::new();
                    for (quota, value) in quotas.given() {
                        edits.insert(quota.to_string(), json!(value));
                    }
                    for quota in reset {
                        edits.insert(quota, serde_json::Value::Null);
                    }
                    if edits.is_empty() {
                        return Err(ClientError(
                            "give at least one quota (see --help) or --reset".into(),
                        ));
                    }
                    let b = body(json!({ "quotas": edits }));
                    print(&c.call(Method::PUT, &format!("/v1/tenants/{name}"), b)?)
                }
            }
            Ok(())
        }
        Command::Functions {
            tenant,
            action,
            api,
        } => {
            let c = client(&api)?;
            let base = format!("/v1/tenants/{tenant}/functions");
            match action {
                FunctionAction::List => print_list(
                    &api,
                    &list_all(&c, &base, "functions")?,
                    "functions",
                    ops::FUNCTION_COLUMNS,
                ),
                FunctionAction::Show { name } => {
                    print(&c.call(Method::GET, &format!("{base}/{name}"), None)?)
                }
                FunctionAction::Delete { name } => {
                    c.call(Method::DELETE, &format!("{base}/{name}"), None)?;
                    println!("deleted function {tenant}/{name}");
                }
                FunctionAction::Settings { name, file } => {
                    let text = std::fs::read(&file)
                        .map_err(|e| ClientError(format!("cannot read {}: {e}", file.display())))?;
                    let v = c.call(
                        Method::PUT,
                        &format!("{base}/{name}/settings"),
                        Some((Bytes::from(text), "application/json")),
                    )?;
                    println!("settings of {tenant}/{name} are version {}", v["version"]);
                }
            }
            Ok(())
        }
        Command::Routes {
            tenant,
            action,
            api,
        } => {
            let c = client(&api)?;
            let base = format!("/v1/tenants/{tenant}/routes");
            match action {
                RouteAction::List => print_list(
                    &api,
                    &list_all(&c, &base, "routes")?,
                    "routes",
                    ops::ROUTE_COLUMNS,
                ),
                RouteAction::Set { host, function } => print(&c.call(
                    Method::PUT,
                    &format!("{base}/{host}"),
                    body(json!({ "function": function })),
                )?),
                RouteAction::Delete { host } => {
                    c.call(Method::DELETE, &format!("{base}/{host}"), None)?;
                    println!("unbound {host}");
                }
            }
            Ok(())
        }
        Command::Kv {
            tenant,
            action,
            api,
        } => run_kv(&client(&api)?, &tenant, action),
        Command::Versions { tenant, name, api } => {
            ops::versions(&client(&api)?, &api, &tenant, &name)
        }
        Command::Deployments {
            tenant,
            action,
            api,
        } => ops::deployments(&client(&api)?, &api, &tenant, action),
        Command::Rollback {
            tenant,
            name,
            to,
            api,
        } => ops::rollback(&client(&api)?, &api, &tenant, &name, to),
        Command::Usage { tenant, api } => {
            let v =
                client(&api)?.call(Method::GET, &format!("/v1/tenants/{tenant}/usage"), None)?;
            ops::print_usage(&api, &v);
            Ok(())
        }
        Command::Logs {
            tenant,
            name,
            follow,
            status,
            limit,
            api,
        } => ops::logs(
            &client(&api)?,
            &api,
            ops::LogsQuery {
                tenant: &tenant,
                name: name.as_deref(),
                follow,
                status: status.as_deref(),
                limit,
            },
        ),
        Command::Tokens {
            tenant,
            action,
            api,
        } => {
            let c = client(&api)?;
            let base = format!("/v1/tenants/{tenant}/tokens");
            match action {
                TokenAction::List => print_list(
                    &api,
                    &list_all(&c, &base, "tokens")?,
                    "tokens",
                    ops::TOKEN_COLUMNS,
                ),
                TokenAction::Create {
                    scopes,
                    expires_in_s,
                    name,
                } => {
                    let mut request = json!({ "scopes": scopes });
                    if let Some(s) = expires_in_s {
                        request["expires_in_s"] = json!(s);
                    }
                    if let Some(n) = name {
                        request["name"] = json!(n);
                    }
                    print(&c.call(Method::POST, &base, body(request))?)
                }
                TokenAction::Revoke { id } => {
                    c.call(Method::DELETE, &format!("{base}/{id}"), None)?;
                    println!("revoked token {id}");
                }
            }
            Ok(())
        }
    }
}

fn run_kv(c: &Client, tenant: &str, action: KvAction) -> Result<(), ClientError> {
    use client::{check, encode_path};
    let base = format!("/v1/tenants/{tenant}/kv");
    let value_path = |ns: &str, key: &str| {
        format!(
            "{base}/{}/values/{}",
            encode_path(ns, false),
            encode_path(key, true)
        )
    };
    match action {
        KvAction::Namespaces => print(&c.call(Method::GET, &base, None)?),
        KvAction::Create { namespace } => {
            print(&c.call(Method::PUT, &format!("{base}/{namespace}"), None)?)
        }
        KvAction::Get { namespace, key } => {
            let (status, headers, body) =
                c.call_raw(Method::GET, &value_path(&namespace, &key), None, &[])?;
            check(status, &body)?;
            if let Some(m) = headers
                .get(crate::api::kv::METADATA_HEADER)
                .and_then(|m| m.to_str().ok())
            {
                eprintln!("metadata: {m}");
            }
            use std::io::Write;
            std::io::stdout()
                .write_all(&body)
                .map_err(|e| ClientError(format!("writing stdout: {e}")))?;
        }
        KvAction::Put {
            namespace,
            key,
            value,
            file,
            ttl,
            metadata,
        } => {
            let bytes = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| ClientError(format!("cannot read {}: {e}", f.display())))?,
                (None, None) => return Err(ClientError("give a value or --file".into())),
            };
            let mut path = value_path(&namespace, &key);
            if let Some(t) = ttl {
                path.push_str(&format!("?ttl={t}"));
            }
            let headers: Vec<(&str, String)> = metadata
                .into_iter()
                .map(|m| (crate::api::kv::METADATA_HEADER, m))
                .collect();
            let (status, _, body) = c.call_raw(
                Method::PUT,
                &path,
                Some((Bytes::from(bytes), "application/octet-stream")),
                &headers,
            )?;
            check(status, &body)?;
            println!("stored {namespace}/{key}");
        }
        KvAction::Delete { namespace, key } => {
            c.call(Method::DELETE, &value_path(&namespace, &key), None)?;
            println!("deleted {namespace}/{key}");
        }
        KvAction::List {
            namespace,
            prefix,
            cursor,
            limit,
        } => {
            let mut q = format!("prefix={}", encode_path(&prefix, false));
            if let Some(cur) = cursor {
                q.push_str(&format!("&cursor={cur}"));
            }
            if let Some(l) = limit {
                q.push_str(&format!("&limit={l}"));
            }
            print(&c.call(Method::GET, &format!("{base}/{namespace}/keys?{q}"), None)?)
        }
    }
    Ok(())
}

/// Binds `route` (if given) to the function.
fn bind_route(
    c: &Client,
    tenant: &str,
    name: &str,
    route: Option<String>,
) -> Result<(), ClientError> {
    if let Some(host) = route {
        c.call(
            Method::PUT,
            &format!("/v1/tenants/{tenant}/routes/{host}"),
            body(json!({ "function": name })),
        )?;
        println!("route {host} -> {name}");
    }
    Ok(())
}

/// Uploads an image archive as the tenant's image; returns its id.
fn upload_image(
    c: &Client,
    tenant: &str,
    archive: &std::path::Path,
) -> Result<String, ClientError> {
    let bytes = std::fs::read(archive)
        .map_err(|e| ClientError(format!("cannot read {}: {e}", archive.display())))?;
    let v = c.call(
        Method::PUT,
        &format!("/v1/tenants/{tenant}/images"),
        Some((Bytes::from(bytes), "application/x-tar")),
    )?;
    let id = v["image"].as_str().unwrap_or("").to_string();
    println!("image {id} ({} bytes)", v["size"]);
    Ok(id)
}
