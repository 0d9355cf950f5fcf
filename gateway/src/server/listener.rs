//! The one accept loop every listener runs: a connection cap (a permit per
//! open connection; more wait in the listen backlog), HTTP/1.1 with a
//! header-read timeout and upgrades (a container's WebSocket), on the TLS
//! listener a handshake timeout and HTTP/2 by ALPN (with its own idle and
//! header time bound: hyper's is HTTP/1 only), graceful shutdown: once
//! `stop` turns true, each connection finishes its request in flight and
//! closes, and [`Drain::wait`] returns when all have.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::http::{Holding, ResBody};

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
#[derive(Clone)]
pub(super) struct Settings {
    /// Time to receive a request head (also the idle limit between
    /// requests of a kept-alive connection).
    pub(super) header_read_timeout: Duration,
    /// hyper's read buffer; `None` keeps hyper's default.
    pub(super) max_buf_size: Option<usize>,
    /// Disable Nagle's algorithm (small responses go out at once).
    pub(super) nodelay: bool,
    /// TLS on this listener.
    pub(super) tls: Option<TlsSettings>,
}

/// The TLS side of a listener.
#[derive(Clone)]
pub(super) struct TlsSettings {
    /// The server configuration (certificates by SNI, ALPN).
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    /// Time a client has to complete the handshake.
    pub(super) handshake_timeout: Duration,
    /// HTTP/2's header list limit: above Perch's own header limit, so
    /// that Perch answers an oversized head with its 431, not h2.
    pub(super) max_header_list_size: u32,
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
        let (settings, handler, stopping) = (settings.clone(), handler.clone(), stop.clone());
        tokio::spawn(async move {
            match &settings.tls {
                None => serve_http1(stream, &settings, peer, handler, stopping).await,
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                            .await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_http2(stream, &settings, tls, peer, handler, stopping).await
                            } else {
                                serve_http1(stream, &settings, peer, handler, stopping).await
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The sender gone counts as a stop.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_http1<I, H, F>(
    io: I,
    settings: &Settings,
    peer: SocketAddr,
    handler: H,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(SocketAddr, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    if let Some(size) = settings.max_buf_size {
        builder.max_buf_size(size);
    }
    let conn = builder
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| {
                let response = handler(peer, req);
                async move { Ok::<_, Infallible>(response.await) }
            }),
        )
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Requests open on an HTTP/2 connection (until their response body is
/// done) and when the last one ended: the connection's idle time.
struct Activity {
    born: Instant,
    open: AtomicUsize,
    /// Milliseconds after `born` when a request last began or ended.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has been open, or `None` while a request is.
    fn idle(&self) -> Option<Duration> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.born.elapsed().saturating_sub(since))
    }
}

/// One open request of an [`Activity`], until dropped with its body.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP/2 has no header-read timeout in hyper: a connection with no
/// request open for `header_read_timeout` (a client that sends nothing,
/// or never finishes a request's headers) gets a GOAWAY, and is closed if
/// it is still idle that long after.
async fn serve_http2<I, H, F>(
    io: I,
    settings: &Settings,
    tls: &TlsSettings,
    peer: SocketAddr,
    handler: H,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(SocketAddr, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        born: Instant::now(),
        open: AtomicUsize::new(0),
        last: AtomicU64::new(0),
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(tls.max_header_list_size);
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let open = Open::new(&activity);
            let response = handler(peer, req);
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|b| Holding::new(b, open).boxed_unsync()))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limit = settings.header_read_timeout;
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut going_away = false;
    loop {
        let wait = match activity.idle() {
            Some(idle) if idle >= limit => {
                if going_away {
                    tracing::debug!(%peer, "HTTP/2 connection idle after GOAWAY: closed");
                    return;
                }
                conn.as_mut().graceful_shutdown();
                going_away = true;
                activity.touch();
                limit
            }
            Some(idle) => limit - idle,
            None => limit,
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut stop, if !going_away => {
                conn.as_mut().graceful_shutdown();
                going_away = true;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
