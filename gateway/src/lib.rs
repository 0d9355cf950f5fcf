//! Perch's gateway: the data plane and admin API servers, routing by host,
//! the registry of tenants, functions, versions, routes and tokens, and the
//! `perch` command line.
//!
//! Modules, and the one way their dependencies point:
//!
//! | module | job | uses |
//! |---|---|---|
//! | [`cli`] | clap commands; a client of the admin API | `server` (for `perch serve`), `api::kv` (header names), `registry` (scopes), `config` |
//! | [`server`] | builds everything from the config, one accept loop for every listener, warm-up, drain | everything below |
//! | [`api`] | the admin API: router + auth, one file per resource | `app`, `registry`, `logs`, `cron`, `artifacts`, `limits`, `names`, `secrets` |
//! | [`app`] | the admin API's shared state | `registry`, `logs`, `cron`, `artifacts`, `telemetry`, `throttle`, `config` |
//! | [`cron`] | cron expressions, the scheduler and its [`cron::TickLease`] | `dataplane` (the executor), `registry`, `logs` |
//! | [`dataplane`] | request checks, version pick, reserved headers, request ids, the [`dataplane::Executor`] seam, error answers | `registry`, `routing`, `logs`, `telemetry`, `config`, `names` |
//! | [`artifacts`] | deleting components no kept version runs | `registry` |
//! | [`logs`] | functions' logs: events, the hub of rings and followers, the per-request sink | — |
//! | [`registry`] | the records, their rules, the [`registry::RegistryStore`] trait and its redb implementation, the routing snapshot's construction | `routing`, `limits`, `secrets`, `names` |
//! | [`routing`] | the route table snapshot, host and path matching, the deployment split | `names` |
//! | [`telemetry`] | tracing set-up and Prometheus metrics | — |
//! | [`config`], [`limits`], [`names`], [`secrets`], [`throttle`], [`http`] | configuration, the limit table, name rules, secret material, auth throttling, response helpers | — |
//!
//! ```no_run
//! use perch_gateway::config::{Config, Overrides};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None, Overrides::default())?;
//! perch_gateway::server::serve(config, None, |s| println!("data={} admin={}", s.data, s.admin)).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod artifacts;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod cron;
pub mod dataplane;
pub mod forwarded;
pub mod http;
pub mod limits;
pub mod logs;
pub mod migrate;
pub mod names;
pub mod nodes;
pub mod pg;
pub mod registry;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod verify;
