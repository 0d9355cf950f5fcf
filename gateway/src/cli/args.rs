//! The command line's shape: every subcommand, flag and environment
//! variable (clap derive).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Perch: a self-hostable serverless functions platform.
#[derive(Parser, Debug)]
#[command(name = "perch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Run the data plane and the admin API.
    Serve(ServeArgs),
    /// Create a function project that builds with `cargo build --release`.
    New(NewArgs),
    /// Upload a component as a new version of a function (and optionally bind a host).
    Deploy {
        /// The component (`.wasm`); with `--image`, none.
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        file: Option<PathBuf>,
        /// A container image archive (`docker save` / `podman save`): it is
        /// uploaded as the tenant's image and a container version runs it.
        #[arg(long, requires = "port")]
        image: Option<PathBuf>,
        #[command(flatten)]
        container: ContainerArgs,
        /// Tenant that owns the function.
        #[arg(long)]
        tenant: String,
        /// Function name.
        #[arg(long)]
        name: String,
        /// Bind this host to the function after uploading.
        #[arg(long)]
        route: Option<String>,
        /// Create the version without deploying it (staging).
        #[arg(long)]
        stage: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List a function's versions, newest first.
    Versions {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Function name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show or change which versions of a function serve traffic.
    Deployments {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(subcommand)]
        action: DeploymentAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a function's traffic back to its previous deployment (or to
    /// one version).
    Rollback {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Function name.
        name: String,
        /// All traffic to this version instead of the previous deployment.
        #[arg(long)]
        to: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a tenant's (or one function's) recent log events, or follow them.
    Logs {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Only this function.
        name: Option<String>,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Only events with this status: a class (`5xx`) or a code (`404`).
        #[arg(long)]
        status: Option<String>,
        /// Recent events to print (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Save a backup of the node (admin token): one consistent snapshot of
    /// the registry, KV, usage and audit log with the components and image
    /// archives it needs, taken while the node serves.
    Backup {
        /// Where to write it (a tar; written whole, then renamed into place).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Restore a backup into a new data directory (offline: no server).
    Restore(RestoreArgs),
    /// Move a node's state between storages (offline).
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Show a tenant's usage and quotas.
    Usage {
        /// Tenant.
        #[arg(long)]
        tenant: String,
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
    #[command(name = crate::server::COMPILE_SUBCOMMAND, hide = true)]
    Compile(CompileArgs),
}

#[derive(Args, Debug)]
pub(super) struct CompileArgs {
    /// Wasm stack limit the server's engine uses.
    #[arg(long)]
    pub(super) max_wasm_stack: usize,
    /// The server engine's compatibility tag; compilation is refused when
    /// this binary's engine differs.
    #[arg(long)]
    pub(super) engine_tag: String,
    /// The component.
    pub(super) input: PathBuf,
    /// Where to write the precompiled form (atomically).
    pub(super) output: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct NewArgs {
    /// Project and function name (a-z, 0-9, '-').
    pub(super) name: String,
    /// Folder to create [default: ./NAME].
    #[arg(long)]
    pub(super) dir: Option<PathBuf>,
    /// The perch-sdk crate to depend on [default: the sdk/ of the Perch
    /// source tree this binary was built from].
    #[arg(long, env = "PERCH_SDK_PATH")]
    pub(super) sdk_path: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(super) enum StorageAction {
    /// Copy a single node's data directory (stopped) into an empty
    /// PostgreSQL database for cluster mode: the registry, KV with TTLs
    /// and metadata, and the components, each verified by counts and
    /// SHA-256. The cluster's PERCH_SECRET_KEY must be the node's key.
    Migrate {
        /// The node's data directory.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL connection string or URL (prefer the
        /// environment variable: a flag shows in `ps`).
        #[arg(long, env = "PERCH_STORAGE_URL", hide_env_values = true)]
        to: String,
        /// PEM CA certificates of the server: TLS with its certificate
        /// and name verified (as `[storage] ca_file`).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub(super) struct RestoreArgs {
    /// The backup (`perch backup --to FILE`).
    #[arg(long)]
    pub(super) from: PathBuf,
    /// The data directory to create (absent or empty).
    #[arg(long)]
    pub(super) data_dir: PathBuf,
    /// The secret key of the node the backup was taken on (its data
    /// directory's `secret.key`), copied into the new data directory;
    /// without it, `PERCH_SECRET_KEY` must hold that key.
    #[arg(long)]
    pub(super) secret_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Data directory [default: ./perch-data].
    #[arg(long, env = "PERCH_DATA_DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// Data-plane address [default: 127.0.0.1:8080].
    #[arg(long, env = "PERCH_LISTEN")]
    pub(super) listen: Option<String>,
    /// Admin API address [default: 127.0.0.1:8081].
    #[arg(long, env = "PERCH_ADMIN_LISTEN")]
    pub(super) admin_listen: Option<String>,
    /// Data-plane TLS address (the `[tls]` table's `listen`; off by default).
    #[arg(long, env = "PERCH_TLS_LISTEN")]
    pub(super) tls_listen: Option<String>,
    /// PostgreSQL connection string for cluster mode (the `[storage]`
    /// table's `url`; prefer the environment variable: a flag shows in `ps`).
    #[arg(long, env = "PERCH_STORAGE_URL", hide_env_values = true)]
    pub(super) storage_url: Option<String>,
    /// PEM CA certificates of the PostgreSQL server (the `[storage]`
    /// table's `ca_file`): TLS with the server's certificate verified.
    #[arg(long, env = "PERCH_STORAGE_CA_FILE")]
    pub(super) storage_ca_file: Option<PathBuf>,
    /// Config file (TOML).
    #[arg(long, env = "PERCH_CONFIG")]
    pub(super) config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct ApiArgs {
    /// Admin API URL.
    #[arg(
        long,
        env = "PERCH_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub(super) url: String,
    /// Bearer token.
    #[arg(long, env = "PERCH_TOKEN", hide_env_values = true, global = true)]
    pub(super) token: Option<String>,
    /// Print JSON (the default when stdout is not a terminal).
    #[arg(long, global = true)]
    pub(super) json: bool,
}

#[derive(Subcommand, Debug)]
pub(super) enum DeploymentAction {
    /// Show a function's deployment and the one it replaced.
    Show {
        /// Function name.
        name: String,
    },
    /// Split traffic: `7=90 8=10` (version=percent, summing to 100).
    Set {
        /// Function name.
        name: String,
        /// `VERSION=PERCENT`, 1 to 4 of them.
        #[arg(required = true, num_args = 1..)]
        shares: Vec<String>,
        /// Keep each client on one version: `cookie:NAME` or `header:NAME`.
        #[arg(long)]
        sticky: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum TenantAction {
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
    /// Set (or with `--reset` return to the default) a tenant's quotas.
    SetQuota {
        /// Name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        /// Return this quota to the config's default (repeatable).
        #[arg(long, value_name = "QUOTA", value_parser = clap::builder::PossibleValuesParser::new(crate::registry::QUOTAS))]
        reset: Vec<String>,
    },
}

/// Quota values of `perch tenants set-quota`; sizes take `KiB`, `MiB`,
/// `GiB` (or `KB`, `MB`, `GB`) suffixes.
#[derive(Args, Debug, Default)]
pub(super) struct QuotaArgs {
    /// Functions.
    #[arg(long)]
    pub(super) functions: Option<u64>,
    /// Route patterns.
    #[arg(long)]
    pub(super) routes: Option<u64>,
    /// Bytes of the distinct components the tenant's versions run.
    #[arg(long, value_parser = parse_bytes)]
    pub(super) artifact_bytes: Option<u64>,
    /// Bytes of container image archives (e.g. `2GiB`).
    #[arg(long, value_parser = parse_bytes)]
    pub(super) image_bytes: Option<u64>,
    /// Bytes of KV keys, values and metadata (e.g. `1GiB`).
    #[arg(long, value_parser = parse_bytes)]
    pub(super) kv_bytes: Option<u64>,
    /// KV keys.
    #[arg(long)]
    pub(super) kv_keys: Option<u64>,
    /// Σ memory_mb × max_instances over deployed container versions.
    #[arg(long)]
    pub(super) container_memory_mb: Option<u64>,
    /// Data-plane requests per second, per node.
    #[arg(long)]
    pub(super) requests_per_second: Option<u64>,
}

impl QuotaArgs {
    /// The values given, by quota name.
    pub(super) fn given(&self) -> Vec<(&'static str, u64)> {
        [
            ("functions", self.functions),
            ("routes", self.routes),
            ("artifact_bytes", self.artifact_bytes),
            ("image_bytes", self.image_bytes),
            ("kv_bytes", self.kv_bytes),
            ("kv_keys", self.kv_keys),
            ("container_memory_mb", self.container_memory_mb),
            ("requests_per_second", self.requests_per_second),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
}

/// A number with a unit: the number, and the unit (trimmed) after it;
/// `what` names a well-formed example for the error.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n = digits
        .parse()
        .map_err(|_| format!("`{text}` is not {what}"))?;
    Ok((n, unit.trim()))
}

/// A duration in seconds: `3600`, `90s`, `15m`, `12h`, `30d`.
pub(super) fn parse_duration_s(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text, "a duration (e.g. 3600, 90s, 15m, 12h, 30d)")?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit `{other}` (s, m, h or d)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// A size in bytes: `1048576`, `512KiB`, `64MiB`, `1GiB`, `1GB`, …
pub(super) fn parse_bytes(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text, "a size (e.g. 1048576, 64MiB, 1GiB)")?;
    let unit: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[derive(Subcommand, Debug)]
pub(super) enum FunctionAction {
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
pub(super) enum KvAction {
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
pub(super) enum RouteAction {
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
pub(super) enum TokenAction {
    /// List tokens (ids and scopes; never secrets).
    List,
    /// Create a token; prints the secret once.
    Create {
        /// Scope (repeatable).
        #[arg(long = "scope", required = true, value_parser = clap::builder::PossibleValuesParser::new(crate::registry::SCOPES))]
        scopes: Vec<String>,
        /// How long until the token stops working: seconds, or a number
        /// with `s`, `m`, `h` or `d` (`30d`); default: never.
        #[arg(long = "expires", visible_alias = "expires-in", value_name = "DURATION", value_parser = parse_duration_s)]
        expires_in_s: Option<u64>,
        /// A label for people (1–64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// The spec of a container version (`perch deploy --image`); unset fields
/// take the server's defaults.
#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    /// The port the container listens on.
    #[arg(long, requires = "image")]
    pub port: Option<u16>,
    /// The command, instead of the image's (repeat for each argument).
    #[arg(long = "command", requires = "image", num_args = 1.., value_name = "ARG")]
    pub command: Option<Vec<String>>,
    /// Memory limit, MiB.
    #[arg(long, requires = "image")]
    pub memory_mb: Option<u32>,
    /// CPU limit, in CPUs.
    #[arg(long, requires = "image")]
    pub cpus: Option<f64>,
    /// Instances kept running.
    #[arg(long, requires = "image")]
    pub min_instances: Option<u32>,
    /// Instances at most.
    #[arg(long, requires = "image")]
    pub max_instances: Option<u32>,
    /// In-flight requests per instance.
    #[arg(long, requires = "image")]
    pub concurrency: Option<u32>,
    /// Seconds an idle instance is kept.
    #[arg(long = "idle-timeout", requires = "image", value_name = "SECONDS")]
    pub idle_timeout_s: Option<u32>,
    /// A path that must answer 200 before an instance gets requests.
    #[arg(long, requires = "image")]
    pub health_path: Option<String>,
    /// Seconds a request waits for an instance to become ready.
    #[arg(long = "start-timeout", requires = "image", value_name = "SECONDS")]
    pub start_timeout_s: Option<u32>,
}

impl ContainerArgs {
    /// The spec's JSON for `image`, with only the fields given.
    pub fn spec(&self, image: &str) -> serde_json::Value {
        let mut spec = serde_json::json!({ "image": image, "port": self.port });
        let fields = [
            ("command", serde_json::json!(self.command)),
            ("memory_mb", serde_json::json!(self.memory_mb)),
            ("cpus", serde_json::json!(self.cpus)),
            ("min_instances", serde_json::json!(self.min_instances)),
            ("max_instances", serde_json::json!(self.max_instances)),
            ("concurrency", serde_json::json!(self.concurrency)),
            ("idle_timeout_s", serde_json::json!(self.idle_timeout_s)),
            ("health_path", serde_json::json!(self.health_path)),
            ("start_timeout_s", serde_json::json!(self.start_timeout_s)),
        ];
        for (name, value) in fields {
            if !value.is_null() {
                spec[name] = value;
            }
        }
        spec
    }
}
