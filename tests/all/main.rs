//! End-to-end tests against the real `perch` binary on 127.0.0.1:0.
mod admin;
mod cli;
mod dataplane;
mod examples;
mod kv;
mod lifecycle;
mod settings;
mod uploads;
