//! The function's vars and secrets, set through its settings
//! (`perch functions settings` or `PUT …/functions/{name}/settings`), read
//! through `wasi:config/store`. They are also environment variables.
//!
//! ```no_run
//! use perch_sdk::config;
//!
//! # fn demo() -> perch_sdk::Result<()> {
//! let greeting = config::var("GREETING").unwrap_or_else(|| "Hello".into());
//! let key = config::secret("API_KEY")?; // 500 (detail in the log) when unset
//! # Ok(()) }
//! ```
use crate::bindings::wasi::config::store;
use crate::error::{Error, Result};

/// The value of a var or secret, if set.
pub fn var(name: &str) -> Option<String> {
    store::get(name).ok().flatten()
}

/// A value the function cannot work without: a missing one is a server
/// error (500, with the name in the function's log only).
pub fn secret(name: &str) -> Result<String> {
    var(name)
        .ok_or_else(|| Error::internal(format!("`{name}` is not set in the function's settings")))
}

/// Every var and secret as `(name, value)`.
pub fn all() -> Vec<(String, String)> {
    store::get_all().unwrap_or_default()
}
