//! What the node tells its operator: tracing set-up (logs on stderr), the
//! Prometheus metrics of `GET /metrics`, and tenants' usage totals.
pub mod metrics;
pub mod trace;
pub mod usage;

pub use metrics::Metrics;
pub use usage::{TenantUsage, Usage};

/// Logs to stderr, filtered by `PERCH_LOG` (default `info`).
pub fn init_tracing() {
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
