//! A small blocking client of the admin API, used by the CLI subcommands.
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Admin API endpoint and credentials.
pub struct Client {
    base: String,
    token: Option<String>,
    rt: tokio::runtime::Runtime,
}

/// The API's error in a non-2xx answer (or what was wrong reading it).
async fn error_answer(status: StatusCode, body: hyper::body::Incoming) -> ClientError {
    match body.collect().await {
        Ok(bytes) => match check(status, &bytes.to_bytes()) {
            Err(e) => e,
            Ok(_) => ClientError(format!("unexpected answer {status}")),
        },
        Err(e) => ClientError(format!("reading response: {e}")),
    }
}

/// A failed call, rendered as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError(format!("cannot start client runtime: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            rt,
        })
    }

    /// The request for `path`, with the token and `headers`.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        headers: &[(&str, String)],
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let uri = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&uri);
        if let Some(t) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let (bytes, ctype) = body.unwrap_or((Bytes::new(), "application/json"));
        builder
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(bytes))
            .map_err(|e| ClientError(format!("bad request to {uri}: {e}")))
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        client
            .request(req)
            .await
            .map_err(|e| ClientError(format!("cannot reach {}: {e}", self.base)))
    }

    /// Sends a request; returns status, headers and body of any answer.
    pub fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
        let req = self.request(method, path, body, headers)?;
        self.rt.block_on(async {
            let (parts, body) = self.send(req).await?.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError(format!("reading response: {e}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        })
    }

    /// GETs `path` and hands each complete line of the streamed answer to
    /// `line` until the stream ends or `line` returns false; an error
    /// answer is returned as the API's error.
    pub fn stream_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let req = self.request(Method::GET, path, None, &[])?;
        self.rt.block_on(async {
            let (parts, mut body) = self.send(req).await?.into_parts();
            if !parts.status.is_success() {
                return Err(error_answer(parts.status, body).await);
            }
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError(format!("stream ended: {e}")))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(n) = pending.iter().position(|&b| b == b'\n') {
                    let text = String::from_utf8_lossy(&pending[..n]).into_owned();
                    pending.drain(..=n);
                    if !line(&text) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    /// GETs `path` into the file `to` (written as `to.partial`, renamed
    /// into place once complete); returns its size. An error answer is
    /// returned as the API's error, and leaves no file.
    pub fn download(&self, path: &str, to: &std::path::Path) -> Result<u64, ClientError> {
        use std::io::Write;
        let req = self.request(Method::GET, path, None, &[])?;
        let partial = to.with_extension("partial");
        let result = self.rt.block_on(async {
            let (parts, mut body) = self.send(req).await?.into_parts();
            if !parts.status.is_success() {
                return Err(error_answer(parts.status, body).await);
            }
            let file_error = |e: std::io::Error| ClientError(format!("{}: {e}", partial.display()));
            let mut file = std::fs::File::create(&partial).map_err(file_error)?;
            let mut written = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError(format!("download ended: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    file.write_all(data).map_err(file_error)?;
                    written += data.len() as u64;
                }
            }
            if let Some(declared) = crate::http::declared_length(&parts.headers)
                && declared != written
            {
                return Err(ClientError(format!(
                    "download ended after {written} of {declared} bytes"
                )));
            }
            file.sync_all().map_err(file_error)?;
            std::fs::rename(&partial, to)
                .map_err(|e| ClientError(format!("{}: {e}", to.display())))?;
            Ok(written)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    /// Sends a request; returns the JSON body of a 2xx answer (Null for 204).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<Value, ClientError> {
        let (status, _, body) = self.call_raw(method, path, body, &[])?;
        check(status, &body)
    }
}

/// The JSON body of a 2xx answer (Null when empty), else the API's error as one line.
pub fn check(status: StatusCode, body: &[u8]) -> Result<Value, ClientError> {
    if status == StatusCode::NO_CONTENT || (status.is_success() && body.is_empty()) {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
    if status.is_success() {
        Ok(value)
    } else {
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"].as_str().unwrap_or("");
        Err(ClientError(format!(
            "{} {code}: {message}",
            status.as_u16()
        )))
    }
}

/// Percent-encodes a path segment (keeps unreserved characters, and `/`
/// when `keep_slash`).
pub fn encode_path(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
