//! The worker process: registers with the coordinator, runs the subtasks
//! it is assigned, forwards their events, and reconnects (dropping its
//! subtasks) whenever the coordinator goes away. A worker that hears
//! nothing from its coordinator within the heartbeat timeout (it was frozen,
//! or cut off) drops its subtasks on its own before it talks again: by then
//! a replacement may run them, under another epoch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::OptionFuture;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::health::Health;
use super::network::{DataPlane, OnBroken};
use super::protocol::{
    self, Connection, JobToken, Placement, ProtocolError, TaskKey, ToCoordinator, ToWorker, WorkerCounters,
};
use super::tls::{self, JobTls};
use crate::checkpoint::{CheckpointStore, Keep, Load};
use crate::faults::Faults;
use crate::job::deploy::{all_tasks, Deployment};
use crate::job::fence::Fence;
use crate::job::JobConfig;
use crate::keygroup::KeyGroupRange;
use crate::manifest::StreamJob;
use crate::metrics::JobMetrics;
use crate::task::error::{FailureKind, TaskFailure};
use crate::task::router::NetworkWiring;
use crate::task::{Control, Event, TaskId};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen for shuffle data on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    #[error("subtasks of attempt {epoch:016x} did not stop within {limit:?} of being cancelled; exiting so the pod is replaced")]
    Wedged { epoch: u64, limit: Duration },
}

/// How long cancelled subtasks may take to stop. They stop at their next
/// await; only code stuck outside the runtime (a hung disk) takes longer,
/// and then the process cannot safely run another attempt.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// How long a message to the coordinator may wait before any attempt said
/// what the heartbeat timeout is.
const IDLE_SEND_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `host:port` of the coordinator's worker endpoint.
    pub coordinator: String,
    pub name: String,
    /// Where to listen for shuffle data (port 0: any free port).
    pub data_bind: SocketAddr,
    pub heartbeat: Duration,
    /// Presented to the coordinator and other workers, and asked of them.
    pub token: JobToken,
    /// Mutual TLS with the coordinator and the other workers.
    pub tls: Option<Arc<JobTls>>,
    /// What the liveness and readiness probes report.
    pub health: Arc<Health>,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
    Refused(String),
    Wedged(WorkerError),
}

struct Attempt {
    epoch: u64,
    deployment: Deployment,
    pumps: JoinSet<()>,
    /// Control messages per subtask, forwarded by a task of `pumps` each: a
    /// subtask slow to take them (held by backpressure) never holds the
    /// session loop, which must go on heartbeating and obeying `Cancel`.
    controls: Vec<mpsc::UnboundedSender<Control>>,
    metrics: Arc<JobMetrics>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    index: HashMap<TaskKey, usize>,
    /// Silence from the coordinator longer than this fences the attempt off.
    heartbeat_timeout: Duration,
}

impl Attempt {
    /// Cancels the subtasks and waits, up to [`STOP_LIMIT`], until they are gone.
    async fn shutdown(mut self) -> Result<(), WorkerError> {
        let stopped = tokio::time::timeout(STOP_LIMIT, self.deployment.shutdown()).await;
        self.pumps.abort_all();
        while self.pumps.join_next().await.is_some() {}
        stopped.map_err(|_| WorkerError::Wedged { epoch: self.epoch, limit: STOP_LIMIT })
    }
}

/// Runs until the coordinator says the job is finished.
pub async fn run_worker(opts: WorkerOptions) -> Result<(), WorkerError> {
    let plane = DataPlane::bind(opts.data_bind, opts.token.clone(), opts.tls.clone())
        .await
        .map_err(|source| WorkerError::Bind { addr: opts.data_bind, source })?;
    info!(name = %opts.name, data = %plane.addr(), coordinator = %opts.coordinator, "worker started");
    let mut backoff = Duration::from_millis(100);
    loop {
        opts.health.turned();
        let (stream, local) = match connect(&opts).await {
            Ok(s) => s,
            Err(why) => {
                warn!("{why}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut conn = protocol::framed(stream);
        match session(&mut conn, local, &plane, &opts).await {
            SessionEnd::Shutdown => {
                info!("the job is finished; worker exits");
                return Ok(());
            }
            SessionEnd::Lost(why) => warn!("lost the coordinator ({why}); dropped my subtasks, reconnecting"),
            // Retrying cannot help: the token is wrong until the pod is recreated.
            SessionEnd::Refused(why) => return Err(WorkerError::Refused(why)),
            SessionEnd::Wedged(e) => return Err(e),
        }
    }
}

/// A connection to the coordinator (TLS if the job has it), and this end's address.
async fn connect(opts: &WorkerOptions) -> Result<(Box<dyn tls::Io>, Option<SocketAddr>), String> {
    let tcp = TcpStream::connect(&opts.coordinator)
        .await
        .map_err(|e| format!("cannot reach the coordinator at {}: {e}", opts.coordinator))?;
    let local = tcp.local_addr().ok();
    let stream = tls::client(opts.tls.as_deref(), tcp)
        .await
        .map_err(|e| format!("no TLS session with the coordinator at {}: {e}", opts.coordinator))?;
    Ok((stream, local))
}

async fn next_event(current: &mut Option<Attempt>) -> Option<(u64, Event)> {
    match current {
        Some(a) => a.events.recv().await.map(|e| (a.epoch, e)),
        None => std::future::pending().await,
    }
}

fn network_task() -> TaskId {
    TaskId { stage: usize::MAX, name: Arc::from("network"), subtask: 0, parallelism: 0 }
}

/// `local`: this end of the connection, the address peers reach us at.
async fn session(
    conn: &mut Connection,
    local: Option<SocketAddr>,
    plane: &Arc<DataPlane>,
    opts: &WorkerOptions,
) -> SessionEnd {
    let data_addr = advertised(plane.addr(), local);
    let register = ToCoordinator::Register { name: opts.name.clone(), data_addr, token: opts.token.presented() };
    if let Err(e) = protocol::send_within(conn, &register, IDLE_SEND_LIMIT).await {
        return SessionEnd::Lost(e.to_string());
    }
    let (broken_tx, mut broken) = mpsc::channel::<(u64, String)>(64);
    let mut current: Option<Attempt> = None;
    // An attempt being deployed (state loading can take long): the session
    // loop goes on heartbeating meanwhile.
    let mut opening: Option<Opening> = None;
    let mut heartbeat = tokio::time::interval(opts.heartbeat);
    let connected = Instant::now();
    let mut lease = Lease::new();
    opts.health.set_connected(true);
    let end = loop {
        opts.health.turned();
        let woke = tokio::select! {
            _ = heartbeat.tick() => Woke::Tick,
            msg = protocol::recv::<ToWorker>(conn) => Woke::Message(msg),
            Some((epoch, event)) = next_event(&mut current) => Woke::Event(epoch, event),
            Some((epoch, reason)) = broken.recv() => Woke::Broken(epoch, reason),
            Some(opened) = OptionFuture::from(opening.as_mut().map(|o| &mut o.handle)) => Woke::Opened(opened),
        };
        // Whatever woke the loop, a lapsed lease comes first: after a
        // freeze, the subtasks must go before anything is said or done.
        let held = current.as_ref().map(|a| (a.epoch, a.heartbeat_timeout));
        let held = held.or(opening.as_ref().map(|o| (o.fence.epoch, o.heartbeat_timeout)));
        // A coordinator that takes no message for as long as the lease
        // lasts is as good as silent.
        let limit = held.map_or(IDLE_SEND_LIMIT, |(_, timeout)| timeout);
        if let Some((epoch, timeout)) = held {
            if let Some(silent) = lease.lapsed(timeout) {
                warn!(epoch = %format!("{epoch:016x}"),
                    "no word from the coordinator for {silent:?} (timeout {timeout:?}): fencing myself off");
                break SessionEnd::Lost(format!("no word from the coordinator for {silent:?}"));
            }
        }
        let step: Result<Option<SessionEnd>, ProtocolError> = match woke {
            Woke::Tick => {
                let counters = current.as_ref().map_or(WorkerCounters::default(), |a| WorkerCounters {
                    epoch: a.epoch,
                    records_in: JobMetrics::get(&a.metrics.records_in),
                    records_out: JobMetrics::get(&a.metrics.records_out),
                    bad_records: JobMetrics::get(&a.metrics.bad_records_skipped)
                        + JobMetrics::get(&a.metrics.bad_records_dead_lettered),
                    sink_retries: JobMetrics::get(&a.metrics.sink_retries),
                    source_errors: JobMetrics::get(&a.metrics.source_errors),
                    late_records: JobMetrics::get(&a.metrics.late_records_dropped),
                    first_record_at_ms: Some(JobMetrics::get(&a.metrics.first_record_at_ms)).filter(|t| *t > 0),
                    stages: a.metrics.stage_samples(),
                });
                let sent_at_us = connected.elapsed().as_micros() as u64;
                let beat = ToCoordinator::Heartbeat { sent_at_us, counters };
                protocol::send_within(conn, &beat, limit).await.map(|_| None)
            }
            Woke::Message(Ok(Some(ToWorker::HeartbeatAck { sent_at_us }))) => {
                lease.renew(connected + Duration::from_micros(sent_at_us));
                Ok(None)
            }
            Woke::Message(Ok(Some(msg))) => {
                if matches!(msg, ToWorker::Deploy { .. }) {
                    lease.renew(Instant::now());
                }
                handle(msg, conn, limit, &mut current, &mut opening, plane, &broken_tx).await
            }
            Woke::Opened(opened) => match opening.take() {
                Some(o) => o.finish(opened, conn, limit, &mut current).await,
                None => Ok(None),
            },
            Woke::Message(Ok(None)) => Ok(Some(SessionEnd::Lost("connection closed".into()))),
            Woke::Message(Err(e)) => Err(e),
            Woke::Event(epoch, event) => {
                protocol::send_within(conn, &ToCoordinator::Event { epoch, event }, limit).await.map(|_| None)
            }
            Woke::Broken(epoch, reason) => {
                let event = Event::Failed {
                    task: network_task(),
                    failure: TaskFailure::new(FailureKind::ChannelBroken, reason),
                };
                protocol::send_within(conn, &ToCoordinator::Event { epoch, event }, limit).await.map(|_| None)
            }
        };
        match step {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(e) => break SessionEnd::Lost(e.to_string()),
        }
    };
    opts.health.set_connected(false);
    if let Some(o) = opening.take() {
        o.handle.abort();
    }
    if let Some(a) = current.take() {
        if let Err(e) = a.shutdown().await {
            return SessionEnd::Wedged(e);
        }
    }
    end
}

/// The shuffle address other workers are told. A listener on every
/// interface (`0.0.0.0:port`, a pod's default) is reached at the address
/// this worker has on the coordinator's network: the local end of the
/// connection to it.
fn advertised(bound: SocketAddr, towards_coordinator: Option<SocketAddr>) -> SocketAddr {
    match towards_coordinator {
        Some(local) if bound.ip().is_unspecified() => SocketAddr::new(local.ip(), bound.port()),
        _ => bound,
    }
}

/// What woke the session loop.
enum Woke {
    Tick,
    Message(Result<Option<ToWorker>, ProtocolError>),
    Event(u64, Event),
    Broken(u64, String),
    Opened(Result<Result<Attempt, DeployFailure>, tokio::task::JoinError>),
}

/// An attempt being deployed beside the session loop.
struct Opening {
    fence: Fence,
    restore: Option<u64>,
    heartbeat_timeout: Duration,
    handle: tokio::task::JoinHandle<Result<Attempt, DeployFailure>>,
}

/// Why a deployment failed, and the checkpoint it found damaged, if that was why.
struct DeployFailure {
    failure: TaskFailure,
    damaged: Option<u64>,
}

impl From<TaskFailure> for DeployFailure {
    fn from(failure: TaskFailure) -> DeployFailure {
        DeployFailure { failure, damaged: None }
    }
}

impl Opening {
    /// Reports the deployment's outcome to the coordinator; a deployed
    /// attempt becomes the current one.
    async fn finish(
        self,
        opened: Result<Result<Attempt, DeployFailure>, tokio::task::JoinError>,
        conn: &mut Connection,
        limit: Duration,
        current: &mut Option<Attempt>,
    ) -> Result<Option<SessionEnd>, ProtocolError> {
        let (fence, epoch) = (self.fence, self.fence.epoch);
        let opened = opened.unwrap_or_else(|e| {
            let why = format!("the deployment of attempt {} ended: {e}", fence.epoch_tag());
            Err(TaskFailure::new(FailureKind::Deployment, why).into())
        });
        match opened {
            Ok(a) => {
                info!(epoch = %fence.epoch_tag(), incarnation = %fence.incarnation_tag(), subtasks = a.index.len(),
                    restore = ?self.restore, "deployed attempt {}", fence.epoch_tag());
                *current = Some(a);
                protocol::send_within(conn, &ToCoordinator::Opened { epoch }, limit).await?;
            }
            Err(DeployFailure { failure, damaged }) => {
                warn!(epoch = %fence.epoch_tag(), "cannot deploy attempt {}: {failure}", fence.epoch_tag());
                protocol::send_within(conn, &ToCoordinator::OpenFailed { epoch, failure, damaged }, limit).await?;
            }
        }
        Ok(None)
    }
}

/// The coordinator's word that it was alive at some instant of this
/// worker's clock: the send time of the newest heartbeat it echoed. Only
/// echoes renew it, so messages that sat in a buffer while the process was
/// frozen do not make a stale worker believe it still belongs.
struct Lease {
    since: Instant,
}

impl Lease {
    fn new() -> Lease {
        Lease { since: Instant::now() }
    }

    fn renew(&mut self, alive_at: Instant) {
        self.since = self.since.max(alive_at);
    }

    /// How long the coordinator has been silent, if longer than `timeout`.
    fn lapsed(&self, timeout: Duration) -> Option<Duration> {
        Some(self.since.elapsed()).filter(|silent| *silent > timeout)
    }
}

async fn handle(
    msg: ToWorker,
    conn: &mut Connection,
    limit: Duration,
    current: &mut Option<Attempt>,
    opening: &mut Option<Opening>,
    plane: &Arc<DataPlane>,
    broken_tx: &mpsc::Sender<(u64, String)>,
) -> Result<Option<SessionEnd>, ProtocolError> {
    match msg {
        ToWorker::Deploy { fence, manifest, restore, restore_from, placement, worker_index, heartbeat_timeout_ms } => {
            if let Some(a) = current.take() {
                if let Err(e) = a.shutdown().await {
                    return Ok(Some(SessionEnd::Wedged(e)));
                }
            }
            if let Some(o) = opening.take() {
                o.handle.abort();
            }
            let source = restore.map(|id| (id, restore_from));
            let heartbeat_timeout = Duration::from_millis(heartbeat_timeout_ms.max(1));
            let (plane, broken_tx) = (plane.clone(), broken_tx.clone());
            let handle = tokio::spawn(async move {
                deploy(fence, manifest, source, placement, worker_index, plane, broken_tx, heartbeat_timeout).await
            });
            *opening = Some(Opening { fence, restore, heartbeat_timeout, handle });
        }
        ToWorker::Start { epoch } => {
            if let Some(a) = current.as_mut().filter(|a| a.epoch == epoch) {
                if let Err(e) = a.deployment.start(&a.events_tx) {
                    let failure = TaskFailure::new(FailureKind::Deployment, e.to_string());
                    let event = Event::Failed { task: network_task(), failure };
                    protocol::send_within(conn, &ToCoordinator::Event { epoch, event }, limit).await?;
                }
            }
        }
        ToWorker::Control { epoch, task, control } => {
            if let Some(a) = current.as_ref().filter(|a| a.epoch == epoch) {
                if let Some(i) = a.index.get(&task) {
                    // Gone only when the subtask's forwarder ended with it.
                    let _ = a.controls[*i].send(control);
                }
            }
        }
        ToWorker::Cancel { epoch } => {
            if opening.as_ref().is_some_and(|o| o.fence.epoch == epoch) {
                if let Some(o) = opening.take() {
                    o.handle.abort();
                }
            }
            if current.as_ref().is_some_and(|a| a.epoch == epoch) {
                if let Some(a) = current.take() {
                    if let Err(e) = a.shutdown().await {
                        return Ok(Some(SessionEnd::Wedged(e)));
                    }
                }
            }
        }
        ToWorker::HeartbeatAck { .. } => {}
        ToWorker::Shutdown => return Ok(Some(SessionEnd::Shutdown)),
        ToWorker::Refused { reason } => return Ok(Some(SessionEnd::Refused(reason))),
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
async fn deploy(
    fence: Fence,
    manifest: String,
    restore: Option<(u64, Option<String>)>,
    placement: Placement,
    me: usize,
    plane: Arc<DataPlane>,
    broken_tx: mpsc::Sender<(u64, String)>,
    heartbeat_timeout: Duration,
) -> Result<Attempt, DeployFailure> {
    let unbuildable = |e: &dyn std::fmt::Display| TaskFailure::new(FailureKind::Deployment, e.to_string());
    let job = StreamJob::from_yaml(&manifest).map_err(|e| unbuildable(&e))?;
    let graph = crate::pipeline::build(&job.spec).map_err(|e| unbuildable(&e))?;
    let mut config = JobConfig::for_job(&job);
    config.faults = Faults::from_env();
    let store = CheckpointStore::open(&config.checkpoints.storage, &config.namespace, &config.name)
        .map_err(|e| TaskFailure::from(&e))?;
    // Only the key groups of this worker's subtasks are read and kept.
    let mine = |id: &TaskId| placement.worker_of(TaskKey { stage: id.stage, subtask: id.subtask }) == Some(me);
    let keep = Keep::KeyGroups(
        all_tasks(&graph)
            .into_iter()
            .filter(|(id, _)| mine(id))
            .map(|(id, _)| KeyGroupRange::for_subtask(graph.max_parallelism, id.parallelism, id.subtask))
            .collect(),
    );
    let restored = match restore {
        Some((id, None)) => match store.load_verified(id, &keep).await {
            Ok(r) => Some(Arc::new(r)),
            Err(e) if e.is_damage() => {
                let failure = TaskFailure::new(FailureKind::DamagedCheckpoint, e.to_string());
                return Err(DeployFailure { failure, damaged: Some(id) });
            }
            Err(e) => return Err(TaskFailure::from(&e).into()),
        },
        Some((_, Some(uri))) => {
            let snapshot = CheckpointStore::open_dir(&uri).map_err(|e| TaskFailure::from(&e))?;
            let loaded = snapshot.load_snapshot_here(&Load::Verified(keep)).await;
            Some(Arc::new(loaded.map_err(|e| TaskFailure::new(e.failure_kind(), format!("{uri}: {e}")))?))
        }
        None => None,
    };
    let epoch = fence.epoch;
    plane.forget_all_but(epoch);
    let broken = broken_tx.clone();
    let on_broken: OnBroken = Arc::new(move |reason| {
        let _ = broken.try_send((epoch, reason));
    });
    let mut pumps = JoinSet::new();
    let mut wiring =
        NetworkWiring { epoch, placement: &placement, me, plane: plane.as_ref(), pumps: &mut pumps, on_broken };
    for (i, edge) in graph.edges.iter().enumerate() {
        edge.connect_distributed(i, config.channel_bounds(), &mut wiring);
    }
    let (events_tx, events) = mpsc::channel(1024);
    let metrics = Arc::new(JobMetrics::default());
    // Building decodes the restored state into the operators: CPU work
    // that must not hold a runtime thread the session loop may need.
    let build =
        || Deployment::build(&graph, mine, restored.clone(), fence, &config, metrics.clone(), &store, &events_tx);
    let built = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(build),
        _ => build(),
    };
    let mut deployment = built.map_err(|e| TaskFailure::from(&e))?;
    if let Err(e) = deployment.open().await {
        deployment.shutdown().await;
        pumps.abort_all();
        return Err(TaskFailure::from(&e).into());
    }
    // Every operator took its state: what is left of the restored
    // checkpoint (operator state, already copied) goes now.
    if let Some(r) = restored {
        r.release_state();
    }
    let index = deployment
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (TaskKey { stage: id.stage, subtask: id.subtask }, i))
        .collect();
    let controls = deployment
        .controls
        .iter()
        .map(|to_task| {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let to_task = to_task.clone();
            pumps.spawn(async move {
                while let Some(control) = rx.recv().await {
                    if to_task.send(control).await.is_err() {
                        break;
                    }
                }
            });
            tx
        })
        .collect();
    Ok(Attempt { epoch, deployment, pumps, controls, metrics, events_tx, events, index, heartbeat_timeout })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_listening_on_every_interface_advertises_its_address_towards_the_coordinator() {
        let any: SocketAddr = "0.0.0.0:7001".parse().unwrap();
        let towards = Some("10.1.2.3:51234".parse().unwrap());
        assert_eq!(advertised(any, towards), "10.1.2.3:7001".parse().unwrap());
        let pinned: SocketAddr = "10.9.9.9:7001".parse().unwrap();
        assert_eq!(advertised(pinned, towards), pinned, "an address chosen by hand is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn an_echo_that_waited_out_a_freeze_does_not_renew_the_lease() {
        let timeout = Duration::from_secs(1);
        let mut lease = Lease::new();
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        lease.renew(sent + Duration::from_millis(200));
        assert_eq!(lease.lapsed(timeout), None, "a fresh echo keeps the worker in");
        // Frozen for five seconds; on waking it reads the echo of a
        // heartbeat it sent before the freeze.
        let before_freeze = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        lease.renew(before_freeze);
        let silent = lease.lapsed(timeout).expect("the lease lapsed");
        assert!(silent >= Duration::from_secs(5), "{silent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_echo_never_moves_the_lease_back() {
        let mut lease = Lease::new();
        tokio::time::advance(Duration::from_millis(900)).await;
        let recent = Instant::now();
        lease.renew(recent);
        lease.renew(recent - Duration::from_millis(800));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(lease.lapsed(Duration::from_secs(1)), None);
    }
}
