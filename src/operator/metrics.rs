//! The operator's Prometheus metrics and health endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::Phase;

pub struct OperatorMetrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    /// Seconds per reconcile, 1 ms to about 16 s.
    durations: Histogram,
    /// Requests to the API server by method (a watch counts once).
    pub api_requests: Family<Vec<(String, String)>, Counter>,
    phases: Mutex<BTreeMap<(String, String), Phase>>,
    pub ready: AtomicBool,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics {
            reconciles: AtomicU64::default(),
            errors: AtomicU64::default(),
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            api_requests: Family::default(),
            phases: Mutex::default(),
            ready: AtomicBool::default(),
        }
    }
}

impl OperatorMetrics {
    /// Counts one request to the API server.
    pub fn api_request(&self, method: &str) {
        self.api_requests.get_or_create(&vec![("method".to_string(), method.to_string())]).inc();
    }

    pub fn observe_reconcile(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.durations.observe(took.as_secs_f64());
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_phase(&self, ns: &str, name: &str, phase: Phase) {
        if let Ok(mut m) = self.phases.lock() {
            m.insert((ns.into(), name.into()), phase);
        }
    }

    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.phases.lock() {
            m.remove(&(ns.to_string(), name.to_string()));
        }
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("weir_operator");
        let reconciles: Counter = Counter::default();
        reconciles.inc_by(self.reconciles.load(Ordering::Relaxed));
        registry.register("reconciles", "Reconciles run", reconciles);
        let errors: Counter = Counter::default();
        errors.inc_by(self.errors.load(Ordering::Relaxed));
        registry.register("reconcile_errors", "Reconciles that failed and were requeued", errors);
        registry.register("reconcile_duration_seconds", "How long reconciles take", self.durations.clone());
        registry.register("api_requests", "Requests to the Kubernetes API server", self.api_requests.clone());
        let by_phase = Family::<Vec<(String, String)>, Gauge>::default();
        if let Ok(m) = self.phases.lock() {
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for phase in m.values() {
                *counts.entry(format!("{phase:?}")).or_default() += 1;
            }
            for (phase, n) in counts {
                by_phase.get_or_create(&vec![("phase".into(), phase)]).set(n);
            }
        }
        registry.register("jobs", "StreamJobs by phase", by_phase);
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

pub fn router(metrics: Arc<OperatorMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                match m.render() {
                    Ok(body) => (StatusCode::OK, body).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }),
        )
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_durations_are_a_histogram_with_buckets() {
        let m = OperatorMetrics::default();
        m.observe_reconcile(Duration::from_millis(3), false);
        m.observe_reconcile(Duration::from_millis(700), true);
        let text = m.render().unwrap();
        assert!(text.contains("weir_operator_reconcile_duration_seconds_bucket{le=\"0.004\"} 1"), "{text}");
        assert!(text.contains("weir_operator_reconcile_duration_seconds_count 2"), "{text}");
        assert!(text.contains("weir_operator_reconcile_errors_total 1"), "{text}");
    }
}
