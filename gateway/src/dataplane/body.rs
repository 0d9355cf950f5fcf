//! The request body as the guest sees it: an error once it passes the
//! limit; a container's response body whose first frame Perch has already
//! read. (Response bodies hold the tenant's concurrency slot through
//! `http::Holding`.)
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use perch_runtime::HttpError;

/// The request body as the guest sees it: an error once it passes the limit.
pub struct LimitedBody {
    /// `None`: an empty body (a request Perch makes itself, e.g. a cron tick).
    pub(super) inner: Option<Incoming>,
    pub(super) remaining: u64,
    pub(super) exceeded: Arc<AtomicBool>,
}

impl LimitedBody {
    /// An empty body.
    pub fn empty() -> LimitedBody {
        LimitedBody {
            inner: None,
            remaining: 0,
            exceeded: Arc::default(),
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            other => other.map(|o| o.map(|r| r.map_err(HttpError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// A body whose first frame was read ahead (`first`), then the rest.
pub(super) struct Prefixed<B> {
    first: Option<Frame<Bytes>>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub(super) fn new(first: Option<Frame<Bytes>>, rest: B) -> Self {
        Prefixed { first, rest }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let ahead = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}
