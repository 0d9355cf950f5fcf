//! Logging to the function's log.
//!
//! The function's stdout and stderr are its log, kept by Perch and written
//! to the server log with the tenant, function and version. The macros
//! [`debug!`](crate::debug), [`info!`](crate::info), [`warn!`](crate::warn)
//! and [`error!`](crate::error) write one line each, prefixed with the
//! level; line breaks inside a message are escaped so one call stays one
//! line.
//!
//! ```no_run
//! let user = "ada";
//! perch_sdk::info!("login by {user}");
//! perch_sdk::warn!("slow origin: {} ms", 950);
//! ```
use std::fmt;
use std::io::Write as _;

/// How severe a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal events.
    Info,
    /// Something unexpected the function handled.
    Warn,
    /// A failure.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one log line; the macros call this.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let message = args.to_string().replace('\n', "\\n");
    let line = format!("[{}] {message}\n", level.as_str());
    // The log is best effort: a full log buffer must not fail the request.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Logs at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)+)) };
}

/// Logs at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)+)) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)+)) };
}

/// Logs at error level, `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)+)) };
}
