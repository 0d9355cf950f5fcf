//! PostgreSQL plumbing shared by Perch's cluster-mode stores (the registry,
//! KV, artifacts, leases): what a connection is ([`PgConfig`]), a small
//! blocking pool ([`Pool`]), numbered schema migrations that refuse a newer
//! schema ([`migrate`]), a thread that LISTENs and reconnects
//! ([`listen`]), TLS with rustls ([`PgTls`]), and throwaway databases for
//! tests ([`test_database`]).
//!
//! Every call here blocks: callers run it on blocking threads (or their
//! own), never on an async worker.
#![deny(missing_docs)]

mod listen;
mod migrate;
mod pool;
mod tls;

pub use listen::{Listening, listen};
pub use migrate::migrate;
pub use pool::{Dedicated, PgConfig, Pool, Pooled};
pub use postgres;
pub use tls::PgTls;

/// A failure talking to PostgreSQL, as text for the server log. (The
/// stores map it to their own "unavailable" error.)
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            // The kind ("error performing TLS handshake"), then why.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            text
        }
    }
}

/// A new, empty database on the PostgreSQL server of
/// `PERCH_TEST_POSTGRES_URL`, for one test, as a connection string; `None`
/// (with a note on stderr) when the variable is unset and
/// `PERCH_SKIP_EXTERNAL=1`. Panics when it is unset otherwise: `./test.sh`
/// starts a server for the tests.
pub fn test_database() -> Option<String> {
    let Ok(url) = std::env::var("PERCH_TEST_POSTGRES_URL") else {
        if std::env::var("PERCH_SKIP_EXTERNAL").as_deref() == Ok("1") {
            eprintln!("skipped: PostgreSQL (PERCH_TEST_POSTGRES_URL is not set)");
            return None;
        }
        panic!(
            "PERCH_TEST_POSTGRES_URL is not set: ./test.sh starts a PostgreSQL server for the tests (or set PERCH_SKIP_EXTERNAL=1)"
        );
    };
    let name = format!("perch_test_{:016x}", fastrand::u64(..));
    let mut admin =
        postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test PostgreSQL");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    Some(format!("{url} dbname={name}"))
}
