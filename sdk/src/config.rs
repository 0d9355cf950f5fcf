//! The function's vars and secrets (`wasi:config/store`); they are also
//! environment variables.
//!
//! ```no_run
//! let greeting = perch_sdk::config::var("GREETING").unwrap_or_else(|| "Hello".into());
//! ```
use crate::bindings::wasi::config::store;

/// The value of a var or secret, if set.
pub fn var(name: &str) -> Option<String> {
    store::get(name).ok().flatten()
}

/// Every var and secret as `(name, value)`.
pub fn all() -> Vec<(String, String)> {
    store::get_all().unwrap_or_default()
}
