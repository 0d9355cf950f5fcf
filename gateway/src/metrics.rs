//! Prometheus metrics: requests by tenant/function/status, a latency
//! histogram, and the runtime's compilation and cache counters.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use perch_runtime::RuntimeStats;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Data-plane counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    no_route: AtomicU64,
}

impl Metrics {
    /// Records a routed request.
    pub fn record(&self, tenant: &str, function: &str, status: u16, latency: Duration) {
        {
            let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_mut(&(tenant.to_string(), function.to_string(), status)) {
                Some(n) => *n += 1,
                None => {
                    map.insert((tenant.to_string(), function.to_string(), status), 1);
                }
            }
        }
        let secs = latency.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a request for a host nobody serves.
    pub fn record_no_route(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, runtime: &RuntimeStats) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP perch_requests_total Data-plane requests by tenant, function and status.\n",
        );
        out.push_str("# TYPE perch_requests_total counter\n");
        {
            let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort();
            for ((t, f, s), n) in rows {
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
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "perch_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
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
        out
    }
}
