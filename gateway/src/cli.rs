//! The `perch` command line: `perch serve`, and client subcommands that
//! talk to the admin API (`PERCH_URL`, `PERCH_TOKEN`).
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};
use crate::config::{Config, Overrides};
use crate::server::{AdminToken, serve};

/// Perch: a self-hostable serverless functions platform.
#[derive(Parser, Debug)]
#[command(name = "perch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data plane and the admin API.
    Serve(ServeArgs),
    /// Create a function project that builds with `cargo build --release`.
    New(NewArgs),
    /// Upload a component as a new version of a function (and optionally bind a host).
    Deploy {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Tenant that owns the function.
        #[arg(long)]
        tenant: String,
        /// Function name.
        #[arg(long)]
        name: String,
        /// Bind this host to the function after uploading.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage tenants (admin token).
    Tenants {
        #[command(subcommand)]
        action: TenantAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage a tenant's functions.
    Functions {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: FunctionAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage a tenant's routes.
    Routes {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: RouteAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Read and write a tenant's key-value store.
    Kv {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: KvAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage a tenant's tokens (admin token).
    Tokens {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Internal: compile one component for the server, under the rlimits
    /// the server set (see `perch_runtime::CompilerCommand`).
    #[command(name = COMPILE_SUBCOMMAND, hide = true)]
    Compile(CompileArgs),
}

/// The hidden subcommand the server runs to compile an upload.
pub const COMPILE_SUBCOMMAND: &str = "__compile";

#[derive(Args, Debug)]
struct CompileArgs {
    /// Wasm stack limit the server's engine uses.
    #[arg(long)]
    max_wasm_stack: usize,
    /// The server engine's compatibility tag; compilation is refused when
    /// this binary's engine differs.
    #[arg(long)]
    engine_tag: String,
    /// The component.
    input: PathBuf,
    /// Where to write the precompiled form (atomically).
    output: PathBuf,
}

#[derive(Args, Debug)]
struct NewArgs {
    /// Project and function name (a-z, 0-9, '-').
    name: String,
    /// Folder to create [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The perch-sdk crate to depend on [default: the sdk/ of the Perch
    /// source tree this binary was built from].
    #[arg(long, env = "PERCH_SDK_PATH")]
    sdk_path: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Data directory [default: ./perch-data].
    #[arg(long, env = "PERCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Data-plane address [default: 127.0.0.1:8080].
    #[arg(long, env = "PERCH_LISTEN")]
    listen: Option<String>,
    /// Admin API address [default: 127.0.0.1:8081].
    #[arg(long, env = "PERCH_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Config file (TOML).
    #[arg(long, env = "PERCH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ApiArgs {
    /// Admin API URL.
    #[arg(
        long,
        env = "PERCH_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    url: String,
    /// Bearer token.
    #[arg(long, env = "PERCH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum TenantAction {
    /// List tenants.
    List,
    /// Create a tenant (or replace its domains).
    Create {
        /// Name.
        name: String,
        /// Allowed host or `*.suffix` (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
    /// Delete a tenant and everything it owns.
    Delete {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum FunctionAction {
    /// List functions.
    List,
    /// Show a function's versions.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a function with its versions and routes.
    Delete {
        /// Name.
        name: String,
    },
    /// Replace a function's settings from a JSON file (creates a version).
    Settings {
        /// Name.
        name: String,
        /// JSON file: {"vars", "secrets", "kv", "limits", "outbound"}.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum KvAction {
    /// List namespaces.
    Namespaces,
    /// Create a namespace.
    Create {
        /// Namespace.
        namespace: String,
    },
    /// Print a value (raw bytes) to stdout.
    Get {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// Store a value given inline or from a file.
    Put {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// The value (or use --file).
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// JSON metadata.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Delete a key.
    Delete {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// List keys (one page; pass --cursor for the next).
    List {
        /// Namespace.
        namespace: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Cursor from the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum RouteAction {
    /// List routes.
    List,
    /// Bind a host (or `*.suffix`) to a function.
    Set {
        /// Host.
        host: String,
        /// Function name.
        function: String,
    },
    /// Unbind a host.
    Delete {
        /// Host.
        host: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// List tokens (ids and scopes; never secrets).
    List,
    /// Create a token; prints the secret once.
    Create {
        /// Scope: functions, routes, kv, logs or * (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Compile(args) => run_compile(args),
        Command::New(args) => run_new(args),
        other => match run_client(other) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_new(args: NewArgs) -> ExitCode {
    match crate::scaffold::create(&args.name, args.dir.as_deref(), args.sdk_path.as_deref()) {
        Ok(dir) => {
            println!("created {}", dir.display());
            println!("next: cd {} && cargo build --release", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PERCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a log file, journald or
    // a container's log collector gets plain `key=value` lines. `NO_COLOR`
    // (any non-empty value) turns them off at a terminal too.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn run_compile(args: CompileArgs) -> ExitCode {
    let settings = perch_runtime::EngineSettings {
        max_wasm_stack: args.max_wasm_stack,
    };
    match perch_runtime::compile_child(&settings, &args.engine_tag, &args.input, &args.output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The server reads only this line as the reason (bounded).
            eprintln!("{}", e.report_line());
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    init_tracing();
    let overrides = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        admin_listen: args.admin_listen,
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_token = std::env::var("PERCH_ADMIN_TOKEN").ok();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = config.clone();
    let result = rt.block_on(serve(config, admin_token, move |s| {
        let l = &summary.limits;
        match &s.admin_token {
            AdminToken::FromEnv => eprintln!("admin token: from PERCH_ADMIN_TOKEN"),
            AdminToken::File(p) => eprintln!("admin token: {}", p.display()),
        }
        eprintln!(
            "data dir: {}  limits: memory={}MiB cpu={}ms wall={}ms  tenant concurrency: {}",
            summary.data_dir.display(),
            l.memory_mb,
            l.cpu_ms,
            l.wall_ms,
            summary.tenant_concurrency
        );
        println!(
            "perch listening data=http://{} admin=http://{}",
            s.data, s.admin
        );
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API's upload limit.
const MAX_UPLOAD: usize = 50 << 20;

fn client(api: &ApiArgs) -> Result<Client, ClientError> {
    Client::new(&api.url, api.token.clone())
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn body(v: Value) -> Option<(Bytes, &'static str)> {
    Some((Bytes::from(v.to_string()), "application/json"))
}

fn run_client(cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Serve(_) | Command::New(_) | Command::Compile(_) => {
            unreachable!("handled by main")
        }
        Command::Deploy {
            file,
            tenant,
            name,
            route,
            api,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", file.display())))?;
            if bytes.len() > MAX_UPLOAD {
                return Err(ClientError(format!(
                    "{} is {} bytes; uploads are limited to 50 MiB",
                    file.display(),
                    bytes.len()
                )));
            }
            let c = client(&api)?;
            let v = c.call(
                Method::PUT,
                &format!("/v1/tenants/{tenant}/functions/{name}"),
                Some((Bytes::from(bytes), "application/wasm")),
            )?;
            println!(
                "deployed {tenant}/{name} version {} ({})",
                v["version"],
                v["digest"].as_str().unwrap_or("")
            );
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
        Command::Tenants { action, api } => {
            let c = client(&api)?;
            match action {
                TenantAction::List => print(&c.call(Method::GET, "/v1/tenants", None)?),
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
                FunctionAction::List => print(&c.call(Method::GET, &base, None)?),
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
                RouteAction::List => print(&c.call(Method::GET, &base, None)?),
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
        Command::Tokens {
            tenant,
            action,
            api,
        } => {
            let c = client(&api)?;
            let base = format!("/v1/tenants/{tenant}/tokens");
            match action {
                TokenAction::List => print(&c.call(Method::GET, &base, None)?),
                TokenAction::Create { scopes } => {
                    print(&c.call(Method::POST, &base, body(json!({ "scopes": scopes })))?)
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
    use crate::client::{check, encode_path};
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
                .get(crate::kv_api::METADATA_HEADER)
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
                .map(|m| (crate::kv_api::METADATA_HEADER, m))
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
