//! A dedicated connection that LISTENs, and comes back after a loss.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::PgConfig;

/// The listening thread's handle: dropping it stops the thread (within a
/// second).
pub struct Listening {
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

impl Listening {
    /// Whether the listening connection is up at the moment.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the first connection; whether it is up.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.connected() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.connected()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a thread that LISTENs on `channels` over its own connection named
/// `name` and calls `note(channel, payload)` for each notification. After
/// every (re)connection, once listening, it calls `caught_up` with the
/// connection: whatever was missed while disconnected is to be found there
/// (the caller reads the current state). A lost connection is retried with
/// backoff (100 ms doubling to 5 s); each loss is logged once.
pub fn listen(
    config: &PgConfig,
    name: &str,
    channels: &[&str],
    mut caught_up: impl FnMut(&mut Client) -> Result<(), postgres::Error> + Send + 'static,
    mut note: impl FnMut(&str, &str) + Send + 'static,
) -> std::io::Result<Listening> {
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    let handle = Listening {
        stop: stop.clone(),
        connected: connected.clone(),
    };
    let (config, name) = (config.clone(), name.to_string());
    let listen_sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    std::thread::Builder::new()
        .name("perch-pg-listen".into())
        .spawn(move || {
            let mut delay = Duration::from_millis(100);
            let mut lost = false;
            while !stop.load(Ordering::Relaxed) {
                let session = (|| -> Result<(), String> {
                    let mut client = config.connect(&name)?;
                    let e = |e: postgres::Error| crate::describe(&e);
                    client.batch_execute(&listen_sql).map_err(e)?;
                    caught_up(&mut client).map_err(e)?;
                    connected.store(true, Ordering::Relaxed);
                    delay = Duration::from_millis(100);
                    if std::mem::take(&mut lost) {
                        tracing::info!(connection = %name, "PostgreSQL notification connection back");
                    }
                    loop {
                        {
                            let mut notes = client.notifications();
                            let mut timed = notes.timeout_iter(Duration::from_secs(1));
                            while let Some(n) = timed.next().map_err(e)? {
                                note(n.channel(), n.payload());
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        // A round trip, so a dead connection shows up here.
                        client.is_valid(Duration::from_secs(5)).map_err(e)?;
                    }
                })();
                connected.store(false, Ordering::Relaxed);
                if let Err(e) = session {
                    if !stop.load(Ordering::Relaxed) && !std::mem::replace(&mut lost, true) {
                        tracing::warn!(error = %e, connection = %name, "lost the PostgreSQL notification connection; reconnecting");
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        })?;
    Ok(handle)
}
