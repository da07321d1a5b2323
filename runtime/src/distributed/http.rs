//! The coordinator's HTTP API (JSON) and Prometheus metrics. The operator
//! reads checkpoint completion from here.
//!
//! With the job's TLS identity the API is HTTPS (the job certificate, no
//! client certificate asked). The same port still answers plain HTTP for
//! health and metrics only, told apart by the first byte a client sends
//! (a TLS handshake starts with 0x16): kubelet probes and Prometheus
//! scrapers need no job CA, and a job pod created from an image that
//! predates TLS on this port keeps the same probes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::either::Either;
use tracing::debug;

use super::coordinator::{JobState, Shared};
use super::tls::JobTls;
use super::triggers::{stop_message, write_termination_message, TriggerState};
use crate::job::coordinate::{wall_ms, Request};
use crate::metrics::{CompletedCheckpoint, JobMetrics};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/job", get(job))
        .route("/v1/checkpoints", get(checkpoints))
        .route("/v1/savepoints", post(savepoint))
        .route("/v1/stop", post(stop))
        .route("/v1/savepoint-triggers", post(trigger_savepoint))
        .route("/v1/savepoint-triggers/{id}", get(savepoint_trigger))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(shared)
}

/// Serves the API on `listener` until the process ends: HTTPS with `tls`,
/// and plain HTTP for health and metrics beside it.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<JobTls>>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let tls_required = tls.is_some();
    let app = router(shared).layer(middleware::from_fn_with_state(tls_required, plain_only_for_open));
    let listener = ApiListener::start(listener, tls, addr);
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
}

/// Who is calling, and whether over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Connected<IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        *stream.remote_addr()
    }
}

/// Paths plain HTTP may reach while the API takes TLS: nothing in them is
/// secret, and probes and scrapers hold no job CA.
const OPEN_IN_PLAIN: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

async fn plain_only_for_open(
    State(tls_required): State<bool>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: HttpRequest,
    next: Next,
) -> Response {
    if tls_required && !peer.tls && !OPEN_IN_PLAIN.contains(&req.uri().path()) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{} needs HTTPS: this API serves TLS with the job's certificate (the CA is ca.crt in the job's Secret); plain HTTP reaches only {}",
                req.uri().path(),
                OPEN_IN_PLAIN.join(", ")
            ),
        );
    }
    next.run(req).await
}

/// How long a client may take to send its first byte, and then its handshake.
const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(10);

/// Connections of the API port, each TLS or plain by its first byte.
/// Handshakes run on their own tasks, so a slow client holds up no other.
pub struct ApiListener {
    ready: mpsc::Receiver<(Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>, Peer)>,
    addr: SocketAddr,
}

impl ApiListener {
    fn start(listener: TcpListener, tls: Option<Arc<JobTls>>, addr: SocketAddr) -> ApiListener {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, from) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        debug!("api accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let Some(io) = classify(tcp, from, tls.as_deref()).await else { return };
                    let _ = tx.send(io).await;
                });
            }
        });
        ApiListener { ready, addr }
    }
}

async fn classify(
    tcp: TcpStream,
    from: SocketAddr,
    tls: Option<&JobTls>,
) -> Option<(Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>, Peer)> {
    let Some(tls) = tls else { return Some((Either::Right(tcp), Peer { addr: from, tls: false })) };
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_LIMIT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => match tls.accept_api(tcp).await {
            Ok(stream) => Some((Either::Left(stream), Peer { addr: from, tls: true })),
            Err(e) => {
                debug!("api handshake with {from} failed: {e}");
                None
            }
        },
        Ok(Ok(1)) => Some((Either::Right(tcp), Peer { addr: from, tls: false })),
        _ => None,
    }
}

impl Listener for ApiListener {
    type Io = Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never ends while the process runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.addr, tls: false })
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn job(State(shared): State<Arc<Shared>>) -> Response {
    let Some(status) = shared.status() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable") };
    let (records_in, records_out) = shared.records();
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("workers".into(), serde_json::to_value(shared.workers()).unwrap_or_default());
        obj.insert("recordsIn".into(), records_in.into());
        obj.insert("recordsOut".into(), records_out.into());
        obj.insert("stages".into(), serde_json::to_value(shared.stages()).unwrap_or_default());
    }
    Json(body).into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckpointView {
    id: u64,
    path: String,
    completed_at_ms: u64,
    duration_ms: u64,
    size_bytes: u64,
}

impl From<CompletedCheckpoint> for CheckpointView {
    fn from(c: CompletedCheckpoint) -> Self {
        CheckpointView {
            id: c.id,
            path: c.path,
            completed_at_ms: c.completed_at_ms,
            duration_ms: c.duration_ms,
            size_bytes: c.size_bytes,
        }
    }
}

async fn checkpoints(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    let history: Vec<CheckpointView> = m.history().into_iter().rev().take(20).map(Into::into).collect();
    Json(json!({
        "latest": m.last_checkpoint().map(CheckpointView::from),
        "inProgress": m.checkpoints_in_progress.load(Ordering::Relaxed),
        "completed": JobMetrics::get(&m.checkpoints_completed),
        "failed": JobMetrics::get(&m.checkpoints_failed),
        "history": history,
    }))
    .into_response()
}

/// Both mutating calls: they need the job token.
async fn take_savepoint(shared: &Shared, headers: &HeaderMap, stop: bool) -> Response {
    if !authorized(shared, headers) {
        return unauthorized();
    }
    match savepoint_of(shared, stop).await {
        TriggerState::Completed { path, checkpoint } => {
            Json(json!({ "path": path, "checkpoint": checkpoint })).into_response()
        }
        TriggerState::Failed { reason } => error(StatusCode::CONFLICT, reason),
        TriggerState::InProgress => error(StatusCode::INTERNAL_SERVER_ERROR, "the savepoint did not end"),
    }
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "this call needs the job token: Authorization: Bearer <token>")
}

/// A savepoint (with `stop`, the last one: then the job finishes), start
/// to end. A stop's savepoint is also left as the termination message.
async fn savepoint_of(shared: &Shared, stop: bool) -> TriggerState {
    let (reply, result) = tokio::sync::oneshot::channel();
    let request = if stop { Request::Stop { reply } } else { Request::Checkpoint { reply } };
    if shared.requests.send(request).await.is_err() {
        return TriggerState::Failed { reason: "the job is not running".into() };
    }
    let requested = match result.await {
        Ok(Ok(requested)) => requested,
        Ok(Err(reason)) => return TriggerState::Failed { reason },
        Err(_) => return TriggerState::Failed { reason: "the job stopped before the savepoint completed".into() },
    };
    // The pin keeps the checkpoint from retention, and the coordinator from
    // exiting after a stop, until the copy is done.
    let id = requested.pin.id();
    let copied = shared.store.copy_to_savepoint(id, wall_ms()).await;
    let state = match copied {
        Ok(path) => {
            if stop {
                write_termination_message(&stop_message(&path, id));
            }
            TriggerState::Completed { path, checkpoint: id }
        }
        Err(e) => TriggerState::Failed { reason: format!("cannot copy checkpoint {id} to a savepoint: {e}") },
    };
    drop(requested);
    state
}

/// `POST /v1/savepoint-triggers` (`?stop=true`: the last savepoint, then
/// the job finishes): the savepoint runs in the background; the answer
/// (202) is its id.
async fn trigger_savepoint(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let stop = match uri.query().unwrap_or("") {
        "" | "stop=false" => false,
        "stop=true" => true,
        other => return error(StatusCode::BAD_REQUEST, format!("unknown query `{other}`: expected stop=true or none")),
    };
    let id = shared.triggers.start(wall_ms());
    let task = shared.clone();
    let trigger = id.clone();
    tokio::spawn(async move {
        let state = savepoint_of(&task, stop).await;
        task.triggers.finish(&trigger, state);
    });
    (StatusCode::ACCEPTED, Json(json!({ "id": id, "stop": stop }))).into_response()
}

/// `GET /v1/savepoint-triggers/<id>`: `InProgress`, `Completed` with the
/// path, or `Failed` with the reason; 404 for an id this coordinator never
/// handed out (it restarted, or the id is an older coordinator's).
async fn savepoint_trigger(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.triggers.get(&id) {
        Some(state) => Json(state).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no savepoint trigger {id} in this coordinator")),
    }
}

async fn savepoint(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    take_savepoint(&shared, &headers, false).await
}

async fn stop(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    take_savepoint(&shared, &headers, true).await
}

/// Mutating calls present the job token as `Authorization: Bearer <token>`;
/// reads (status, checkpoints, metrics, health) stay open for probes and scrapers.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    shared.token.admits(presented)
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.status().map(|s| s.state) {
        Some(JobState::Running) => (StatusCode::OK, "running").into_response(),
        Some(state) => (StatusCode::SERVICE_UNAVAILABLE, format!("{state:?}")).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    let mut registry = Registry::with_prefix("weir");
    let (records_in, records_out) = shared.records();
    counter(&mut registry, "records_in", "Records emitted by the job's sources", records_in);
    counter(&mut registry, "records_out", "Records written by the job's sinks", records_out);
    gauge(
        &mut registry,
        "attempt_bad_records",
        "Bad records skipped or dead-lettered in the current attempt",
        shared.attempt_sum(|c| c.bad_records) as i64,
    );
    gauge(
        &mut registry,
        "attempt_sink_retries",
        "Sink operations retried after a transient error (a lost connection) in the current attempt",
        shared.attempt_sum(|c| c.sink_retries) as i64,
    );
    gauge(
        &mut registry,
        "attempt_source_errors",
        "Transient source errors (brokers unreachable, a fetch timed out) retried by the source's client in the \
         current attempt",
        shared.attempt_sum(|c| c.source_errors) as i64,
    );
    gauge(
        &mut registry,
        "attempt_late_records",
        "Records dropped as late (event time past every window they belong to) in the current attempt",
        shared.attempt_sum(|c| c.late_records) as i64,
    );
    counter(&mut registry, "checkpoints_completed", "Completed checkpoints", JobMetrics::get(&m.checkpoints_completed));
    counter(
        &mut registry,
        "checkpoints_failed",
        "Failed or expired checkpoints",
        JobMetrics::get(&m.checkpoints_failed),
    );
    gauge(
        &mut registry,
        "checkpoints_in_progress",
        "Checkpoints in progress",
        m.checkpoints_in_progress.load(Ordering::Relaxed) as i64,
    );
    let last = m.last_checkpoint();
    gauge(
        &mut registry,
        "last_checkpoint_id",
        "Id of the newest completed checkpoint",
        last.as_ref().map_or(0, |c| c.id as i64),
    );
    gauge(
        &mut registry,
        "last_checkpoint_duration_ms",
        "Duration of the newest completed checkpoint",
        last.as_ref().map_or(0, |c| c.duration_ms as i64),
    );
    gauge(
        &mut registry,
        "last_checkpoint_size_bytes",
        "Size of the newest completed checkpoint",
        last.as_ref().map_or(0, |c| c.size_bytes as i64),
    );
    let status = shared.status();
    counter(
        &mut registry,
        "restarts",
        "Times the job was reset to a checkpoint",
        status.as_ref().map_or(0, |s| s.restarts),
    );
    gauge(&mut registry, "workers", "Registered workers", shared.workers().len() as i64);
    gauge(
        &mut registry,
        "running",
        "1 while the job runs",
        i64::from(status.is_some_and(|s| s.state == JobState::Running)),
    );
    let stage_in = Family::<Vec<(String, String)>, Gauge>::default();
    let stage_out = Family::<Vec<(String, String)>, Gauge>::default();
    let stage_bp = Family::<Vec<(String, String)>, Gauge>::default();
    for s in shared.stages() {
        let labels = vec![("operator".to_string(), s.stage.clone())];
        stage_in.get_or_create(&labels).set(s.records_in as i64);
        stage_out.get_or_create(&labels).set(s.records_out as i64);
        stage_bp.get_or_create(&labels).set(s.backpressure_ms as i64);
    }
    registry.register("operator_records_in", "Records into an operator chain in the current attempt", stage_in);
    registry.register("operator_records_out", "Records out of an operator chain in the current attempt", stage_out);
    registry.register(
        "operator_backpressure_ms",
        "Time an operator chain waited for downstream capacity in the current attempt",
        stage_bp,
    );
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
