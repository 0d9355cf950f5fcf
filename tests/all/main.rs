//! End-to-end tests against the real `perch` binary on 127.0.0.1:0.
mod admin;
mod backup;
mod bench;
mod cli;
mod containers;
mod dataplane;
mod egress;
mod examples;
mod fuzz;
mod hostile;
mod kv;
mod lifecycle;
mod operations;
mod settings;
mod telemetry;
mod tls;
mod uploads;
