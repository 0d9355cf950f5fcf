//! Prometheus metrics: requests by tenant/function/status, a latency
//! histogram, and the runtime's compilation and cache counters.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use perch_runtime::RuntimeStats;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Request counters: tenant → function → status → count. Nested maps so a
/// request looks its counter up by `&str` under the read lock and bumps an
/// atomic; only the first request of a new (tenant, function, status)
/// allocates and takes the write lock.
type RequestCounts = HashMap<Box<str>, HashMap<Box<str>, HashMap<u16, AtomicU64>>>;

/// Data-plane counters.
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<RequestCounts>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    no_route: AtomicU64,
}

impl Metrics {
    /// Records a routed request.
    pub fn record(&self, tenant: &str, function: &str, status: u16, latency: Duration) {
        let counted = {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            map.get(tenant)
                .and_then(|f| f.get(function))
                .and_then(|s| s.get(&status))
                .map(|n| n.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if !counted {
            let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
            map.entry(tenant.into())
                .or_default()
                .entry(function.into())
                .or_default()
                .entry(status)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        // Buckets are stored non-cumulatively (one increment per request)
        // and summed when rendered.
        let secs = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a request for a host nobody serves.
    pub fn record_no_route(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the Prometheus text format (with the container backend's
    /// series when it is on).
    pub fn render(
        &self,
        runtime: &RuntimeStats,
        containers: Option<&perch_containers::Backend>,
    ) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP perch_requests_total Data-plane requests by tenant, function and status.\n",
        );
        out.push_str("# TYPE perch_requests_total counter\n");
        {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<(&str, &str, u16, u64)> = map
                .iter()
                .flat_map(|(t, fs)| {
                    fs.iter().flat_map(move |(f, ss)| {
                        ss.iter()
                            .map(move |(s, n)| (&**t, &**f, *s, n.load(Ordering::Relaxed)))
                    })
                })
                .collect();
            rows.sort_unstable();
            for (t, f, s, n) in rows {
                let _ = writeln!(
                    out,
                    "perch_requests_total{{tenant=\"{t}\",function=\"{f}\",status=\"{s}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP perch_no_route_total Requests for hosts with no route.\n# TYPE perch_no_route_total counter\n");
        let _ = writeln!(
            out,
            "perch_no_route_total {}",
            self.no_route.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP perch_request_duration_seconds Data-plane latency to the response head.\n",
        );
        out.push_str("# TYPE perch_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "perch_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "perch_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "perch_request_duration_seconds_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "perch_request_duration_seconds_count {count}");
        let gauges = [
            (
                "perch_compilations_total",
                "counter",
                "Components compiled (uploads and artifact rebuilds).",
                &runtime.compilations,
            ),
            (
                "perch_component_cache_hits_total",
                "counter",
                "Requests served from the in-memory component cache.",
                &runtime.cache_hits,
            ),
            (
                "perch_component_cache_misses_total",
                "counter",
                "Requests that loaded the component from disk first.",
                &runtime.cache_misses,
            ),
            (
                "perch_instances_in_use",
                "gauge",
                "Instances alive now.",
                &runtime.instances_in_use,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        if let Some(backend) = containers {
            render_containers(&mut out, backend);
        }
        out
    }
}

/// The container series, per function (its versions summed, so the
/// series grow with functions, not with versions).
fn render_containers(out: &mut String, backend: &perch_containers::Backend) {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Row {
        instances: usize,
        queued: u32,
        starts: u64,
        errors: u64,
    }
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for pool in backend.pools() {
        let row = rows
            .entry((pool.id.tenant.clone(), pool.id.function.clone()))
            .or_default();
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
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((t, f), row) in &rows {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{t}\",function=\"{f}\"}} {}",
                value(row)
            );
        }
    }
    let name = "perch_container_cold_start_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Start of a container instance to its first successful probe.\n# TYPE {name} histogram"
    );
    let (cumulative, count, sum) = backend.cold_starts().snapshot();
    for (bound, n) in perch_containers::COLD_START_BUCKETS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record("acme", "hello", 200, Duration::from_micros(300));
        m.record("acme", "hello", 200, Duration::from_millis(3));
        m.record("acme", "hello", 500, Duration::from_secs(10));
        m.record("beta", "api", 200, Duration::from_millis(1));
        let out = m.render(&RuntimeStats::default(), None);
        assert!(out.contains(
            "perch_requests_total{tenant=\"acme\",function=\"hello\",status=\"200\"} 2\n"
        ));
        assert!(out.contains(
            "perch_requests_total{tenant=\"acme\",function=\"hello\",status=\"500\"} 1\n"
        ));
        assert!(
            out.contains(
                "perch_requests_total{tenant=\"beta\",function=\"api\",status=\"200\"} 1\n"
            )
        );
        assert!(out.contains("perch_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(out.contains("perch_request_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(out.contains("perch_request_duration_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(out.contains("perch_request_duration_seconds_bucket{le=\"5\"} 3\n"));
        assert!(out.contains("perch_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
    }
}
