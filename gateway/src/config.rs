//! Server configuration: embedded defaults, an optional TOML file
//! (`deny_unknown_fields`), environment variables and flags, in rising order
//! of precedence. Everything is validated before any port is bound.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{DEFAULT_LIMITS, DEFAULT_MAX, LimitOverrides, LimitSet};

/// The config file's shape. Every field is optional; see `perch.example.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Data-plane listen address.
    pub listen: Option<String>,
    /// Admin API listen address.
    pub admin_listen: Option<String>,
    /// Default per-function limits.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Operator maxima for per-function overrides, and retention.
    #[serde(default)]
    pub max: MaxFile,
    /// Node-wide settings.
    #[serde(default)]
    pub node: NodeFile,
    /// Outbound-traffic exemptions.
    #[serde(default)]
    pub egress: EgressFile,
    /// Budgets of the compiler child process.
    #[serde(default)]
    pub compile: CompileFile,
    /// The container backend (off without `engine`).
    #[serde(default)]
    pub containers: ContainersFile,
    /// What a tenant without quotas of its own may hold (absent: unlimited).
    #[serde(default)]
    pub quotas: crate::registry::Quotas,
    /// Trace export (off without `otlp_endpoint`).
    #[serde(default)]
    pub telemetry: TelemetryFile,
    /// The data plane over TLS (off without `listen`).
    #[serde(default)]
    pub tls: TlsFile,
    /// Where the registry, KV and components are kept (redb by default).
    #[serde(default)]
    pub storage: StorageFile,
}

/// The `[storage]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// `redb` (the default: one node, the data directory) or `postgres`
    /// (cluster mode: every node on one database).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The PostgreSQL connection string or URL (or `PERCH_STORAGE_URL`).
    pub url: Option<String>,
    /// Connections per pool (8).
    pub pool_size: Option<usize>,
    /// The server aborts statements running longer, ms (5000).
    pub statement_timeout_ms: Option<u64>,
    /// Giving up on connecting, ms (5000).
    pub connect_timeout_ms: Option<u64>,
    /// A stored component no version runs is deleted once nothing stored
    /// it for this long, seconds (3600; at least 1). An upload stores its
    /// component before its version commits: the grace must outlast that.
    pub artifact_grace_s: Option<u64>,
    /// PEM CA certificates of the server: connections require TLS and
    /// verify the server's certificate and name (libpq's
    /// `sslmode=verify-full`). Without it, TLS follows the URL's `sslmode`
    /// (`prefer` by default) and the certificate is not verified.
    /// (`PERCH_STORAGE_CA_FILE` wins over it.)
    pub ca_file: Option<std::path::PathBuf>,
}

/// The default of `storage.artifact_grace_s`.
const ARTIFACT_GRACE: Duration = Duration::from_secs(3600);

/// Where state is kept.
#[derive(Debug, Clone)]
pub enum Storage {
    /// One node: `perch.redb` and `artifacts/` in the data directory.
    Redb,
    /// Cluster mode: the registry, KV and components in PostgreSQL (the
    /// data directory only caches compiled components).
    Postgres(perch_pg::PgConfig),
}

/// The `[storage]` table resolved; `url` is `--storage-url` /
/// `PERCH_STORAGE_URL`, which wins over the file's.
fn storage_config(file: StorageFile, url: Option<String>) -> Result<(Storage, Duration), String> {
    let url = url.filter(|u| !u.is_empty()).or(file.url);
    let kind = match (file.kind.as_deref(), &url) {
        (Some(k), _) => k.to_string(),
        (None, Some(_)) => "postgres".to_string(),
        (None, None) => "redb".to_string(),
    };
    match kind.as_str() {
        "redb" => {
            if url.is_some()
                || file.pool_size.is_some()
                || file.statement_timeout_ms.is_some()
                || file.connect_timeout_ms.is_some()
                || file.artifact_grace_s.is_some()
                || file.ca_file.is_some()
            {
                return Err("storage: url, pool_size, statement_timeout_ms, connect_timeout_ms, artifact_grace_s and ca_file are for type = \"postgres\"".into());
            }
            Ok((Storage::Redb, ARTIFACT_GRACE))
        }
        "postgres" => {
            let Some(url) = url else {
                return Err(
                    "storage: type = \"postgres\" needs `url` (or PERCH_STORAGE_URL)".into(),
                );
            };
            url.parse::<perch_pg::postgres::Config>()
                .map_err(|e| format!("storage.url is not a PostgreSQL connection string: {e}"))?;
            let mut pg = perch_pg::PgConfig::new(&url);
            pg.pool_size = file.pool_size.unwrap_or(pg.pool_size);
            if !(1..=256).contains(&pg.pool_size) {
                return Err("storage.pool_size must be 1 to 256".into());
            }
            let ms = |v: Option<u64>, default: Duration, what: &str| match v {
                None => Ok(default),
                Some(ms) if (1..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
                Some(_) => Err(format!("storage.{what} must be 1 to 600000")),
            };
            pg.statement_timeout = ms(
                file.statement_timeout_ms,
                pg.statement_timeout,
                "statement_timeout_ms",
            )?;
            pg.connect_timeout = ms(
                file.connect_timeout_ms,
                pg.connect_timeout,
                "connect_timeout_ms",
            )?;
            let grace = match file.artifact_grace_s {
                None => ARTIFACT_GRACE,
                Some(s) if (1..=30 * 86_400).contains(&s) => Duration::from_secs(s),
                Some(_) => return Err("storage.artifact_grace_s must be 1 to 2592000".into()),
            };
            if let Some(ca) = &file.ca_file {
                pg.verify_with(ca)?;
            }
            Ok((Storage::Postgres(pg), grace))
        }
        other => Err(format!(
            "storage.type: `{other}` is not a storage type (redb or postgres)"
        )),
    }
}

/// The `[tls]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Where the TLS listener binds (`0.0.0.0:8443`).
    pub listen: Option<String>,
    /// Seconds a client has to complete the handshake (10).
    pub handshake_timeout_seconds: Option<u64>,
    /// The operator's certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<CertFilesFile>,
    /// The certificate of handshakes that match no other.
    pub default_cert: Option<CertFilesFile>,
    /// Automatic certificates (off without `directory`).
    #[serde(default)]
    pub acme: AcmeFile,
}

/// The `[tls.acme]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// The CA's directory URL (Let's Encrypt:
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: Option<String>,
    /// The account's contact address.
    pub email: Option<String>,
    /// PEM root the CA's HTTPS is checked against (a test CA).
    pub ca_file: Option<PathBuf>,
    /// Seconds before the first retry of a failed order (120).
    pub backoff_min_seconds: Option<u64>,
    /// Longest wait between retries, seconds (21600).
    pub backoff_max_seconds: Option<u64>,
}

fn acme_config(file: AcmeFile) -> Result<Option<crate::tls::acme::AcmeConfig>, String> {
    let Some(directory) = file.directory else {
        if file.email.is_some() || file.ca_file.is_some() {
            return Err("tls.acme: set `directory` to turn ACME on".into());
        }
        return Ok(None);
    };
    let uri: http::Uri = directory
        .parse()
        .map_err(|e| format!("tls.acme.directory `{directory}`: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(format!(
            "tls.acme.directory `{directory}` must be an https:// URL"
        ));
    }
    if let Some(email) = &file.email
        && (!email.contains('@') || email.chars().any(|c| c.is_whitespace() || c == ':'))
    {
        return Err(format!("tls.acme.email `{email}` is not an address"));
    }
    if let Some(path) = &file.ca_file {
        std::fs::metadata(path).map_err(|e| format!("tls.acme.ca_file {}: {e}", path.display()))?;
    }
    let min = file.backoff_min_seconds.unwrap_or(120);
    let max = file.backoff_max_seconds.unwrap_or(21_600);
    if min == 0 || max < min {
        return Err(
            "tls.acme: backoff_min_seconds must be positive and at most backoff_max_seconds".into(),
        );
    }
    Ok(Some(crate::tls::acme::AcmeConfig {
        directory,
        email: file.email,
        ca_file: file.ca_file,
        backoff_min: Duration::from_secs(min),
        backoff_max: Duration::from_secs(max),
    }))
}

/// A `[[tls.certificates]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFilesFile {
    /// PEM: the certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: its private key.
    pub key_file: PathBuf,
}

/// The `[tls]` table resolved; `None` without a listen address.
fn tls_config(
    file: TlsFile,
    listen: Option<String>,
) -> Result<Option<crate::tls::TlsConfig>, String> {
    let acme = acme_config(file.acme)?;
    let Some(listen) = listen.or(file.listen) else {
        if !file.certificates.is_empty() || file.default_cert.is_some() || acme.is_some() {
            return Err("tls: set `listen` (or --tls-listen) to turn the TLS listener on".into());
        }
        return Ok(None);
    };
    let timeout = file.handshake_timeout_seconds.unwrap_or(10);
    if !(1..=300).contains(&timeout) {
        return Err("tls.handshake_timeout_seconds must be 1 to 300".into());
    }
    let files = |f: CertFilesFile| crate::tls::CertFiles {
        cert_file: f.cert_file,
        key_file: f.key_file,
    };
    Ok(Some(crate::tls::TlsConfig {
        listen: parse_addr("tls.listen", &listen)?,
        certificates: file.certificates.into_iter().map(files).collect(),
        default_cert: file.default_cert.map(files),
        handshake_timeout: Duration::from_secs(timeout),
        acme,
    }))
}

/// The `[telemetry]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// The collector's OTLP/HTTP base URL; Perch posts to `…/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1 (1).
    pub sample_ratio: Option<f64>,
    /// `service.name` (`perch`).
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment = "prod"`).
    #[serde(default)]
    pub resource: std::collections::BTreeMap<String, String>,
    /// How long spans wait to be sent in a batch, ms (1000).
    pub batch_delay_ms: Option<u64>,
    /// Spans waiting for export at most; past it they are dropped and
    /// counted (2048).
    pub queue_size: Option<usize>,
}

/// Trace export, when it is on.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's base URL.
    pub otlp_endpoint: String,
    /// Share of new traces sampled.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// More resource attributes.
    pub resource: std::collections::BTreeMap<String, String>,
    /// Batch delay.
    pub batch_delay: Duration,
    /// Spans waiting for export at most.
    pub queue_size: usize,
}

/// The `[telemetry]` table resolved: `None` without an endpoint.
fn telemetry_config(file: TelemetryFile) -> Result<Option<TelemetryConfig>, String> {
    let Some(endpoint) = file.otlp_endpoint else {
        return Ok(None);
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("telemetry.otlp_endpoint `{endpoint}`: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "telemetry.otlp_endpoint `{endpoint}` must be an http:// or https:// URL"
        ));
    }
    if uri.query().is_some() {
        return Err(format!(
            "telemetry.otlp_endpoint `{endpoint}` is a base URL: no query (Perch appends /v1/traces)"
        ));
    }
    let sample_ratio = file.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err("telemetry.sample_ratio must be between 0 and 1".into());
    }
    let service_name = file.service_name.unwrap_or_else(|| "perch".into());
    if service_name.is_empty() {
        return Err("telemetry.service_name may not be empty".into());
    }
    let batch_delay_ms = file.batch_delay_ms.unwrap_or(1000);
    if !(1..=60_000).contains(&batch_delay_ms) {
        return Err("telemetry.batch_delay_ms must be 1 to 60000".into());
    }
    let queue_size = file.queue_size.unwrap_or(2048);
    if !(1..=1 << 20).contains(&queue_size) {
        return Err("telemetry.queue_size must be 1 to 1048576".into());
    }
    Ok(Some(TelemetryConfig {
        otlp_endpoint: endpoint,
        sample_ratio,
        service_name,
        resource: file.resource,
        batch_delay: Duration::from_millis(batch_delay_ms),
        queue_size,
    }))
}

/// The `[containers]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersFile {
    /// The Docker Engine API socket (`unix:///run/podman/podman.sock`).
    pub engine: Option<String>,
    /// Largest image archive, MiB (1024).
    pub max_image_mb: Option<u64>,
    /// Image ids every tenant may run besides its own.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Who keeps tenant networks apart: `nftables` (the default: Perch's
    /// own table as well as the engine's rules) or `engine` (the engine
    /// alone).
    pub isolation: Option<String>,
}

/// Who keeps tenant networks apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Perch's nftables table, besides the engine's own rules.
    Nftables,
    /// The engine's rules alone.
    Engine,
}

/// The container backend's settings, when it is on.
#[derive(Debug, Clone)]
pub struct ContainersConfig {
    /// The engine's socket URL.
    pub engine: String,
    /// Largest image archive, bytes.
    pub max_image_bytes: u64,
    /// Image ids every tenant may run.
    pub allowed_images: Vec<String>,
    /// Bounds of a container spec.
    pub maxima: perch_containers::Maxima,
    /// Who keeps tenant networks apart.
    pub isolation: Isolation,
}

/// The `[max]` table: the operator maxima of the per-function limits,
/// and `versions_per_function` (retention, not a per-function limit).
#[derive(Debug, Default)]
pub struct MaxFile {
    /// Maxima of the per-function limits.
    pub limits: LimitOverrides,
    /// Versions kept per function.
    pub versions_per_function: Option<u32>,
    /// Largest `memory_mb` of a container version.
    pub container_memory_mb: Option<u32>,
    /// Largest `cpus` of a container version.
    pub container_cpus: Option<f64>,
}

impl<'de> Deserialize<'de> for MaxFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        // Fields of `[max]` that are not per-function limits.
        let mut count = |name: &str| match table.remove(name) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("max.{name} must be a positive integer"))),
        };
        let versions_per_function = count("versions_per_function")?;
        let container_memory_mb = count("container_memory_mb")?;
        let container_cpus = match table.remove("container_cpus") {
            None => None,
            Some(v) => Some(
                v.as_float()
                    .or_else(|| v.as_integer().map(|n| n as f64))
                    .ok_or_else(|| D::Error::custom("max.container_cpus must be a number"))?,
            ),
        };
        let limits =
            LimitOverrides::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(MaxFile {
            limits,
            versions_per_function,
            container_memory_mb,
            container_cpus,
        })
    }
}

/// Budgets of the child process that compiles each upload, as written in
/// the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileFile {
    /// CPU seconds (all compiler threads together), enforced by `RLIMIT_CPU`.
    pub cpu_seconds: Option<u64>,
    /// Address space of the compiler process, MiB (`RLIMIT_AS`).
    pub memory_mb: Option<u64>,
    /// Wall-clock seconds before the server kills the compiler.
    pub wall_seconds: Option<u64>,
}

/// Resolved budgets of the compiler child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// CPU time, seconds.
    pub cpu_seconds: u64,
    /// Address space, MiB.
    pub memory_mb: u64,
    /// Wall-clock time, seconds.
    pub wall_seconds: u64,
}

/// Node-wide settings as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// The node's name in log events (default: the host name).
    pub name: Option<String>,
    /// Concurrent requests per tenant.
    pub tenant_concurrency: Option<u32>,
    /// Open data-plane connections.
    pub max_connections: Option<u32>,
    /// Request body limit, bytes.
    pub max_body_bytes: Option<u64>,
    /// Request header section limit, bytes.
    pub max_header_bytes: Option<usize>,
    /// Request URI limit, bytes.
    pub max_uri_bytes: Option<usize>,
    /// Pre-instantiated components kept in memory.
    pub component_cache: Option<u64>,
    /// Instances that may run at once on the node.
    pub max_instances: Option<u32>,
    /// Idle pool slots that keep a recently run function's memory image
    /// mapped for its next instance.
    pub warm_slots: Option<u32>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub drain_seconds: Option<u64>,
    /// Seconds a client has to send a complete request head (also the idle
    /// limit of a kept-alive connection between requests).
    pub header_read_timeout_seconds: Option<u64>,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For`, `Forwarded`
    /// and `X-Forwarded-Proto` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Hosts outside a tenant's domains must be verified before they are
    /// routed (false).
    #[serde(default)]
    pub verify_hosts: bool,
    /// The DNS resolver (`IP:port`) verification asks; the system's
    /// otherwise.
    pub verify_dns: Option<String>,
}

/// Egress exemptions as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressFile {
    /// `host:port` addresses functions may reach despite the default refusals.
    #[serde(default)]
    pub allow: Vec<String>,
    /// PEM file of extra CA certificates trusted for outbound HTTPS.
    pub ca_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Data-plane listen address.
    pub listen: SocketAddr,
    /// Admin API listen address.
    pub admin_listen: SocketAddr,
    /// Default limits for functions.
    pub limits: LimitSet,
    /// Operator maxima.
    pub max: LimitSet,
    /// Versions kept per function (`max.versions_per_function`).
    pub max_versions: u32,
    /// The node's name in log events.
    pub node_name: String,
    /// Concurrent requests per tenant.
    pub tenant_concurrency: u32,
    /// Open data-plane connections.
    pub max_connections: u32,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Request header section limit.
    pub max_header_bytes: usize,
    /// Request URI limit.
    pub max_uri_bytes: usize,
    /// Upload limit on the admin API.
    pub max_upload_bytes: u64,
    /// Component cache entries.
    pub component_cache: u64,
    /// Instance pool size.
    pub max_instances: u32,
    /// Idle pool slots kept warm (affine to the function last run in them).
    pub warm_slots: u32,
    /// Drain period on SIGTERM.
    pub drain: Duration,
    /// Time to receive a request head, and idle limit between requests.
    pub header_read_timeout: Duration,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// Hosts outside a tenant's domains must be verified first.
    pub verify_hosts: bool,
    /// The resolver host verification asks (`None`: the system's).
    pub verify_dns: Option<SocketAddr>,
    /// Egress exemptions.
    pub egress_allow: Vec<String>,
    /// Extra CA certificates for outbound HTTPS (besides the webpki roots).
    pub egress_ca_file: Option<PathBuf>,
    /// Budgets of the compiler child process.
    pub compile: CompileBudget,
    /// The container backend; `None` when off.
    pub containers: Option<ContainersConfig>,
    /// The default quotas of tenants.
    pub quotas: crate::registry::Quotas,
    /// Trace export; `None` when off.
    pub telemetry: Option<TelemetryConfig>,
    /// The TLS listener; `None` when off.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Where state is kept.
    pub storage: Storage,
    /// Cluster mode: how long a stored component no version runs is kept
    /// after it was last stored.
    pub artifact_grace: Duration,
}

/// Values given on the command line or in the environment (already merged
/// by clap: a flag wins over its environment variable).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir` / `PERCH_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` / `PERCH_LISTEN`.
    pub listen: Option<String>,
    /// `--admin-listen` / `PERCH_ADMIN_LISTEN`.
    pub admin_listen: Option<String>,
    /// `--tls-listen` / `PERCH_TLS_LISTEN`.
    pub tls_listen: Option<String>,
    /// `--storage-url` / `PERCH_STORAGE_URL`.
    pub storage_url: Option<String>,
    /// `--storage-ca-file` / `PERCH_STORAGE_CA_FILE`.
    pub storage_ca_file: Option<PathBuf>,
}

/// Largest component upload the admin API takes.
pub const MAX_UPLOAD_BYTES: u64 = 50 << 20;

/// This machine's host name (`node` when it has none).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "node".to_string(),
    }
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{what}: `{s}` is not an IP:port address ({e})"))
}

fn containers_config(
    file: ContainersFile,
    max: &MaxFile,
) -> Result<Option<ContainersConfig>, String> {
    let defaults = perch_containers::Maxima::default();
    let maxima = perch_containers::Maxima {
        memory_mb: max.container_memory_mb.unwrap_or(defaults.memory_mb),
        cpus: max.container_cpus.unwrap_or(defaults.cpus),
    };
    if maxima.memory_mb < 16 || !(maxima.cpus.is_finite() && maxima.cpus >= 0.01) {
        return Err(
            "max.container_memory_mb must be at least 16 and max.container_cpus at least 0.01"
                .into(),
        );
    }
    let Some(engine) = file.engine else {
        if file.max_image_mb.is_some()
            || !file.allowed_images.is_empty()
            || file.isolation.is_some()
        {
            return Err("containers: set `engine` to turn the container backend on".into());
        }
        return Ok(None);
    };
    if !engine.starts_with("unix://") {
        return Err(format!(
            "containers.engine: `{engine}` is not a unix:// socket URL"
        ));
    }
    let max_image_mb = file.max_image_mb.unwrap_or(1024);
    if max_image_mb == 0 || max_image_mb > 64 << 10 {
        return Err("containers.max_image_mb must be 1–65536".into());
    }
    if let Some(bad) = file
        .allowed_images
        .iter()
        .find(|i| !perch_containers::archive::is_image_id(i))
    {
        return Err(format!(
            "containers.allowed_images: `{bad}` is not an image id (sha256:<64 hex>)"
        ));
    }
    let isolation = match file.isolation.as_deref() {
        None | Some("nftables") => Isolation::Nftables,
        Some("engine") => Isolation::Engine,
        Some(other) => {
            return Err(format!(
                "containers.isolation: `{other}` is not `nftables` or `engine`"
            ));
        }
    };
    Ok(Some(ContainersConfig {
        engine,
        max_image_bytes: max_image_mb << 20,
        allowed_images: file.allowed_images,
        maxima,
        isolation,
    }))
}

impl Config {
    /// Reads the optional file and applies overrides; validates everything.
    pub fn load(file: Option<&Path>, over: Overrides) -> Result<Config, String> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("invalid config {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(parsed, over)
    }

    /// Applies overrides to a parsed file and validates the result.
    pub fn resolve(file: FileConfig, over: Overrides) -> Result<Config, String> {
        let listen = over
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let admin_listen = over
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:8081".into());
        let max = DEFAULT_MAX.with(&file.max.limits);
        let limits = DEFAULT_LIMITS.with(&file.limits);
        let mut storage_file = file.storage;
        if over.storage_ca_file.is_some() {
            storage_file.ca_file = over.storage_ca_file;
        }
        let (storage, artifact_grace) = storage_config(storage_file, over.storage_url)?;
        let config = Config {
            data_dir: over
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./perch-data")),
            listen: parse_addr("listen", &listen)?,
            admin_listen: parse_addr("admin_listen", &admin_listen)?,
            limits,
            max,
            max_versions: file
                .max
                .versions_per_function
                .unwrap_or(crate::registry::DEFAULT_MAX_VERSIONS),
            node_name: file.node.name.unwrap_or_else(host_name),
            tenant_concurrency: file.node.tenant_concurrency.unwrap_or(256),
            max_connections: file.node.max_connections.unwrap_or(4096),
            max_body_bytes: file.node.max_body_bytes.unwrap_or(16 << 20),
            max_header_bytes: file.node.max_header_bytes.unwrap_or(32 << 10),
            max_uri_bytes: file.node.max_uri_bytes.unwrap_or(16 << 10),
            max_upload_bytes: MAX_UPLOAD_BYTES,
            component_cache: file.node.component_cache.unwrap_or(1000),
            max_instances: file.node.max_instances.unwrap_or(1000),
            warm_slots: file
                .node
                .warm_slots
                .unwrap_or(512.min(file.node.max_instances.unwrap_or(1000))),
            drain: Duration::from_secs(file.node.drain_seconds.unwrap_or(30)),
            header_read_timeout: Duration::from_secs(
                file.node.header_read_timeout_seconds.unwrap_or(10),
            ),
            trusted_proxies: crate::forwarded::TrustedProxies::parse(&file.node.trusted_proxies)?,
            verify_hosts: file.node.verify_hosts,
            verify_dns: file
                .node
                .verify_dns
                .as_deref()
                .map(|a| parse_addr("node.verify_dns", a))
                .transpose()?,
            egress_allow: file.egress.allow,
            egress_ca_file: file.egress.ca_file,
            compile: CompileBudget {
                cpu_seconds: file.compile.cpu_seconds.unwrap_or(60),
                memory_mb: file.compile.memory_mb.unwrap_or(4096),
                wall_seconds: file.compile.wall_seconds.unwrap_or(120),
            },
            containers: containers_config(file.containers, &file.max)?,
            quotas: file.quotas,
            telemetry: telemetry_config(file.telemetry)?,
            tls: tls_config(file.tls, over.tls_listen)?,
            storage,
            artifact_grace,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.limits.check_defaults(&self.max)?;
        let m = &self.max;
        if m.memory_mb > 16 * 1024 {
            return Err("max.memory_mb may not exceed 16384".into());
        }
        if self.tenant_concurrency == 0 || self.max_connections == 0 || self.max_instances == 0 {
            return Err("node.tenant_concurrency, node.max_connections and node.max_instances must be positive".into());
        }
        if self.warm_slots > self.max_instances {
            return Err(format!(
                "node.warm_slots ({}) may not exceed node.max_instances ({})",
                self.warm_slots, self.max_instances
            ));
        }
        if self.max_versions == 0 {
            return Err("max.versions_per_function must be positive".into());
        }
        if matches!(self.storage, Storage::Postgres(_))
            && self.tls.as_ref().is_some_and(|t| t.acme.is_some())
        {
            // Each node would order on its own, keep its account and its
            // HTTP-01 answers to itself, while the CA's request reaches
            // whichever node the balancer picks.
            return Err("tls.acme is not available in cluster mode (storage.type = \"postgres\") yet: use tenants' uploaded certificates or [[tls.certificates]] files, which every node serves".into());
        }
        if self.node_name.is_empty() || self.node_name.len() > 253 {
            return Err("node.name must be 1 to 253 characters".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("node.header_read_timeout_seconds must be positive".into());
        }
        for a in &self.egress_allow {
            parse_addr("egress.allow", a)?;
        }
        let c = &self.compile;
        if c.cpu_seconds == 0 || c.memory_mb == 0 || c.wall_seconds == 0 {
            return Err(
                "compile.cpu_seconds, compile.memory_mb and compile.wall_seconds must be positive"
                    .into(),
            );
        }
        if let Some(path) = &self.egress_ca_file {
            std::fs::metadata(path)
                .map_err(|e| format!("egress.ca_file {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9001\"\n[limits]\nwall_ms = 500\n",
        )
        .unwrap();
        let c = Config::resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.admin_listen.port(), 9001);
        assert_eq!(c.limits.wall_ms, 500);
        assert_eq!(c.limits.cpu_ms, 50);
        assert_eq!(c.data_dir, PathBuf::from("./perch-data"));
    }

    #[test]
    fn max_holds_the_limit_maxima_and_retention() {
        let file: FileConfig =
            toml::from_str("[max]\ncpu_ms = 1000\nversions_per_function = 3\n").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!((c.max.cpu_ms, c.max_versions), (1000, 3));
        assert_eq!(
            Config::resolve(FileConfig::default(), Overrides::default())
                .unwrap()
                .max_versions,
            100
        );
        for bad in [
            "[max]\nbogus = 1",
            "[max]\nversions_per_function = -1",
            "[max]\nversions_per_function = \"x\"",
        ] {
            assert!(toml::from_str::<FileConfig>(bad).is_err(), "{bad}");
        }
        let zero: FileConfig = toml::from_str("[max]\nversions_per_function = 0").unwrap();
        assert!(Config::resolve(zero, Overrides::default()).is_err());
    }

    #[test]
    fn the_storage_table_picks_postgres_by_url_and_checks_its_bounds() {
        let resolve = |toml_text: &str, url: Option<&str>| {
            let file: FileConfig = toml::from_str(toml_text).unwrap();
            let over = Overrides {
                storage_url: url.map(str::to_string),
                ..Default::default()
            };
            Config::resolve(file, over)
        };
        let url = Some("host=/tmp user=postgres");
        let c = resolve("", None).unwrap();
        assert!(matches!(c.storage, Storage::Redb));
        let c = resolve("[storage]\npool_size = 3\nartifact_grace_s = 7\n", url).unwrap();
        let Storage::Postgres(pg) = &c.storage else {
            panic!("postgres by url")
        };
        assert_eq!(
            (pg.pool_size, c.artifact_grace),
            (3, Duration::from_secs(7))
        );
        assert_eq!(
            resolve("", url).unwrap().artifact_grace,
            Duration::from_secs(3600)
        );
        for (bad, url, says) in [
            (
                "[storage]\nartifact_grace_s = 5\n",
                None,
                "for type = \"postgres\"",
            ),
            ("[storage]\nartifact_grace_s = 0\n", url, "artifact_grace_s"),
            ("[storage]\npool_size = 0\n", url, "pool_size"),
            ("[storage]\ntype = \"postgres\"\n", None, "needs `url`"),
            ("[storage]\ntype = \"mysql\"\n", None, "not a storage type"),
            (
                "[storage]\nca_file = \"/nowhere.pem\"\n",
                None,
                "for type = \"postgres\"",
            ),
            (
                "[storage]\nca_file = \"/nowhere.pem\"\n",
                url,
                "/nowhere.pem",
            ),
        ] {
            let e = resolve(bad, url).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn containers_isolation_is_nftables_unless_left_to_the_engine() {
        let resolve = |toml_text: &str| {
            let file: FileConfig = toml::from_str(toml_text).unwrap();
            Config::resolve(file, Overrides::default()).map(|c| c.containers.map(|c| c.isolation))
        };
        let engine = "[containers]\nengine = \"unix:///run/podman/podman.sock\"\n";
        assert_eq!(resolve(engine).unwrap(), Some(Isolation::Nftables));
        assert_eq!(
            resolve(&format!("{engine}isolation = \"engine\"\n")).unwrap(),
            Some(Isolation::Engine)
        );
        let bad = resolve(&format!("{engine}isolation = \"none\"\n")).unwrap_err();
        assert!(bad.contains("containers.isolation"), "{bad}");
        // Without an engine there is nothing to isolate.
        assert!(resolve("[containers]\nisolation = \"engine\"\n").is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let file: FileConfig = toml::from_str("[limits]\ncpu_ms = 99999999\n").unwrap();
        let err = Config::resolve(file, Overrides::default()).unwrap_err();
        assert!(err.contains("above max.cpu_ms"), "{err}");
        let err = Config::resolve(
            FileConfig::default(),
            Overrides {
                listen: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn acme_is_refused_in_cluster_mode() {
        let text =
            "[tls]\nlisten = \"127.0.0.1:8443\"\n[tls.acme]\ndirectory = \"https://ca.test/dir\"\n";
        let over = |url: Option<&str>| Overrides {
            storage_url: url.map(str::to_string),
            ..Default::default()
        };
        let file = || toml::from_str::<FileConfig>(text).unwrap();
        assert!(
            Config::resolve(file(), over(None))
                .unwrap()
                .tls
                .unwrap()
                .acme
                .is_some()
        );
        let e = Config::resolve(file(), over(Some("host=/tmp user=postgres"))).unwrap_err();
        assert!(
            e.contains("tls.acme is not available in cluster mode"),
            "{e}"
        );
    }

    #[test]
    fn tls_is_on_with_a_listen_address() {
        let c = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert!(c.tls.is_none());
        let file: FileConfig = toml::from_str(
            "[tls]\nlisten = \"127.0.0.1:8443\"\n[[tls.certificates]]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n[tls.default_cert]\ncert_file = \"d.pem\"\nkey_file = \"d.key\"\n",
        )
        .unwrap();
        let tls = Config::resolve(file, Overrides::default())
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.listen.port(), 8443);
        assert_eq!(tls.certificates.len(), 1);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.default_cert.unwrap().key_file, PathBuf::from("d.key"));
        let flag = Overrides {
            tls_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let tls = Config::resolve(FileConfig::default(), flag)
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.listen.port(), 0);
        for (bad, says) in [
            (
                "[[tls.certificates]]\ncert_file = \"a\"\nkey_file = \"b\"",
                "set `listen`",
            ),
            ("[tls]\nlisten = \"x\"", "tls.listen"),
            (
                "[tls]\nlisten = \"127.0.0.1:1\"\nhandshake_timeout_seconds = 0",
                "handshake",
            ),
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            let err = Config::resolve(file, Overrides::default()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(toml::from_str::<FileConfig>("[tls]\nbogus = 1").is_err());
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn documented_example_matches_the_defaults() {
        let text = include_str!("../../perch.example.toml");
        let file: FileConfig = toml::from_str(text).expect("perch.example.toml parses");
        let from_file = Config::resolve(file, Overrides::default()).unwrap();
        let defaults = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(from_file.limits, defaults.limits);
        assert_eq!(from_file.max, defaults.max);
        assert_eq!(from_file.max_versions, defaults.max_versions);
        assert_eq!(from_file.tenant_concurrency, defaults.tenant_concurrency);
        assert_eq!(from_file.max_body_bytes, defaults.max_body_bytes);
        assert_eq!(from_file.max_header_bytes, defaults.max_header_bytes);
        assert_eq!(from_file.max_uri_bytes, defaults.max_uri_bytes);
        assert_eq!(from_file.drain, defaults.drain);
        assert_eq!(from_file.max_connections, defaults.max_connections);
        assert_eq!(from_file.max_instances, defaults.max_instances);
        assert_eq!(from_file.warm_slots, defaults.warm_slots);
        assert_eq!(from_file.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(from_file.egress_allow, defaults.egress_allow);
        assert_eq!(from_file.egress_ca_file, defaults.egress_ca_file);
        assert_eq!(from_file.compile, defaults.compile);
    }

    #[test]
    fn warm_slots_fit_in_the_pool() {
        let parse = |t: &str| Config::resolve(toml::from_str(t).unwrap(), Overrides::default());
        assert_eq!(parse("").unwrap().warm_slots, 512);
        // A smaller pool lowers the default with it…
        assert_eq!(
            parse("[node]\nmax_instances = 100").unwrap().warm_slots,
            100
        );
        // …but an explicit value above the pool is a mistake.
        let err = parse("[node]\nmax_instances = 100\nwarm_slots = 200").unwrap_err();
        assert!(err.contains("node.warm_slots (200)"), "{err}");
        assert_eq!(parse("[node]\nwarm_slots = 0").unwrap().warm_slots, 0);
    }

    #[test]
    fn trusted_proxies_must_be_addresses_or_cidrs() {
        let parse = |t: &str| Config::resolve(toml::from_str(t).unwrap(), Overrides::default());
        let c = parse("[node]\ntrusted_proxies = [\"10.42.0.0/16\", \"::1\"]").unwrap();
        assert!(c.trusted_proxies.trusts("10.42.1.2".parse().unwrap()));
        let err = parse("[node]\ntrusted_proxies = [\"ingress\"]").unwrap_err();
        assert!(err.contains("node.trusted_proxies: \"ingress\""), "{err}");
    }
}
