//! A worker's health for Kubernetes probes. Liveness is a recent turn of
//! its control loop, not merely an HTTP server that answers: a loop stuck
//! on a blocked call stops turning while the server's own tasks still run,
//! and such a worker must be replaced. Readiness is a session with the
//! coordinator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long the control loop may go without a turn before the worker is
/// not live. The loop turns at least once per heartbeat interval (1 s by
/// default) and per reconnect (at most 2 s apart).
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the loop's last turn.
    last_turn_ms: AtomicU64,
    connected: AtomicBool,
    limit: Duration,
}

impl Health {
    pub fn new(limit: Duration) -> Arc<Health> {
        Arc::new(Health { started: Instant::now(), last_turn_ms: AtomicU64::new(0), connected: false.into(), limit })
    }

    /// The control loop turned.
    pub fn turned(&self) {
        self.last_turn_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// `Err` says how long the loop has not turned.
    pub fn live(&self) -> Result<(), String> {
        let since =
            self.started.elapsed().saturating_sub(Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed)));
        if since <= self.limit {
            Ok(())
        } else {
            Err(format!("the worker's control loop has not turned for {since:?} (limit {:?})", self.limit))
        }
    }

    pub fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health)
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.live() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the coordinator")
    }
}

/// Serves `/healthz` and `/readyz` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>) -> std::io::Result<()> {
    axum::serve(listener, router(health)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_loop_stopped_turning_is_not_live_past_the_limit() {
        let health = Health::new(Duration::from_secs(30));
        health.turned();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(health.live().is_ok());
        health.turned();
        tokio::time::advance(Duration::from_secs(31)).await;
        let why = health.live().unwrap_err();
        assert!(why.contains("has not turned for 31s"), "{why}");
        health.turned();
        assert!(health.live().is_ok(), "a turn makes it live again");
    }

    #[tokio::test]
    async fn the_probes_answer_over_http() {
        let health = Health::new(Duration::from_secs(30));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, health.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        health.turned();
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"), "not connected yet");
        health.set_connected(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    }
}
