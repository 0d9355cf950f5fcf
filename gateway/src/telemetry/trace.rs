//! OpenTelemetry traces, opt-in (`[telemetry] otlp_endpoint`): one server
//! span per data-plane request and per cron run, child spans for the
//! guest's KV calls (`kv.<op>`) and outbound requests (HTTP client spans),
//! W3C `traceparent` continued from the request and sent on. Spans go out
//! over OTLP/HTTP protobuf to `<otlp_endpoint>/v1/traces`.
//!
//! Export never holds up a request: a finished span is handed to the SDK's
//! batch processor (its own thread, a bounded queue), in front of which
//! [`Bounded`] admits at most `queue_size` spans not yet exported — past
//! that, and for every span of a failed export, it counts a drop
//! (`perch_otel_spans_dropped_total`; the SDK keeps its own count private).
//!
//! What spans carry is listed here and nowhere else: methods, paths, the
//! route pattern, hosts and the client address, statuses, names, versions,
//! outcomes, CPU time. Never a header value, a query string, a body, a
//! secret or a token.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use perch_runtime::{CallSpan, CallTracer, KvOp, OutboundSpan, RequestTrace};

use crate::config::TelemetryConfig;

/// The node's tracer, when traces are on.
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

/// How long one export may take (retries included) before its spans are
/// counted as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The attributes a server span ends with at most.
const SERVER_ATTRIBUTES: usize = 20;

/// A method's name, without an allocation for the standard ones.
fn method_name(method: &Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().position(|m| m == method) {
        Some(i) => NAMES[i].into(),
        None => method.as_str().to_string().into(),
    }
}

impl Tracing {
    /// Starts the exporter (its batch thread) for `config`; spans it
    /// drops are counted into `dropped`. Call off the async threads (the
    /// HTTP client is built on a thread of its own).
    pub fn start(
        config: &TelemetryConfig,
        node: &str,
        dropped: Arc<AtomicU64>,
    ) -> Result<Tracing, String> {
        let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
        // A blocking client of the reqwest the workspace already has; it
        // runs on the batch processor's thread (never on the async ones).
        let client = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .no_proxy()
                .build()
        })
        .join()
        .map_err(|_| "the OTLP client could not be built".to_string())?
        .map_err(|e| format!("the OTLP client: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client(client))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let stats = Arc::new(Stats {
            in_flight: AtomicU64::new(0),
            dropped,
        });
        let batch = BatchSpanProcessor::builder(Counting {
            inner: exporter,
            stats: stats.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.queue_size)
                .with_max_export_batch_size(config.queue_size.min(512))
                .with_scheduled_delay(config.batch_delay)
                .build(),
        )
        .build();
        let processor = Bounded {
            inner: batch,
            stats,
            cap: config.queue_size as u64,
            closed: AtomicBool::new(false),
        };
        let mut resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", node.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ]);
        for (k, v) in &config.resource {
            resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource.build())
            .build();
        Ok(Tracing {
            tracer: provider.tracer("perch"),
            provider,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The server span of a data-plane request, continuing the trace its
    /// `traceparent` names (else a new one, sampled at the configured
    /// ratio).
    pub fn server(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        host: &str,
        client: std::net::IpAddr,
    ) -> Arc<Traced> {
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        let name = method_name(method);
        // The attributes a request's span ends with, in one vector made to
        // hold them all (an unsampled span drops it unread).
        let mut attributes = Vec::with_capacity(SERVER_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("faas.trigger", "http"),
            KeyValue::new("http.request.method", name.clone()),
            KeyValue::new("url.path", path.to_string()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("server.address", host.to_string()),
            KeyValue::new("client.address", client.to_string()),
        ]);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        self.traced(parent.with_span(span), Some(method.clone()))
    }

    /// The span of a cron run (a new trace).
    pub fn timer(&self, function: &str) -> Arc<Traced> {
        let mut span = self
            .tracer
            .span_builder(format!("scheduled {function}"))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &Context::new());
        if span.is_recording() {
            span.set_attribute(KeyValue::new("faas.trigger", "timer"));
        }
        self.traced(Context::new().with_span(span), None)
    }

    fn traced(&self, cx: Context, method: Option<Method>) -> Arc<Traced> {
        Arc::new(Traced {
            recording: cx.span().is_recording(),
            method,
            cx,
            tracer: self.tracer.clone(),
        })
    }

    /// Exports what is queued and stops the exporter. Blocking (up to a
    /// few seconds with a collector that does not answer).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter shutdown");
        }
    }
}

/// One traced request (or cron run): its server span, in a context its
/// child spans start from.
pub struct Traced {
    cx: Context,
    recording: bool,
    /// The request's method (none for a cron run).
    method: Option<Method>,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("recording", &self.recording)
            .finish_non_exhaustive()
    }
}

/// What routing learned about a request.
pub struct Routed<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The function.
    pub function: &'a str,
    /// The version picked.
    pub version: u32,
    /// The path pattern of the route that matched (`http.route`), for
    /// data-plane requests.
    pub route: Option<String>,
    /// The request id (`Perch-Request-Id`).
    pub invocation_id: &'a str,
}

impl Traced {
    /// Whether the span is sampled (recorded and exported).
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Names the span after its route and sets what routing found.
    pub fn routed(&self, r: &Routed<'_>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        if let Some(route) = &r.route
            && let Some(method) = &self.method
        {
            span.update_name(format!("{method} {route}"));
        }
        let route = r
            .route
            .clone()
            .map(|route| KeyValue::new("http.route", route));
        span.set_attributes(route.into_iter().chain([
            KeyValue::new("faas.name", r.function.to_string()),
            KeyValue::new("faas.version", r.version.to_string()),
            KeyValue::new("faas.invocation_id", r.invocation_id.to_string()),
            KeyValue::new("perch.tenant", r.tenant.to_string()),
        ]));
    }

    /// Ends the span: the status the client got, the outcome, CPU time,
    /// and whether the request paid a cold start.
    pub fn finish(&self, status: u16, outcome: &str, cpu: Duration, coldstart: bool) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("perch.outcome", outcome.to_string()),
            KeyValue::new("perch.cpu_ms", cpu.as_secs_f64() * 1000.0),
            KeyValue::new("faas.coldstart", coldstart),
        ]);
        if status >= 500 {
            span.set_status(Status::error(outcome.to_string()));
        }
        span.end();
    }

    /// Replaces the request's `traceparent` (and `tracestate`) with this
    /// span's, so what the function calls continues from Perch's span.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        if self.recording {
            inject(self.cx.span().span_context(), headers);
        }
    }
}

/// Writes `traceparent` (and `tracestate`, when there is one) for `sc`.
fn inject(sc: &opentelemetry::trace::SpanContext, headers: &mut HeaderMap) {
    let parent = format!(
        "00-{:032x}-{:016x}-{:02x}",
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.trace_flags().to_u8() & opentelemetry::trace::TraceFlags::SAMPLED.to_u8()
    );
    if let Ok(v) = HeaderValue::from_str(&parent) {
        headers.insert(TRACEPARENT, v);
    }
    let state = sc.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

impl CallTracer for Traced {
    fn start(&self, op: KvOp) -> Box<dyn CallSpan> {
        let span = self
            .tracer
            .span_builder(format!("kv.{}", op.as_str()))
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new("db.operation.name", op.as_str())])
            .start_with_context(&self.tracer, &self.cx);
        Box::new(Child(span))
    }
}

impl RequestTrace for Traced {
    fn outbound(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Box<dyn OutboundSpan> {
        let mut attributes = vec![KeyValue::new("http.request.method", method_name(method))];
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new("server.address", host.to_string()));
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            attributes.push(KeyValue::new("server.port", i64::from(port)));
            // Scheme, authority and path: never the query, which may carry
            // a secret.
            let scheme = uri.scheme_str().unwrap_or("http");
            attributes.push(KeyValue::new(
                "url.full",
                format!(
                    "{scheme}://{}{}",
                    uri.authority().map_or("", |a| a.as_str()),
                    uri.path()
                ),
            ));
        }
        let span = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        inject(span.span_context(), headers);
        Box::new(Child(span))
    }
}

/// A child span (KV call, outbound request), ended by its owner.
struct Child(opentelemetry_sdk::trace::Span);

impl CallSpan for Child {
    fn end(self: Box<Self>, error: Option<&str>) {
        let mut span = self.0;
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("error.type", "kv_error"));
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }
}

impl OutboundSpan for Child {
    fn end(self: Box<Self>, result: Result<u16, String>) {
        let mut span = self.0;
        match result {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 400 {
                    span.set_attribute(KeyValue::new("error.type", status.to_string()));
                    span.set_status(Status::error(status.to_string()));
                }
            }
            Err(e) => {
                span.set_attribute(KeyValue::new("error.type", e.clone()));
                span.set_status(Status::error(e));
            }
        }
        span.end();
    }
}

/// Spans admitted and not yet exported, and the drop count.
#[derive(Debug)]
struct Stats {
    in_flight: AtomicU64,
    dropped: Arc<AtomicU64>,
}

/// The batch processor behind a bound of its own: at most `cap` spans
/// are admitted and not yet exported (so the SDK's queue, as large, never
/// fills and drops uncounted); past it a span is dropped and counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    stats: Arc<Stats>,
    cap: u64,
    closed: AtomicBool,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() || self.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.stats.in_flight.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.closed.store(true, Ordering::Relaxed);
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of failed exports as dropped and
/// releasing every exported span's place in [`Bounded`].
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    stats: Arc<Stats>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(spans = n, error = %e, "trace export failed");
        }
        self.stats.in_flight.fetch_sub(n, Ordering::AcqRel);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// OTLP's HTTP client over the workspace's blocking reqwest (it runs on
/// the batch processor's thread).
#[derive(Debug)]
struct Client(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request: reqwest::blocking::Request = request.try_into()?;
        let response = self.0.execute(request)?;
        let mut out = http::Response::builder().status(response.status());
        for (k, v) in response.headers() {
            out = out.header(k, v);
        }
        Ok(out.body(response.bytes()?)?)
    }
}
