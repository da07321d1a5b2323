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
use prometheus_client::registry::Registry;

use crate::crd::Phase;

#[derive(Default)]
pub struct OperatorMetrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    reconcile_micros: AtomicU64,
    phases: Mutex<BTreeMap<(String, String), Phase>>,
    pub ready: AtomicBool,
}

impl OperatorMetrics {
    pub fn observe_reconcile(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
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
        let micros: Counter = Counter::default();
        micros.inc_by(self.reconcile_micros.load(Ordering::Relaxed));
        registry.register("reconcile_duration_microseconds", "Total time spent reconciling", micros);
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
