//! The one accept loop every listener runs: a connection cap (a permit per
//! open connection; more wait in the listen backlog), HTTP/1.1 with a
//! header-read timeout and upgrades (a container's WebSocket), graceful
//! shutdown: once `stop` turns true, each connection finishes its request
//! in flight and closes, and [`Drain::wait`] returns when all have.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::http::ResBody;

/// The open connections of one listener, to wait for at shutdown.
pub(super) struct Drain {
    connections: Arc<Semaphore>,
    max: u32,
}

impl Drain {
    /// Room for `max` connections at once.
    pub(super) fn new(max: usize) -> Drain {
        let max = u32::try_from(max).unwrap_or(u32::MAX >> 3);
        Drain {
            connections: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Returns once every connection has closed.
    pub(super) async fn wait(&self) {
        let _ = self.connections.acquire_many(self.max).await;
    }
}

/// How a listener treats its connections.
pub(super) struct Settings {
    /// Time to receive a request head (also the idle limit between
    /// requests of a kept-alive connection).
    pub(super) header_read_timeout: Duration,
    /// hyper's read buffer; `None` keeps hyper's default.
    pub(super) max_buf_size: Option<usize>,
    /// Disable Nagle's algorithm (small responses go out at once).
    pub(super) nodelay: bool,
}

/// Accepts connections on `listener` until `stop` turns true, serving each
/// request with `handler(peer, request)`. Each open connection holds one
/// of `drain`'s permits, so the caller can wait for them to close.
pub(super) async fn accept_loop<H, F>(
    listener: TcpListener,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
    drain: &Drain,
    handler: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let connections = drain.connections.clone();
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("semaphore open"),
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if settings.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        if let Some(size) = settings.max_buf_size {
            builder.max_buf_size(size);
        }
        let handler = handler.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let response = handler(peer, req);
                async move { Ok::<_, Infallible>(response.await) }
            }),
        );
        let mut stopping = stop.clone();
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            let stopped = async {
                // The sender gone counts as a stop.
                let _ = stopping.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
}
