//! Rust SDK for Perch functions.
//!
//! A Perch function is a standard `wasi:http/proxy` component; this crate
//! adds typed access to what Perch offers beyond HTTP: the key-value store
//! ([`kv`], over `wasi:keyvalue@0.2.0-draft` and Perch's `perch:kv/ext`) and
//! configuration ([`config`], over `wasi:config`). HTTP itself comes from
//! [`wstd`], re-exported here.
//!
//! ```no_run
//! use perch_sdk::kv::Kv;
//!
//! fn count_visit() -> Result<u64, perch_sdk::kv::Error> {
//!     let kv = Kv::open("default")?;
//!     kv.increment("visits", 1)
//! }
//! ```
#![deny(missing_docs)]

pub use wstd;

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: ["../wit", "wit"],
        world: "perch:sdk/guest",
        generate_all,
    });
}

pub mod config;
pub mod kv;
