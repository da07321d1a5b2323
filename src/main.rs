//! `weir`: run stream jobs locally, inspect their checkpoints, and (soon)
//! operate them on Kubernetes.
//!
//! # Layout
//! - [`run`]: `weir run FILE`, a whole job in this process, with progress.
//! - [`checkpoints`]: `weir checkpoints list|inspect`.
//! - [`crd`]: the `StreamJob` custom resource and `weir crd`.
//! - [`operator`]: the StreamJob controller.
//! - [`restart_strategy`]: when to recreate failed pods (pure).
//! - [`cluster`]: `weir coordinator` and `weir worker`, a job across processes.

mod checkpoints;
mod cluster;
mod crd;
mod operator;
mod restart_strategy;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `weir --version`: the release and the git revision it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("WEIR_REVISION"), ")");

#[derive(Parser)]
#[command(name = "weir", version = VERSION, about = "Exactly-once stream processing jobs, locally and on Kubernetes")]
struct Cli {
    /// How log lines look: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(long, global = true, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamJob manifest in this process; rerunning resumes from its
    /// newest completed checkpoint.
    Run {
        /// The manifest, exactly as you would `kubectl apply` it.
        file: PathBuf,
        /// Never draw the updating progress line, log progress instead.
        #[arg(long)]
        no_progress_line: bool,
    },
    /// Coordinate a job across worker processes: schedule, checkpoint, recover.
    Coordinator(cluster::CoordinatorArgs),
    /// Run the subtasks a coordinator assigns.
    Worker(cluster::WorkerArgs),
    /// Print the StreamJob CustomResourceDefinition (YAML).
    Crd,
    /// Run the StreamJob operator against the current kubeconfig or in-cluster config.
    Operator {
        /// Namespaces to watch (comma-separated); empty: all namespaces.
        #[arg(long, env = "WEIR_NAMESPACES", value_delimiter = ',', default_value = "")]
        namespaces: Vec<String>,
        /// Image of job pods when a StreamJob names none.
        #[arg(long, env = "WEIR_JOB_IMAGE", default_value = concat!("ghcr.io/weir-dev/weir:", env!("CARGO_PKG_VERSION")))]
        job_image: String,
        #[arg(long, env = "WEIR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
        image_pull_policy: String,
        /// Secrets job pods pull their image with (comma-separated names).
        #[arg(long, env = "WEIR_IMAGE_PULL_SECRETS", value_delimiter = ',', default_value = "")]
        image_pull_secrets: Vec<String>,
        /// /healthz, /readyz and /metrics.
        #[arg(long, env = "WEIR_OPERATOR_HEALTH", default_value = "0.0.0.0:8080")]
        health: std::net::SocketAddr,
        /// How to reach a job's coordinator API; `{name}` and `{namespace}` are replaced.
        #[arg(long, env = "WEIR_COORDINATOR_URL")]
        coordinator_url: Option<String>,
        /// Checkpoint storage for jobs that keep the built-in default.
        #[arg(long, env = "WEIR_DEFAULT_STORAGE")]
        default_storage: Option<String>,
        /// A Secret whose keys become environment variables of job pods (storage credentials).
        #[arg(long, env = "WEIR_JOB_CREDENTIALS_SECRET")]
        job_credentials_secret: Option<String>,
        /// Give each job a NetworkPolicy admitting only its own pods (and anyone to its HTTP API port).
        #[arg(long, env = "WEIR_NETWORK_POLICIES", default_value_t = true, action = clap::ArgAction::Set)]
        network_policies: bool,
        /// How long a node may be NotReady or Unknown before the job pods on it count as lost:
        /// force-deleted and replaced, one failure per job (e.g. 60s).
        #[arg(long, env = "WEIR_NODE_LOST_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
        node_lost_after: std::time::Duration,
        /// How long a job may take to run (after a deployment, upgrade or restart) before its
        /// status says Stalled, with what its pods wait for.
        #[arg(long, env = "WEIR_PROGRESS_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
        progress_deadline: std::time::Duration,
        /// How often a running job's coordinator is asked for its checkpoints (status.checkpoints).
        #[arg(long, env = "WEIR_STATUS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
        status_interval: std::time::Duration,
        /// Take job certificates from cert-manager, issued by this issuer
        /// (`KIND/NAME`, for example `ClusterIssuer/weir-ca`), instead of
        /// a CA of the operator's own per job.
        #[arg(long, env = "WEIR_CERT_MANAGER_ISSUER")]
        cert_manager_issuer: Option<String>,
        /// The API group of that issuer (another for an external issuer).
        #[arg(long, env = "WEIR_CERT_MANAGER_ISSUER_GROUP", default_value = "cert-manager.io")]
        cert_manager_issuer_group: String,
        /// Elect a leader among replicas through this Lease (`NAMESPACE/NAME`).
        #[arg(long, env = "WEIR_LEADER_LEASE")]
        leader_lease: Option<String>,
        /// How long the leader's lease holds without renewal; the leader stops acting after 2/3 of it.
        #[arg(long, env = "WEIR_LEADER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
        leader_lease_duration: std::time::Duration,
    },
    /// Write Nexmark events 0..COUNT as JSON lines to stdout: the very records
    /// a `nexmark` source reads, for other engines to read the same input.
    Nexmark {
        count: u64,
        /// Events per second of event time (`dateTime`).
        #[arg(long, default_value_t = 10_000)]
        events_per_second: u64,
    },
    /// Inspect a job's checkpoints.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// List checkpoints under a job's directory, e.g. file://./weir-data/default/my-job
    /// (given a storage root, lists the jobs under it), or of a manifest's job (-f).
    List {
        #[arg(required_unless_present = "file")]
        uri: Option<String>,
        /// The job's manifest: its storage, namespace and name say where its checkpoints are.
        #[arg(short, long, conflicts_with = "uri")]
        file: Option<PathBuf>,
    },
    /// Show one checkpoint's operators, subtasks, files, sizes and times.
    Inspect { uri: String, id: u64 },
    /// Delete a job's checkpoints and savepoints (what deletionPolicy Purge runs).
    Purge { uri: String },
    /// Copy a job's newest committed, intact checkpoint to `savepoints/` (what
    /// deletionPolicy Savepoint runs when the job cannot take a savepoint itself).
    Savepoint { uri: String },
    /// Delete savepoints of a job by name (`sp-<ms>`), as the operator does
    /// with savepoints that fall out of `spec.savepoints` retention.
    Dispose {
        uri: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn write_nexmark(count: u64, events_per_second: u64) -> anyhow::Result<()> {
    use std::io::Write;
    anyhow::ensure!(events_per_second > 0, "--events-per-second: expected at least 1, got 0");
    let config = weir_runtime::connectors::nexmark::NexmarkConfig { events_per_second };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    for n in 0..count {
        serde_json::to_writer(&mut out, &config.event(n))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Resolves on SIGTERM with the exit code a shell gives it (128 + 15).
async fn terminated() -> anyhow::Result<u8> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(143)
}

/// mimalloc rather than glibc's malloc: declared pipelines allocate records
/// on one task thread and free them on another, where glibc's arenas
/// contend on a lock (a third of a manifest job's time in a profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two TLS stacks share rustls here (kube's and the S3 client's), each
    // bringing its own crypto provider; with both compiled in, rustls
    // refuses to guess, so the process names one before any connection.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        // Colour codes only where a person reads them: not in files or `kubectl logs`.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A pod's process is PID 1 of its container, where SIGTERM does
    // nothing unless handled: the long-running roles end on it at once
    // (checkpoints make that safe), instead of waiting out the grace period.
    let serves = matches!(cli.command, Command::Operator { .. } | Command::Coordinator(_) | Command::Worker(_));
    let operator = matches!(cli.command, Command::Operator { .. });
    let work = async {
        match cli.command {
            Command::Run { file, no_progress_line } => run::run(&file, !no_progress_line).await,
            Command::Operator {
                namespaces,
                job_image,
                image_pull_policy,
                image_pull_secrets,
                health,
                coordinator_url,
                leader_lease,
                leader_lease_duration,
                default_storage,
                job_credentials_secret,
                network_policies,
                node_lost_after,
                progress_deadline,
                status_interval,
                cert_manager_issuer,
                cert_manager_issuer_group,
            } => {
                let cert_manager = cert_manager_issuer
                    .filter(|i| !i.is_empty())
                    .map(|i| operator::certificates::IssuerRef::parse(&i, &cert_manager_issuer_group))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--cert-manager-issuer: {e}"))?;
                let leader_election = match leader_lease.as_deref().map(|l| l.split_once('/')) {
                    None => None,
                    Some(Some((ns, name))) if !ns.is_empty() && !name.is_empty() => {
                        Some((ns.to_string(), name.to_string()))
                    }
                    Some(_) => return Err(anyhow::anyhow!("--leader-lease: expected NAMESPACE/NAME")),
                };
                operator::run::run(operator::run::OperatorOptions {
                    namespaces: namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                    settings: operator::objects::Settings {
                        job_image,
                        image_pull_policy,
                        default_storage,
                        credentials_secret: job_credentials_secret,
                        network_policies,
                        image_pull_secrets: image_pull_secrets.into_iter().filter(|s| !s.is_empty()).collect(),
                        node_lost_after_ms: node_lost_after.as_millis() as u64,
                        progress_deadline_ms: progress_deadline.as_millis() as u64,
                        status_interval_ms: status_interval.as_millis().max(100) as u64,
                        cert_manager,
                    },
                    health,
                    coordinator_url,
                    leader_election,
                    leader_lease_duration,
                })
                .await
            }
            Command::Nexmark { count, events_per_second } => write_nexmark(count, events_per_second),
            Command::Crd => crd::crd_yaml().map(|y| print!("{y}")).map_err(anyhow::Error::from),
            Command::Coordinator(args) => cluster::coordinator(args).await,
            Command::Worker(args) => cluster::worker(args).await,
            Command::Checkpoints { command: CheckpointsCommand::List { uri, file } } => {
                let target = match (uri, file) {
                    (_, Some(file)) => checkpoints::Target::Manifest(file),
                    (Some(uri), None) => checkpoints::Target::Uri(uri),
                    (None, None) => anyhow::bail!("give a checkpoint directory URI or -f MANIFEST"),
                };
                checkpoints::list(target).await
            }
            Command::Checkpoints { command: CheckpointsCommand::Purge { uri } } => checkpoints::purge(&uri).await,
            Command::Checkpoints { command: CheckpointsCommand::Dispose { uri, names } } => {
                checkpoints::dispose(&uri, &names).await
            }
            Command::Checkpoints { command: CheckpointsCommand::Savepoint { uri } } => {
                checkpoints::savepoint(&uri).await
            }
            Command::Checkpoints { command: CheckpointsCommand::Inspect { uri, id } } => {
                checkpoints::inspect(&uri, id).await
            }
        }
    };
    let result = runtime.block_on(async {
        if !serves {
            return work.await.map(|()| None);
        }
        tokio::select! {
            result = work => result.map(|()| None),
            signal = terminated() => {
                if operator {
                    // A follower takes over now, not after the lease expires.
                    operator::leader::release().await;
                }
                signal.map(Some)
            }
        }
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(code)) => {
            tracing::info!("terminated (SIGTERM): exiting");
            ExitCode::from(code)
        }
        // A reader that stopped early (`weir checkpoints list | head`) is not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
