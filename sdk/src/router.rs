//! A small router: method + path pattern → handler.
//!
//! Patterns are `/`-separated segments: a literal, `:name` (one segment,
//! read back with [`RequestExt::param`](crate::http::RequestExt::param)) or a
//! final `*name` (the rest of the path, possibly empty). Trailing slashes
//! don't matter. Routes are tried in the order they were added. A path that
//! matches no route answers 404 `not_found`; a path that matches only under
//! other methods answers 405 `method_not_allowed` with an `Allow` header.
//! `HEAD` is served by `GET` routes.
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//! use perch_sdk::router::Router;
//!
//! perch_sdk::export!(handle);
//!
//! async fn handle(req: Request) -> Response {
//!     Router::new()
//!         .get("/", |_| async { "index\n" })
//!         .get("/users/:id", show_user)
//!         .get("/files/*path", |req: Request| async move {
//!             format!("file {}\n", req.param("path").unwrap_or(""))
//!         })
//!         .handle(req)
//!         .await
//! }
//!
//! async fn show_user(req: Request) -> Result<Response> {
//!     let id: u32 = req.param("id").unwrap_or("").parse()
//!         .map_err(|_| Error::bad_request("id must be a number"))?;
//!     Ok(Response::from_json(&serde_json::json!({ "id": id })))
//! }
//! ```
use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::http::{
    IntoResponse, Method, Params, Request, Response, ResponseExt, StatusCode, decode, header,
};

type BoxedHandler = Box<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response>>>>;

enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

struct Route {
    method: Option<Method>,
    pattern: Vec<Segment>,
    handler: BoxedHandler,
}

/// Routes requests to handlers by method and path.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router with no routes (everything answers 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route for `method` (or every method with `None`).
    ///
    /// # Panics
    /// If `pattern` doesn't start with `/`, or `*name` is not its last
    /// segment, or a parameter has no name.
    pub fn route<H, F, R>(mut self, method: Option<Method>, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        assert!(
            pattern.starts_with('/'),
            "route `{pattern}` must start with `/`"
        );
        let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = if let Some(name) = part.strip_prefix(':') {
                Segment::Param(name.to_string())
            } else if let Some(name) = part.strip_prefix('*') {
                assert!(i == parts.len() - 1, "`*{name}` must end route `{pattern}`");
                Segment::Rest(name.to_string())
            } else {
                Segment::Literal(part.to_string())
            };
            if let Segment::Param(n) | Segment::Rest(n) = &segment {
                assert!(
                    !n.is_empty(),
                    "a parameter of route `{pattern}` has no name"
                );
            }
            segments.push(segment);
        }
        self.routes.push(Route {
            method,
            pattern: segments,
            handler: Box::new(move |req| {
                let fut = handler(req);
                Box::pin(async move { fut.await.into_response() })
            }),
        });
        self
    }

    /// Adds a `GET` (and `HEAD`) route.
    pub fn get<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(Some(Method::GET), pattern, handler)
    }

    /// Adds a `POST` route.
    pub fn post<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(Some(Method::POST), pattern, handler)
    }

    /// Adds a `PUT` route.
    pub fn put<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(Some(Method::PUT), pattern, handler)
    }

    /// Adds a `PATCH` route.
    pub fn patch<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(Some(Method::PATCH), pattern, handler)
    }

    /// Adds a `DELETE` route.
    pub fn delete<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(Some(Method::DELETE), pattern, handler)
    }

    /// Adds a route for every method.
    pub fn any<H, F, R>(self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Request) -> F + 'static,
        F: Future<Output = R> + 'static,
        R: IntoResponse,
    {
        self.route(None, pattern, handler)
    }

    /// Answers `req` with the first matching route.
    pub async fn handle(&self, mut req: Request) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut allowed: Vec<Method> = Vec::new();
        for route in &self.routes {
            let Some(params) = matches(&route.pattern, &segments) else {
                continue;
            };
            let method_ok = match &route.method {
                None => true,
                Some(m) => m == req.method() || (m == Method::GET && req.method() == Method::HEAD),
            };
            if !method_ok {
                allowed.extend(route.method.clone());
                continue;
            }
            req.extensions_mut().insert(Params(params));
            return (route.handler)(req).await;
        }
        if allowed.is_empty() {
            return Error::not_found(format!("no route for {path}")).into_response();
        }
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        allowed.dedup();
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed here; allowed: {allow}", req.method()),
        )
        .into_response()
        .with_header(header::ALLOW, allow)
    }
}

fn matches(pattern: &[Segment], path: &[&str]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                let rest = path
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| decode_path(s))
                    .collect::<Vec<_>>();
                params.push((name.clone(), rest.join("/")));
                return Some(params);
            }
            Segment::Literal(lit) => {
                if path.get(i) != Some(&lit.as_str()) {
                    return None;
                }
            }
            Segment::Param(name) => params.push((name.clone(), decode_path(path.get(i)?))),
        }
    }
    (pattern.len() == path.len()).then_some(params)
}

/// Path segments are percent-decoded, but `+` stays a plus.
fn decode_path(segment: &str) -> String {
    decode(&segment.replace('+', "%2B"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Body, RequestExt};

    fn req(method: Method, uri: &str) -> Request {
        ::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    fn router() -> Router {
        Router::new()
            .get("/", |_| async { "root" })
            .get("/items/:id", |r: Request| async move {
                format!("get {}", r.param("id").unwrap())
            })
            .delete("/items/:id", |r: Request| async move {
                format!("del {}", r.param("id").unwrap())
            })
            .any("/files/*rest", |r: Request| async move {
                format!("file {}", r.param("rest").unwrap())
            })
    }

    fn run(r: &Router, method: Method, uri: &str) -> (u16, String, Option<String>) {
        // Handlers here never wait, so one poll completes them (no WASI
        // runtime on the host).
        let fut = std::pin::pin!(async {
            let mut resp = r.handle(req(method, uri)).await;
            let allow = resp
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.body_mut().str_contents().await.unwrap().to_string();
            (resp.status().as_u16(), body, allow)
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("handler waited"),
        }
    }

    #[test]
    fn routes_by_method_and_path() {
        let r = router();
        assert_eq!(run(&r, Method::GET, "/").1, "root");
        assert_eq!(run(&r, Method::GET, "/items/a%20b/").1, "get a b");
        assert_eq!(run(&r, Method::DELETE, "/items/7").1, "del 7");
        let (status, _, allow) = run(&r, Method::POST, "/items/7");
        assert_eq!((status, allow.as_deref()), (405, Some("GET, DELETE, HEAD")));
        assert_eq!(run(&r, Method::GET, "/nope").0, 404);
        assert_eq!(run(&r, Method::PUT, "/files/a/b+c").1, "file a/b+c");
    }

    #[test]
    fn patterns_match_segments() {
        let pattern = |p: &str| {
            let r = Router::new().get(p, |_| async { "" });
            r.routes.into_iter().next().unwrap().pattern
        };
        assert_eq!(
            matches(&pattern("/a/:x"), &["a", "b%2Fc"]),
            Some(vec![("x".into(), "b/c".into())])
        );
        assert_eq!(matches(&pattern("/a/:x"), &["a"]), None);
        assert_eq!(matches(&pattern("/a/:x"), &["a", "b", "c"]), None);
        assert_eq!(
            matches(&pattern("/a/*r"), &["a"]),
            Some(vec![("r".into(), "".into())])
        );
        assert_eq!(matches(&pattern("/"), &[]), Some(vec![]));
    }
}
