//! Perch's gateway: the data plane and admin API servers, routing by host,
//! the registry of tenants, functions, versions, routes and tokens, and the
//! `perch` command line.
//!
//! ```no_run
//! use perch_gateway::config::{Config, Overrides};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None, Overrides::default())?;
//! perch_gateway::server::serve(config, None, |s| println!("data={} admin={}", s.data, s.admin)).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod kv_api;
pub mod metrics;
pub mod names;
pub mod registry;
pub mod routing;
pub mod scaffold;
pub mod secrets;
pub mod server;
