//! `weir coordinator` and `weir worker`. Every flag can also come from an
//! environment variable, which is how pods get them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tracing::warn;
use weir_runtime::distributed::coordinator::{self, CoordinatorOptions};
use weir_runtime::distributed::health::{self, Health, LIVENESS_LIMIT};
use weir_runtime::distributed::http;
use weir_runtime::distributed::protocol::JobToken;
use weir_runtime::distributed::tls;
use weir_runtime::distributed::worker::{run_worker, WorkerOptions};
use weir_runtime::manifest::{HumanDuration, StreamJob};

#[derive(Args)]
pub struct CoordinatorArgs {
    /// The StreamJob manifest.
    #[arg(long, env = "WEIR_JOB")]
    job: PathBuf,
    /// Where workers connect.
    #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:6123")]
    listen: SocketAddr,
    /// The HTTP API (/v1/job, /v1/checkpoints, /metrics, ...).
    #[arg(long, env = "WEIR_HTTP", default_value = "0.0.0.0:8081")]
    http: SocketAddr,
    /// Number of workers the job runs on.
    #[arg(long, env = "WEIR_WORKERS", default_value_t = 1)]
    workers: usize,
    /// A worker silent this long is treated as lost.
    #[arg(long, env = "WEIR_HEARTBEAT_TIMEOUT", default_value = "10s")]
    heartbeat_timeout: HumanDuration,
    /// How long to wait for enough workers to register before an attempt
    /// (Flink's slot.request.timeout); then the coordinator exits non-zero.
    #[arg(long, env = "WEIR_WORKER_WAIT_TIMEOUT", default_value = "5m")]
    worker_wait_timeout: HumanDuration,
    /// Pause between a failure and restoring the job.
    #[arg(long, env = "WEIR_RESTART_DELAY", default_value = "200ms")]
    restart_delay: HumanDuration,
    /// Do not restore checkpoints completed before this time (ms since the
    /// epoch); the operator sets it for a stateless upgrade.
    #[arg(long, env = "WEIR_IGNORE_CHECKPOINTS_BEFORE_MS", default_value_t = 0)]
    ignore_checkpoints_before_ms: u64,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// `host:port` of the coordinator's worker endpoint.
    #[arg(long, env = "WEIR_COORDINATOR")]
    coordinator: String,
    /// Where to listen for shuffle data from other workers (port 0: any).
    #[arg(long, env = "WEIR_DATA_BIND", default_value = "0.0.0.0:0")]
    data: SocketAddr,
    /// This worker's name in logs and the API (default: host name and pid).
    #[arg(long, env = "WEIR_WORKER_NAME")]
    name: Option<String>,
    /// How often to tell the coordinator this worker is alive.
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL", default_value = "1s")]
    heartbeat: HumanDuration,
    /// Where to serve /healthz (the control loop turns) and /readyz (a
    /// session with the coordinator) for probes; none if unset.
    #[arg(long, env = "WEIR_HEALTH")]
    health: Option<SocketAddr>,
}

pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let manifest =
        std::fs::read_to_string(&args.job).with_context(|| format!("cannot read manifest {}", args.job.display()))?;
    let job = StreamJob::from_yaml(&manifest)?;
    if args.workers == 0 {
        anyhow::bail!("--workers: expected at least 1, got 0");
    }
    let http_listener =
        tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("cannot listen on {}", args.http))?;
    let opts = CoordinatorOptions {
        manifest,
        job,
        listen: args.listen,
        http: args.http,
        workers: args.workers,
        heartbeat_timeout: args.heartbeat_timeout.get(),
        worker_wait_timeout: args.worker_wait_timeout.get(),
        restart_delay: args.restart_delay.get(),
        ignore_checkpoints_before_ms: args.ignore_checkpoints_before_ms,
        token: job_token("coordinator"),
        tls: job_tls("coordinator")?,
    };
    let api_tls = opts.tls.clone();
    let (shared, coordinator) = coordinator::start(opts).await?;
    tracing::info!(workers = %args.listen, http = %args.http, "coordinator listening");
    tokio::spawn(async move {
        if let Err(e) = http::serve(http_listener, shared, api_tls).await {
            tracing::error!("http api stopped: {e}");
        }
    });
    coordinator.run().await?;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let health_state = Health::new(LIVENESS_LIMIT);
    if let Some(addr) = args.health {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--health: cannot listen on {addr}"))?;
        let served = health_state.clone();
        tokio::spawn(async move {
            if let Err(e) = health::serve(listener, served).await {
                tracing::error!("health endpoint stopped: {e}");
            }
        });
    }
    let opts = WorkerOptions {
        coordinator: args.coordinator,
        name,
        data_bind: args.data,
        heartbeat: args.heartbeat.get(),
        token: job_token("worker"),
        tls: job_tls("worker")?,
        health: health_state,
    };
    run_worker(opts).await?;
    Ok(())
}

/// Mutual TLS from `WEIR_TLS_CERT`, `WEIR_TLS_KEY` and `WEIR_TLS_CA`
/// (the operator mounts them from the job's Secret); without them the
/// job's processes talk plain TCP, which `weir run` and hand-started
/// processes may do.
fn job_tls(role: &str) -> anyhow::Result<Option<std::sync::Arc<tls::JobTls>>> {
    let tls = tls::JobTls::from_env()?;
    if tls.is_none() {
        warn!("no WEIR_TLS_CERT/KEY/CA: this {role} talks to the job's other processes in clear");
    }
    Ok(tls.map(std::sync::Arc::new))
}

/// The job token comes from the environment only (`WEIR_JOB_TOKEN`, set
/// from a Secret by the operator): a flag would show it in `ps`.
fn job_token(role: &str) -> JobToken {
    let token = JobToken::new(std::env::var("WEIR_JOB_TOKEN").ok());
    if !token.is_set() {
        warn!(
            "no WEIR_JOB_TOKEN: this {role} admits any process that reaches it; \
             the operator sets one per job"
        );
    }
    token
}
