//! Requests and responses: the [`http`](https://docs.rs/http) crate's types
//! with a streaming [`Body`], plus helpers to read and build them.
//!
//! [`Request`] and [`Response`] are `http::Request<Body>` and
//! `http::Response<Body>`, so everything of the `http` crate applies;
//! [`RequestExt`] and [`ResponseExt`] (both in the [prelude](crate::prelude))
//! add the everyday shortcuts.
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Greeting { name: String }
//!
//! async fn greet(mut req: Request) -> Result<Response> {
//!     let lang = req.query("lang").unwrap_or_else(|| "en".into());
//!     let Greeting { name } = req.json().await?; // 400 on bad JSON
//!     let text = if lang == "fr" { format!("Bonjour, {name}!") } else { format!("Hello, {name}!") };
//!     Ok(Response::from_json(&serde_json::json!({ "greeting": text }))
//!         .with_header("cache-control", "no-store"))
//! }
//! ```
//!
//! Bodies stream: [`Chunks`] reads a request body piece by piece,
//! [`map_chunks`] transforms one on the fly and [`stream_body`] produces one
//! lazily, so a function can pass on more data than its memory holds.
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//! use perch_sdk::http::{map_chunks, Chunks};
//!
//! // Echo the body upper-cased, one chunk at a time.
//! async fn shout(req: Request) -> Response {
//!     Response::new(map_chunks(req.into_body(), |chunk| chunk.to_ascii_uppercase().into()))
//! }
//!
//! // Count the bytes without keeping them.
//! async fn count(req: Request) -> Result<Response> {
//!     let mut chunks = Chunks::new(req.into_body());
//!     let mut total = 0;
//!     while let Some(chunk) = chunks.next().await {
//!         total += chunk?.len();
//!     }
//!     Ok(Response::from_text(format!("{total}\n")))
//! }
//! ```
use std::future::Future;

use http_body_util::BodyExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub use ::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
pub use wstd::http::Body;
pub use wstd::http::body::Bytes;

/// An incoming request (`http::Request` with a streaming body).
pub type Request = ::http::Request<Body>;

/// A response (`http::Response` with a streaming body).
pub type Response = ::http::Response<Body>;

/// A builder for outgoing requests (see [`crate::fetch`]).
pub type RequestBuilder = ::http::request::Builder;

/// Path parameters captured by the [`Router`](crate::router::Router).
#[derive(Debug, Clone, Default)]
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

/// Shortcuts for reading a [`Request`].
pub trait RequestExt {
    /// The first value of query parameter `name`, percent-decoded
    /// (`+` is a space).
    fn query(&self, name: &str) -> Option<String>;

    /// Every query parameter in order, percent-decoded.
    fn query_pairs(&self) -> Vec<(String, String)>;

    /// A path parameter captured by the router (`:id` in `/items/:id`).
    fn param(&self, name: &str) -> Option<&str>;

    /// A header's value, if present and valid text.
    fn header_str(&self, name: &str) -> Option<&str>;

    /// The value of cookie `name` from the `Cookie` headers.
    fn cookie(&self, name: &str) -> Option<&str>;
}

/// Reads a whole [`Request`] or [`Response`] body (for bodies too big to
/// hold, use [`Chunks`]).
///
/// A request body that can't be read or parsed is the client's fault
/// (400 `invalid_body` / `invalid_json`, with serde's message); a fetched
/// response's is the origin's (502 `invalid_upstream_body`).
pub trait ReadBody {
    /// The whole body as bytes.
    fn bytes(&mut self) -> impl Future<Output = Result<Bytes>>;

    /// The whole body as UTF-8 text.
    fn text(&mut self) -> impl Future<Output = Result<String>>;

    /// The whole body parsed as JSON.
    fn json<T: DeserializeOwned>(&mut self) -> impl Future<Output = Result<T>>;
}

async fn read_bytes(body: &mut Body, status: StatusCode, code: &'static str) -> Result<Bytes> {
    body.bytes_contents()
        .await
        .map_err(|e| Error::new(status, code, format!("reading the body: {e:#}")))
}

fn utf8(bytes: Bytes, status: StatusCode, code: &'static str) -> Result<String> {
    String::from_utf8(bytes.into())
        .map_err(|_| Error::new(status, code, "the body is not UTF-8 text"))
}

impl ReadBody for Request {
    async fn bytes(&mut self) -> Result<Bytes> {
        read_bytes(self.body_mut(), StatusCode::BAD_REQUEST, "invalid_body").await
    }

    async fn text(&mut self) -> Result<String> {
        utf8(self.bytes().await?, StatusCode::BAD_REQUEST, "invalid_body")
    }

    async fn json<T: DeserializeOwned>(&mut self) -> Result<T> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
    }
}

impl ReadBody for Response {
    async fn bytes(&mut self) -> Result<Bytes> {
        read_bytes(
            self.body_mut(),
            StatusCode::BAD_GATEWAY,
            "invalid_upstream_body",
        )
        .await
    }

    async fn text(&mut self) -> Result<String> {
        utf8(
            self.bytes().await?,
            StatusCode::BAD_GATEWAY,
            "invalid_upstream_body",
        )
    }

    async fn json<T: DeserializeOwned>(&mut self) -> Result<T> {
        serde_json::from_slice(&self.bytes().await?).map_err(|e| {
            Error::new(
                StatusCode::BAD_GATEWAY,
                "invalid_upstream_body",
                e.to_string(),
            )
        })
    }
}

impl RequestExt for Request {
    fn query(&self, name: &str) -> Option<String> {
        let query = self.uri().query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        let Some(query) = self.uri().query() else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    fn param(&self, name: &str) -> Option<&str> {
        let params = self.extensions().get::<Params>()?;
        params
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        self.headers().get(name)?.to_str().ok()
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"'))
            })
    }
}

/// Percent-decodes a query component; `+` is a space. Invalid escapes stay
/// as they are; invalid UTF-8 becomes U+FFFD.
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Shortcuts for building a [`Response`]; call them as `Response::from_text(…)`
/// with this trait in scope.
pub trait ResponseExt: Sized {
    /// 200 with a `text/plain; charset=utf-8` body.
    fn from_text(body: impl Into<String>) -> Self;

    /// 200 with a `text/html; charset=utf-8` body.
    fn from_html(body: impl Into<String>) -> Self;

    /// 200 with `value` as an `application/json` body.
    fn from_json<T: Serialize + ?Sized>(value: &T) -> Self;

    /// 200 with raw bytes and the given content type.
    fn from_bytes(body: impl Into<Bytes>, content_type: &str) -> Self;

    /// An empty body with `status`.
    fn empty(status: StatusCode) -> Self;

    /// 302 to `location`.
    fn redirect(location: &str) -> Self;

    /// The same response with another status.
    fn with_status(self, status: StatusCode) -> Self;

    /// The same response with one more header (appended, so several
    /// `set-cookie` headers can coexist).
    ///
    /// # Panics
    /// If `name` or `value` is not a valid header name or value; the
    /// function then fails with a 500.
    fn with_header<K, V>(self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: std::fmt::Debug,
        V: TryInto<HeaderValue>,
        V::Error: std::fmt::Debug;
}

fn with_type(body: Body, content_type: &str) -> Response {
    let mut resp = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

impl ResponseExt for Response {
    fn from_text(body: impl Into<String>) -> Self {
        with_type(body.into().into(), "text/plain; charset=utf-8")
    }

    fn from_html(body: impl Into<String>) -> Self {
        with_type(body.into().into(), "text/html; charset=utf-8")
    }

    fn from_json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => with_type(bytes.into(), "application/json"),
            Err(e) => Error::internal(format!("serializing the response: {e}")).into_response(),
        }
    }

    fn from_bytes(body: impl Into<Bytes>, content_type: &str) -> Self {
        with_type(body.into().into(), content_type)
    }

    fn empty(status: StatusCode) -> Self {
        Response::new(Body::empty()).with_status(status)
    }

    fn redirect(location: &str) -> Self {
        Response::empty(StatusCode::FOUND).with_header(header::LOCATION, location)
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        *self.status_mut() = status;
        self
    }

    fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: std::fmt::Debug,
        V: TryInto<HeaderValue>,
        V::Error: std::fmt::Debug,
    {
        let name = name.try_into().expect("invalid header name");
        let value = value.try_into().expect("invalid header value");
        self.headers_mut().append(name, value);
        self
    }
}

/// Anything a handler may return.
pub trait IntoResponse {
    /// Converts into the response sent to the client.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Error::into_response(self)
    }
}

impl<T: IntoResponse, E: Into<Error>> IntoResponse for std::result::Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(e) => e.into().into_response(),
        }
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::from_text(self)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::from_text(self)
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        Response::empty(self)
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        self.1.into_response().with_status(self.0)
    }
}

/// A value answered as JSON: `Json(value)` or `(StatusCode::CREATED, Json(value))`.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        Response::from_json(&self.0)
    }
}

/// Reads a body chunk by chunk as it arrives.
pub struct Chunks {
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, wstd::http::Error>,
}

impl Chunks {
    /// Starts reading `body`.
    pub fn new(body: Body) -> Self {
        Chunks {
            body: body.into_boxed_body(),
        }
    }

    /// The next chunk, or `None` at the end (trailers are skipped).
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => {
                    return Some(Err(Error::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!("reading the body: {e:#}"),
                    )));
                }
            }
        }
    }
}

/// A body that is `body` with `f` applied to each chunk as it streams
/// through; nothing is buffered beyond one chunk.
pub fn map_chunks(body: Body, mut f: impl FnMut(Bytes) -> Bytes + Send + 'static) -> Body {
    Body::from_http_body(
        body.into_boxed_body()
            .map_frame(move |frame| frame.map_data(&mut f)),
    )
}

/// A body produced lazily from an iterator of chunks: each is made only
/// when the client is ready for it.
pub fn stream_body<I>(chunks: I) -> Body
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Into<Bytes>,
{
    Body::from_stream(futures_lite::stream::iter(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("a+b%20c"), "a b c");
        assert_eq!(decode("%E2%9C%93"), "\u{2713}");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%41"), "A");
    }

    #[test]
    fn query_cookie_and_params() {
        let mut req = ::http::Request::builder()
            .uri("http://x.test/p?name=Ada+L&empty&n=%31&name=second")
            .header("cookie", "a=1; ab=b")
            .header("cookie", "other=\"q\"")
            .body(Body::empty())
            .unwrap();
        assert_eq!(req.query("name").as_deref(), Some("Ada L"));
        assert_eq!(req.query("empty").as_deref(), Some(""));
        assert_eq!(req.query("n").as_deref(), Some("1"));
        assert_eq!(req.query("missing"), None);
        assert_eq!(req.query_pairs().len(), 4);
        assert_eq!(req.cookie("ab"), Some("b"));
        assert_eq!(req.cookie("other"), Some("q"));
        assert_eq!(req.cookie("zzz"), None);
        req.extensions_mut()
            .insert(Params(vec![("id".into(), "7".into())]));
        assert_eq!(req.param("id"), Some("7"));
        assert_eq!(req.param("x"), None);
    }

    #[test]
    fn response_shortcuts() {
        let r = Response::from_text("hi")
            .with_status(StatusCode::CREATED)
            .with_header("x-a", "1");
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.headers()["x-a"], "1");
        let e = Error::bad_request("nope").into_response();
        assert_eq!(e.status(), 400);
        let e = Error::internal("secret detail").into_response();
        assert_eq!(e.status(), 500);
        let r: Response = (StatusCode::ACCEPTED, Json(serde_json::json!({"a": 1}))).into_response();
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
