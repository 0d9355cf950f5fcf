//! A blocking connection pool.
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::Client;

use crate::tls::PgTls;

/// How to reach the database, and what every connection is set up with.
/// (Its `Debug` leaves the URL out: it may hold a password.)
#[derive(Clone)]
pub struct PgConfig {
    /// A libpq connection string (`host=… user=… dbname=…`) or a
    /// `postgres://` URL.
    pub url: String,
    /// Connections a pool opens at most.
    pub pool_size: usize,
    /// The server aborts any statement running longer
    /// (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Giving up on a connection attempt, and on waiting for a free pooled
    /// connection.
    pub connect_timeout: Duration,
    /// TLS: unverified unless set up with a CA file ([`PgConfig::verify_with`]).
    pub tls: PgTls,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// `url` with the defaults: 8 connections, 5 s statements, 5 s to
    /// connect.
    pub fn new(url: &str) -> PgConfig {
        PgConfig {
            url: url.to_string(),
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            tls: PgTls::unverified(),
        }
    }

    /// Requires TLS with the server's certificate verified against the CA
    /// certificates in `ca_file` (PEM); refuses a URL with
    /// `sslmode=disable`.
    pub fn verify_with(&mut self, ca_file: &std::path::Path) -> Result<(), String> {
        let config: postgres::Config = self
            .url
            .parse()
            .map_err(|e: postgres::Error| format!("storage url: {e}"))?;
        if config.get_ssl_mode() == postgres::config::SslMode::Disable {
            return Err(
                "storage: ca_file asks for verified TLS, the url for sslmode=disable".into(),
            );
        }
        self.tls = PgTls::verified(ca_file)?;
        Ok(())
    }

    /// Opens one connection named `application_name` (what
    /// `pg_stat_activity` shows).
    pub fn connect(&self, application_name: &str) -> Result<Client, String> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e: postgres::Error| format!("storage url: {e}"))?;
        config
            .application_name(application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(&format!(
                "-c statement_timeout={}",
                self.statement_timeout.as_millis().max(1)
            ));
        let unix_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, postgres::config::Host::Unix(_)));
        if unix_only {
            // As libpq: no TLS over a Unix socket (the server offers none
            // there, and there is no name to verify).
            config.ssl_mode(postgres::config::SslMode::Disable);
        } else if self.tls.is_verified() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        config
            .connect(self.tls.clone())
            .map_err(|e| crate::describe(&e))
    }
}

struct Inner {
    config: PgConfig,
    name: String,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    /// Idle connections, with when each went idle.
    idle: Vec<(Client, std::time::Instant)>,
    open: usize,
}

/// A connection idle longer is checked before it is handed out.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Whether an idle connection still reaches the server: one round trip.
/// The server may have gone away and come back (a restart) without the
/// connection knowing; checking first keeps the caller's statement from
/// failing on a dead connection while the database is up.
fn still_up(client: &mut Client, config: &PgConfig) -> bool {
    client.is_valid(config.connect_timeout).is_ok()
}

/// One connection of its own (not pooled) for a thread that works alone:
/// opened on first use, opened again when it broke, and checked like a
/// pooled one after being idle a while.
pub struct Dedicated {
    config: PgConfig,
    name: String,
    client: Option<Client>,
    used: std::time::Instant,
}

impl Dedicated {
    /// Not connected yet.
    pub fn new(config: &PgConfig, name: &str) -> Dedicated {
        Dedicated {
            config: config.clone(),
            name: name.to_string(),
            client: None,
            used: std::time::Instant::now(),
        }
    }

    /// Holding `client`, already open.
    pub fn with(config: &PgConfig, name: &str, client: Client) -> Dedicated {
        Dedicated {
            client: Some(client),
            ..Dedicated::new(config, name)
        }
    }

    /// Gives up the connection, if open (to close it elsewhere: closing
    /// blocks).
    pub fn take(&mut self) -> Option<Client> {
        self.client.take()
    }

    /// The connection, (re)opened if needed.
    pub fn get(&mut self) -> Result<&mut Client, String> {
        let idle = std::mem::replace(&mut self.used, std::time::Instant::now()).elapsed();
        let usable = match &mut self.client {
            Some(c) if c.is_closed() => false,
            Some(c) => idle < IDLE_CHECK || still_up(c, &self.config),
            None => false,
        };
        if !usable {
            // A broken client is dropped here, on the caller's (blocking)
            // thread.
            self.client = None;
            self.client = Some(self.config.connect(&self.name)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// Up to `pool_size` connections, opened on demand and reused; a
/// connection that broke is dropped instead of going back. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Pool {
    /// A pool whose connections are named `name`; connects nothing yet.
    pub fn new(config: PgConfig, name: &str) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                config,
                name: name.to_string(),
                state: Mutex::new(State {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            }),
        }
    }

    /// An idle connection, a new one if the pool has room, or the next one
    /// freed (waiting up to the connect timeout).
    pub fn get(&self) -> Result<Pooled, String> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = std::time::Instant::now() + inner.config.connect_timeout;
        loop {
            if let Some((mut client, since)) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                if since.elapsed() < IDLE_CHECK {
                    return Ok(self.pooled(client));
                }
                drop(state);
                if still_up(&mut client, &inner.config) {
                    return Ok(self.pooled(client));
                }
                drop(client);
                state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                state.open -= 1;
                continue;
            }
            if state.open < inner.config.pool_size.max(1) {
                state.open += 1;
                drop(state);
                return match inner.config.connect(&inner.name) {
                    Ok(client) => Ok(self.pooled(client)),
                    Err(e) => {
                        self.release(None);
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no free database connection within {:?} ({} in use)",
                    inner.config.connect_timeout, state.open
                ));
            }
            state = inner
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn pooled(&self, client: Client) -> Pooled {
        Pooled {
            client: Some(client),
            pool: self.clone(),
        }
    }

    fn release(&self, client: Option<Client>) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        match client {
            Some(c) if !c.is_closed() => state.idle.push((c, std::time::Instant::now())),
            _ => state.open -= 1,
        }
        drop(state);
        self.inner.freed.notify_one();
    }
}

/// A connection taken from a [`Pool`]; goes back when dropped.
pub struct Pooled {
    client: Option<Client>,
    pool: Pool,
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.release(self.client.take());
    }
}

impl Drop for Inner {
    /// Closing a connection blocks (and panics on an async thread): the
    /// idle ones are closed on a thread of their own.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let idle = std::mem::take(&mut state.idle);
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("perch-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}
