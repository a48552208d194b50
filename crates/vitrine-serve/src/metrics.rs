//! Prometheus text exposition of request counts, latencies, batch sizes and queue depths.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::ConnMetrics;

const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket upper bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch: BTreeMap<&'static str, Histogram>,
}

/// Shared by the request middleware and the model workers.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Jobs waiting per worker.
    queues: Mutex<BTreeMap<&'static str, Arc<AtomicUsize>>>,
    /// Kept by the accept loop.
    pub connections: Arc<ConnMetrics>,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, latency: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, latency.as_secs_f64());
    }

    pub fn record_batch(&self, worker: &'static str, size: usize) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.batch
            .entry(worker)
            .or_default()
            .observe(&BATCH_BUCKETS, size as f64);
    }

    pub fn register_queue(&self, worker: &'static str, depth: Arc<AtomicUsize>) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, depth);
    }

    /// The exposition text; `in_flight` is the number of admitted model requests.
    pub fn render(&self, in_flight: usize) -> String {
        let mut out = String::new();
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP vitrine_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE vitrine_http_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "vitrine_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP vitrine_http_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE vitrine_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            let labels = format!("route=\"{}\"", escape(route));
            h.render(
                &mut out,
                "vitrine_http_request_duration_seconds",
                &labels,
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP vitrine_batch_size Images per forward pass of a model worker.\n");
        out.push_str("# TYPE vitrine_batch_size histogram\n");
        for (worker, h) in &m.batch {
            let labels = format!("worker=\"{worker}\"");
            h.render(&mut out, "vitrine_batch_size", &labels, &BATCH_BUCKETS);
        }
        drop(m);
        out.push_str("# HELP vitrine_queue_depth Jobs waiting for a model worker.\n");
        out.push_str("# TYPE vitrine_queue_depth gauge\n");
        for (worker, depth) in self.queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "vitrine_queue_depth{{worker=\"{worker}\"}} {}",
                depth.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP vitrine_in_flight_requests Model requests being handled.\n");
        out.push_str("# TYPE vitrine_in_flight_requests gauge\n");
        let _ = writeln!(out, "vitrine_in_flight_requests {in_flight}");
        self.render_connections(&mut out);
        out
    }

    fn render_connections(&self, out: &mut String) {
        let c = &self.connections;
        let _ = writeln!(
            out,
            "# HELP vitrine_connections_open Open client connections.\n\
             # TYPE vitrine_connections_open gauge\n\
             vitrine_connections_open {}",
            c.open.load(Ordering::Relaxed)
        );
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        // (name, help: empty for a further series of the same counter, labels, value)
        let series = [
            ("accepted", "Connections accepted.", "", load(&c.accepted)),
            (
                "refused",
                "New connections refused (503) at limits.max_connections with every open one busy.",
                "",
                load(&c.refused),
            ),
            (
                "evicted",
                "Connections without a request in progress closed to make room for a new one.",
                "",
                load(&c.evicted),
            ),
            (
                "timed_out",
                "Connections closed by header_timeout_ms (phase=head) or idle_timeout_ms (phase=idle).",
                "{phase=\"head\"}",
                load(&c.head_timeouts),
            ),
            ("timed_out", "", "{phase=\"idle\"}", load(&c.idle_timeouts)),
        ];
        for (name, help, labels, value) in series {
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP vitrine_connections_{name}_total {help}");
                let _ = writeln!(out, "# TYPE vitrine_connections_{name}_total counter");
            }
            let _ = writeln!(out, "vitrine_connections_{name}_total{labels} {value}");
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_and_buckets() {
        let m = Metrics::default();
        m.record_request("/v1/search", 200, Duration::from_millis(20));
        m.record_request("/v1/search", 200, Duration::from_millis(200));
        m.record_request("/v1/search", 422, Duration::from_millis(1));
        m.record_batch("search", 3);
        m.register_queue("search", Arc::new(AtomicUsize::new(2)));
        let text = m.render(1);
        assert!(text.contains("vitrine_http_requests_total{route=\"/v1/search\",status=\"200\"} 2"));
        assert!(text.contains("vitrine_http_requests_total{route=\"/v1/search\",status=\"422\"} 1"));
        // 1 ms and 20 ms are <= 25 ms, 200 ms is not.
        assert!(text.contains(
            "vitrine_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"0.025\"} 2"
        ));
        assert!(text.contains(
            "vitrine_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("vitrine_batch_size_bucket{worker=\"search\",le=\"2\"} 0"));
        assert!(text.contains("vitrine_batch_size_bucket{worker=\"search\",le=\"4\"} 1"));
        assert!(text.contains("vitrine_queue_depth{worker=\"search\"} 2"));
        assert!(text.contains("vitrine_in_flight_requests 1"));
        assert!(text.contains("vitrine_connections_open 0"));
        m.connections.refused.fetch_add(3, Ordering::Relaxed);
        m.connections.idle_timeouts.fetch_add(2, Ordering::Relaxed);
        let text = m.render(0);
        assert!(
            text.contains("vitrine_connections_refused_total 3"),
            "{text}"
        );
        assert!(text.contains("vitrine_connections_timed_out_total{phase=\"idle\"} 2"));
        assert!(text.contains("vitrine_connections_timed_out_total{phase=\"head\"} 0"));
    }
}
