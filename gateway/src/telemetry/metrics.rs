//! Prometheus metrics: every family design.md lists, rendered as the text
//! format on `GET /metrics`.
//!
//! Cardinality: requests are counted by tenant, function, status and
//! outcome, but a tenant's functions beyond its first
//! [`FUNCTION_SERIES`] (in creation order, so series do not churn with
//! traffic) are counted as `function="_other"` — the routing snapshot gives
//! each target that label once (`Target::metric_function`), so the hot path
//! does no extra lookup. With 10,000 functions the request family has at
//! most 51 function label values per tenant, times the statuses and
//! outcomes actually seen.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use perch_kv::guest::KvCounters;
use perch_runtime::RuntimeStats;

/// A tenant's functions that get series of their own; the rest are
/// `function="_other"`.
pub const FUNCTION_SERIES: usize = 50;

/// The label of a tenant's functions past [`FUNCTION_SERIES`].
pub const OTHER_FUNCTIONS: &str = "_other";

/// Upper bounds (seconds) of the latency and CPU histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram with [`BUCKETS`]: one atomic increment per observation
/// (buckets are stored non-cumulatively and summed when rendered).
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound, the total, and the sum in seconds.
    fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(BUCKETS.len());
        for b in &self.buckets[..BUCKETS.len()] {
            cumulative += b.load(Ordering::Relaxed);
            out.push(cumulative);
        }
        let count = cumulative + self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        (out, count, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// `(status, outcome)` → count.
type Outcomes = HashMap<(u16, &'static str), AtomicU64>;

/// Request counters: tenant → function label → (status, outcome) → count.
/// Nested maps so a request finds its counter by `&str` under the read
/// lock and bumps an atomic; only the first request of a new combination
/// takes the write lock.
type RequestCounts = HashMap<Box<str>, HashMap<Arc<str>, Outcomes>>;

/// The node's counters that are not kept elsewhere (the runtime's, the KV
/// host's and the container backend's are read when rendering).
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<RequestCounts>,
    duration: Histogram,
    cpu: Histogram,
    no_route: AtomicU64,
    cron_runs: AtomicU64,
    /// Trace spans the exporter dropped (a full queue, a failed export).
    pub spans_dropped: Arc<AtomicU64>,
    /// ACME orders, by how they ended.
    pub acme: Arc<AcmeCounters>,
}

/// ACME orders placed, by how they ended (`perch_acme_orders_total`).
#[derive(Debug, Default)]
pub struct AcmeCounters {
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Orders that failed.
    pub failed: AtomicU64,
}

/// What `/metrics` reads besides [`Metrics`] itself.
pub struct Sources<'a> {
    /// The wasm runtime's counters.
    pub runtime: &'a RuntimeStats,
    /// Guest KV operations.
    pub kv: &'a KvCounters,
    /// Log followers connected now.
    pub log_followers: usize,
    /// The container backend, when it is on.
    pub containers: Option<&'a perch_containers::Backend>,
    /// A function's label (its name, or `_other`), for container series.
    pub function_label: &'a dyn Fn(&str, &str) -> Arc<str>,
}

impl Metrics {
    /// Counts a finished request (or scheduled run) of `function` (its
    /// metric label) and, when it ran wasm, its CPU time.
    pub fn record(
        &self,
        tenant: &str,
        function: &Arc<str>,
        status: u16,
        outcome: &'static str,
        cpu: Option<Duration>,
    ) {
        let key = (status, outcome);
        let counted = {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            map.get(tenant)
                .and_then(|f| f.get(function))
                .and_then(|s| s.get(&key))
                .map(|n| n.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if !counted {
            let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
            map.entry(tenant.into())
                .or_default()
                .entry(function.clone())
                .or_default()
                .entry(key)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cpu) = cpu {
            self.cpu.observe(cpu);
        }
    }

    /// Observes a routed request's latency to its response head.
    pub fn observe_latency(&self, latency: Duration) {
        self.duration.observe(latency);
    }

    /// Counts a request for a host nobody serves.
    pub fn record_no_route(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a cron tick that ran (or was refused a slot).
    pub fn record_cron_run(&self) {
        self.cron_runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a deleted tenant's series.
    pub fn forget_tenant(&self, tenant: &str) {
        let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
        map.remove(tenant);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, src: &Sources<'_>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        family(
            &mut out,
            "perch_requests_total",
            "counter",
            "Data-plane requests and scheduled runs by tenant, function, status and outcome.",
        );
        {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<(&str, &str, u16, &str, u64)> = map
                .iter()
                .flat_map(|(t, fs)| {
                    fs.iter().flat_map(move |(f, ss)| {
                        ss.iter()
                            .map(move |((s, o), n)| (&**t, &**f, *s, *o, n.load(Ordering::Relaxed)))
                    })
                })
                .collect();
            rows.sort_unstable();
            for (t, f, s, o, n) in rows {
                let _ = writeln!(
                    out,
                    "perch_requests_total{{tenant=\"{}\",function=\"{}\",status=\"{s}\",outcome=\"{o}\"}} {n}",
                    Escaped(t),
                    Escaped(f)
                );
            }
        }
        single(
            &mut out,
            "perch_no_route_total",
            "counter",
            "Requests for hosts with no route.",
            self.no_route.load(Ordering::Relaxed),
        );
        let (cumulative, count, sum) = self.duration.snapshot();
        histogram(
            &mut out,
            "perch_request_duration_seconds",
            "Data-plane latency to the response head.",
            &BUCKETS,
            &cumulative,
            count,
            sum,
        );
        let (cumulative, count, sum) = self.cpu.snapshot();
        histogram(
            &mut out,
            "perch_cpu_seconds",
            "CPU time of wasm invocations.",
            &BUCKETS,
            &cumulative,
            count,
            sum,
        );
        let rt = src.runtime;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let singles: [(&str, &str, &str, u64); 9] = [
            (
                "perch_instances_in_use",
                "gauge",
                "Wasm instances alive now.",
                load(&rt.instances_in_use),
            ),
            (
                "perch_component_cache_hits_total",
                "counter",
                "Requests served from the in-memory component cache.",
                load(&rt.cache_hits),
            ),
            (
                "perch_component_cache_misses_total",
                "counter",
                "Requests that loaded the component from disk first.",
                load(&rt.cache_misses),
            ),
            (
                "perch_component_cache_evictions_total",
                "counter",
                "Components the in-memory cache dropped to make room.",
                load(&rt.cache_evictions),
            ),
            (
                "perch_compilations_total",
                "counter",
                "Components compiled (uploads and artifact rebuilds).",
                load(&rt.compilations),
            ),
            (
                "perch_egress_refused_total",
                "counter",
                "Outbound requests refused by the egress policy or the per-request limit.",
                load(&rt.egress_refused),
            ),
            (
                "perch_log_followers",
                "gauge",
                "Clients following functions' logs now.",
                src.log_followers as u64,
            ),
            (
                "perch_cron_runs_total",
                "counter",
                "Cron ticks run.",
                self.cron_runs.load(Ordering::Relaxed),
            ),
            (
                "perch_otel_spans_dropped_total",
                "counter",
                "Trace spans dropped before export (queue full or export failed).",
                self.spans_dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in singles {
            single(&mut out, name, kind, help, value);
        }
        family(
            &mut out,
            "perch_kv_operations_total",
            "counter",
            "Guest KV operations by operation and result.",
        );
        for (op, ok, err) in src.kv.counts() {
            let _ = writeln!(
                out,
                "perch_kv_operations_total{{op=\"{op}\",result=\"ok\"}} {ok}\nperch_kv_operations_total{{op=\"{op}\",result=\"error\"}} {err}"
            );
        }
        family(
            &mut out,
            "perch_acme_orders_total",
            "counter",
            "ACME certificate orders, by result (issued or failed).",
        );
        let _ = writeln!(
            out,
            "perch_acme_orders_total{{result=\"issued\"}} {}\nperch_acme_orders_total{{result=\"failed\"}} {}",
            self.acme.issued.load(Ordering::Relaxed),
            self.acme.failed.load(Ordering::Relaxed)
        );
        render_containers(&mut out, src.containers, src.function_label);
        out
    }
}

/// A family's `HELP` and `TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A histogram family from cumulative bucket counts.
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) {
    family(out, name, "histogram", help);
    for (bound, n) in bounds.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}

/// A label value with `\`, `"` and newlines escaped (names are already
/// restricted, but a label never breaks the format).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The container series, per function label (versions summed, and a
/// tenant's functions past the first 50 summed as `_other`), and the
/// cold-start histogram. The families are there (empty) when the backend
/// is off.
fn render_containers(
    out: &mut String,
    backend: Option<&perch_containers::Backend>,
    label: &dyn Fn(&str, &str) -> Arc<str>,
) {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Row {
        instances: usize,
        queued: u32,
        starts: u64,
        errors: u64,
    }
    let mut rows: BTreeMap<(String, Arc<str>), Row> = BTreeMap::new();
    for pool in backend.iter().flat_map(|b| b.pools()) {
        let function = label(&pool.id.tenant, &pool.id.function);
        let row = rows.entry((pool.id.tenant.clone(), function)).or_default();
        row.instances += pool.instances().len();
        row.queued += pool.queued();
        row.starts += u64::from(pool.starts.load(Ordering::Relaxed));
        row.errors += u64::from(pool.proxy_errors.load(Ordering::Relaxed));
    }
    /// Name, type, help, and the value of a row.
    type Series = (&'static str, &'static str, &'static str, fn(&Row) -> u64);
    let series: [Series; 4] = [
        (
            "perch_container_instances",
            "gauge",
            "Container instances in service, per function.",
            |r| r.instances as u64,
        ),
        (
            "perch_container_queued_requests",
            "gauge",
            "Requests waiting for a container instance, per function.",
            |r| u64::from(r.queued),
        ),
        (
            "perch_container_starts_total",
            "counter",
            "Container instances started (ready), per function.",
            |r| r.starts,
        ),
        (
            "perch_container_proxy_errors_total",
            "counter",
            "Requests a container instance failed, per function.",
            |r| r.errors,
        ),
    ];
    for (name, kind, help, value) in series {
        family(out, name, kind, help);
        for ((t, f), row) in &rows {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",function=\"{}\"}} {}",
                Escaped(t),
                Escaped(f),
                value(row)
            );
        }
    }
    let (cumulative, count, sum) = match backend {
        Some(b) => b.cold_starts().snapshot(),
        None => (vec![0; perch_containers::COLD_START_BUCKETS.len()], 0, 0.0),
    };
    histogram(
        out,
        "perch_container_cold_start_seconds",
        "Start of a container instance to its first successful probe.",
        &perch_containers::COLD_START_BUCKETS,
        &cumulative,
        count,
        sum,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        m.render(&Sources {
            runtime: &RuntimeStats::default(),
            kv: &KvCounters::default(),
            log_followers: 2,
            containers: None,
            function_label: &|_, f| f.into(),
        })
    }

    #[test]
    fn counts_requests_by_outcome_and_cumulative_buckets() {
        let m = Metrics::default();
        let hello: Arc<str> = "hello".into();
        m.record("acme", &hello, 200, "ok", Some(Duration::from_micros(300)));
        m.record("acme", &hello, 200, "ok", Some(Duration::from_millis(3)));
        m.record("acme", &hello, 504, "exceeded_cpu", None);
        m.record("beta", &"api".into(), 429, "rejected", None);
        for d in [300, 3_000, 10_000_000, 1_000] {
            m.observe_latency(Duration::from_micros(d));
        }
        let out = render(&m);
        for line in [
            "perch_requests_total{tenant=\"acme\",function=\"hello\",status=\"200\",outcome=\"ok\"} 2\n",
            "perch_requests_total{tenant=\"acme\",function=\"hello\",status=\"504\",outcome=\"exceeded_cpu\"} 1\n",
            "perch_requests_total{tenant=\"beta\",function=\"api\",status=\"429\",outcome=\"rejected\"} 1\n",
            "perch_request_duration_seconds_bucket{le=\"0.0005\"} 1\n",
            "perch_request_duration_seconds_bucket{le=\"0.001\"} 2\n",
            "perch_request_duration_seconds_bucket{le=\"5\"} 3\n",
            "perch_request_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "perch_cpu_seconds_bucket{le=\"0.0005\"} 1\n",
            "perch_cpu_seconds_count 2\n",
            "perch_log_followers 2\n",
            "perch_kv_operations_total{op=\"get\",result=\"ok\"} 0\n",
            "perch_container_cold_start_seconds_count 0\n",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        m.forget_tenant("acme");
        assert!(!render(&m).contains("tenant=\"acme\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
