//! The checkpoint loop: trigger, collect acks, write `_metadata`, notify,
//! retain; end when every subtask finished, fail when one failed. The
//! storage work of a completion (`_metadata`, retention) runs beside the
//! loop with the checkpoint timeout as its limit, so a slow store never
//! holds up acks, failures or requests. It talks
//! to subtasks through a [`ControlPlane`], so the same loop drives threads
//! in this process and subtasks on remote workers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, OptionFuture};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::alignment::WatermarkGroup;
use super::fence::Fence;
use super::{JobConfig, JobError};
use crate::checkpoint::coordinator::FailureVerdict;
use crate::checkpoint::Pin;
use crate::checkpoint::{
    CheckpointError, CheckpointMetadata, CheckpointStore, CoordinatorOptions, Ledger, PendingCheckpoints,
};
use crate::faults::FaultPoint;
use crate::metrics::{CompletedCheckpoint, JobMetrics};
use crate::task::error::FailureKind;
use crate::task::{Barrier, Control, Event, TaskId};

/// How long an echo of a failure (a closed channel) waits for its cause.
const ECHO_GRACE: Duration = Duration::from_millis(500);

/// How the loop reaches subtasks, by their index in [`ControlPlane::tasks`].
pub trait ControlPlane {
    fn tasks(&self) -> &[(TaskId, bool)];
    fn send(&self, task: usize, msg: Control) -> impl std::future::Future<Output = ()> + Send;
}

pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A requested checkpoint, complete, and pinned against retention for as
/// long as the requester holds it (while it copies a savepoint).
#[derive(Debug)]
pub struct Requested {
    pub metadata: CheckpointMetadata,
    pub pin: Pin,
}

/// Where the outcome of a requested checkpoint goes.
pub type CheckpointReply = tokio::sync::oneshot::Sender<Result<Requested, String>>;

/// A requested checkpoint: its id, who waits, whether the job stops after.
type Waiting = Vec<(u64, CheckpointReply, bool)>;

/// A request from outside the loop (the HTTP API).
#[derive(Debug)]
pub enum Request {
    /// Take a checkpoint now and report it when complete.
    Checkpoint { reply: CheckpointReply },
    /// Take a checkpoint now, then finish the job.
    Stop { reply: CheckpointReply },
}

pub struct Loop<'a, P: ControlPlane> {
    pub plane: &'a P,
    pub store: &'a CheckpointStore,
    pub config: &'a JobConfig,
    pub metrics: &'a JobMetrics,
    pub max_parallelism: u32,
    pub next_id: u64,
    /// The attempt's fence; checkpoints record its incarnation and epoch.
    pub fence: Fence,
    /// Where the attempt commits completed checkpoints.
    pub ledger: Ledger,
    /// The highest checkpoint id this loop issued, kept beyond the attempt
    /// so the next one never issues it again.
    pub last_issued: &'a AtomicU64,
    /// Checkpoints the restore found damaged: retention does not count them.
    pub damaged: Vec<u64>,
}

async fn broadcast<P: ControlPlane>(plane: &P, msg: Control, sources_only: bool) {
    for (i, (_, is_source)) in plane.tasks().iter().enumerate() {
        if !sources_only || *is_source {
            plane.send(i, msg.clone()).await;
        }
    }
}

impl<P: ControlPlane + Sync> Loop<'_, P> {
    /// Runs until every subtask finished (`Ok` with the last checkpoint) or
    /// something failed. `requests` may be a channel that never yields.
    pub async fn run(
        self,
        events: &mut mpsc::Receiver<Event>,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Result<Option<CompletedCheckpoint>, JobError> {
        let tasks = self.plane.tasks();
        let sources = tasks.iter().filter(|t| t.1).count();
        let opts = CoordinatorOptions::from(&self.config.checkpoints);
        let tick_every = opts.interval.map_or(Duration::from_millis(100), |i| {
            (i / 4).clamp(Duration::from_millis(5), Duration::from_millis(100))
        });
        let mut checkpoints = PendingCheckpoints::new(
            opts,
            self.config.name.clone(),
            self.max_parallelism,
            tasks.len(),
            self.next_id,
            Instant::now(),
        )
        .with_fence(self.fence);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut exhausted, mut finished) = (0, 0);
        let mut stopping = false;
        let mut last = None;
        let mut alignment = WatermarkGroup::new(tasks.iter().filter(|t| t.1).map(|t| &t.0));
        // Requests waiting for a checkpoint: (id, reply, stop afterwards).
        let mut waiting: Waiting = Vec::new();
        let mut failure: Option<(JobError, Instant)> = None;
        // `_metadata` writes and retention run beside the loop, so acks,
        // failures and requests keep flowing while storage is slow.
        let limit = self.config.checkpoints.timeout.get();
        let mut writes = MetadataWrites::new(self.store.clone(), self.ledger.clone(), limit);
        let retained = self.config.checkpoints.retained.max(1) as usize;
        let mut retention =
            Retention::new(self.store.clone(), self.ledger.clone(), retained, self.damaged.clone(), limit);
        loop {
            writes.start_next();
            retention.start_next();
            self.metrics.checkpoints_in_progress.store(checkpoints.in_progress() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = tick.tick() => {
                    if let Some((err, since)) = failure.take() {
                        if since.elapsed() >= ECHO_GRACE {
                            return Err(err);
                        }
                        failure = Some((err, since));
                        continue;
                    }
                    let now = Instant::now();
                    for id in checkpoints.expired(now) {
                        warn!(checkpoint = id, "checkpoint {id} expired before completing");
                        broadcast(self.plane, Control::Abort(id), false).await;
                        self.checkpoint_failed(&mut checkpoints, &mut waiting, id, "expired".into())?;
                    }
                    if !stopping && checkpoints.due(now) {
                        self.trigger(&mut checkpoints, now).await;
                    }
                }
                Some((meta, written)) = OptionFuture::from(writes.current.as_mut()) => {
                    writes.current = None;
                    let id = meta.id;
                    match written {
                        Ok(()) => {}
                        Err(Unwritten::Failed(reason)) => {
                            warn!(checkpoint = id, "checkpoint {id} failed: {reason}");
                            self.checkpoint_failed(&mut checkpoints, &mut waiting, id, reason)?;
                            continue;
                        }
                        Err(Unwritten::Superseded(e)) => {
                            // Its sinks must never commit: the newer attempt
                            // restores and owns what this one wrote.
                            warn!(checkpoint = id, "checkpoint {id} is not committed: {e}");
                            reply_failed(&mut waiting, id, &e.to_string());
                            return Err(e.into());
                        }
                    }
                    checkpoints.completed(id, Instant::now());
                    last = Some(self.announce(&meta).await?);
                    retention.want(id);
                    let mut stop_now = checkpoints.is_final(id);
                    // A request whose checkpoint this one subsumed gets this one.
                    for (wid, reply, stop) in std::mem::take(&mut waiting) {
                        if wid <= id {
                            stop_now |= stop;
                            let pin = self.store.pin(id);
                            let _ = reply.send(Ok(Requested { metadata: meta.clone(), pin }));
                        } else {
                            waiting.push((wid, reply, stop));
                        }
                    }
                    if stop_now && !stopping {
                        stopping = true;
                        broadcast(self.plane, Control::Stop, false).await;
                    }
                }
                Some(()) = OptionFuture::from(retention.current.as_mut()) => retention.current = None,
                Some(request) = requests.recv() => {
                    let (reply, stop) = match request {
                        Request::Checkpoint { reply } => (reply, false),
                        Request::Stop { reply } => (reply, true),
                    };
                    if stopping {
                        let _ = reply.send(Err("the job is finishing".into()));
                        continue;
                    }
                    let barrier = self.trigger(&mut checkpoints, Instant::now()).await;
                    waiting.push((barrier.id, reply, stop));
                }
                Some(event) = events.recv() => match event {
                    Event::Ack { checkpoint, task, files } => {
                        debug!(checkpoint, %task, "{task} acknowledged checkpoint {checkpoint}");
                        let Some(meta) = checkpoints.ack(checkpoint, task, files, Instant::now(), wall_ms()) else { continue };
                        writes.push(meta);
                    }
                    Event::Decline { checkpoint, task, reason } => {
                        warn!(checkpoint, %task, "checkpoint {checkpoint} declined by {task}: {reason}");
                        broadcast(self.plane, Control::Abort(checkpoint), false).await;
                        self.checkpoint_failed(&mut checkpoints, &mut waiting, checkpoint, reason)?;
                    }
                    Event::SourceWatermark { task, watermark } => {
                        if let Some(least) = alignment.report(task, watermark) {
                            debug!(least, "watermark alignment: the least source watermark is {least}");
                            broadcast(self.plane, Control::Align(least), true).await;
                        }
                    }
                    Event::SourceExhausted(task) => {
                        debug!(%task, "source finished");
                        exhausted += 1;
                        if exhausted == sources {
                            checkpoints.request_final();
                        }
                    }
                    Event::TaskFinished { task, error: None, .. } => {
                        debug!(%task, "subtask finished");
                        finished += 1;
                        if finished == tasks.len() {
                            retention.finish().await;
                            return Ok(last);
                        }
                    }
                    Event::TaskFinished { task, error: Some(cause) } | Event::Failed { task, failure: cause } => {
                        // A failing subtask makes its neighbours fail with
                        // closed channels, on this worker and on others, and
                        // those echoes may arrive first: wait a moment for
                        // the cause, and decide by it, not by the echo.
                        let echo = matches!(cause.kind, FailureKind::Disconnected | FailureKind::ChannelBroken);
                        let err = JobError::TaskFailed { task: task.to_string(), failure: cause };
                        if !echo {
                            return Err(err);
                        }
                        if failure.is_none() {
                            failure = Some((err, Instant::now()));
                        }
                    }
                },
            }
        }
    }

    async fn trigger(&self, checkpoints: &mut PendingCheckpoints, now: Instant) -> Barrier {
        let barrier = checkpoints.trigger(now, wall_ms());
        self.last_issued.fetch_max(barrier.id, Ordering::Relaxed);
        debug!(checkpoint = barrier.id, "triggering checkpoint {}", barrier.id);
        broadcast(self.plane, Control::Trigger(barrier), true).await;
        barrier
    }

    /// Checkpoint `id` failed (expired, declined, `_metadata` not written):
    /// counted, its requesters told; an error once failures are too many.
    fn checkpoint_failed(
        &self,
        checkpoints: &mut PendingCheckpoints,
        waiting: &mut Waiting,
        id: u64,
        reason: String,
    ) -> Result<(), JobError> {
        self.metrics.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
        reply_failed(waiting, id, &reason);
        match checkpoints.fail(id) {
            FailureVerdict::FailJob { consecutive } => {
                Err(JobError::TooManyCheckpointFailures { id, reason, consecutive })
            }
            FailureVerdict::Tolerated => Ok(()),
        }
    }

    /// Tells everyone that checkpoint `meta` is complete, its `_metadata`
    /// being written: metrics, the log, and the subtasks, whose sinks commit.
    async fn announce(&self, meta: &CheckpointMetadata) -> Result<CompletedCheckpoint, JobError> {
        let id = meta.id;
        self.config
            .faults
            .check(FaultPoint::AfterMetadata)
            .map_err(|e| JobError::TaskFailed { task: "coordinator".into(), failure: (&e).into() })?;
        let completed = CompletedCheckpoint {
            id,
            path: self.store.path_of(id),
            completed_at_ms: meta.completed_at_ms,
            duration_ms: meta.duration_ms,
            size_bytes: meta.size_bytes(),
        };
        info!(
            checkpoint = id,
            duration_ms = meta.duration_ms,
            size_bytes = completed.size_bytes,
            "completed checkpoint {id}"
        );
        self.metrics.checkpoints_completed.fetch_add(1, Ordering::Relaxed);
        self.metrics.set_last_checkpoint(completed.clone());
        broadcast(self.plane, Control::Complete(id), false).await;
        Ok(completed)
    }
}

/// Why a completion did not happen.
enum Unwritten {
    /// The checkpoint failed (counted against `tolerableFailures`).
    Failed(String),
    /// A newer attempt took over the ledger: this one commits nothing more.
    Superseded(CheckpointError),
}

type Written = BoxFuture<'static, (CheckpointMetadata, Result<(), Unwritten>)>;

/// Completions, one at a time in checkpoint order, each bounded by the
/// checkpoint timeout: `_metadata` written, then committed in the ledger.
struct MetadataWrites {
    store: CheckpointStore,
    ledger: Ledger,
    limit: Duration,
    queue: VecDeque<CheckpointMetadata>,
    current: Option<Written>,
}

impl MetadataWrites {
    fn new(store: CheckpointStore, ledger: Ledger, limit: Duration) -> Self {
        MetadataWrites { store, ledger, limit, queue: VecDeque::new(), current: None }
    }

    fn push(&mut self, meta: CheckpointMetadata) {
        self.queue.push_back(meta);
    }

    fn start_next(&mut self) {
        if self.current.is_some() {
            return;
        }
        let Some(meta) = self.queue.pop_front() else { return };
        let (store, ledger, limit) = (self.store.clone(), self.ledger.clone(), self.limit);
        self.current = Some(Box::pin(async move {
            let complete = async {
                store
                    .write_metadata(&meta)
                    .await
                    .map_err(|e| Unwritten::Failed(format!("cannot write its _metadata: {e}")))?;
                ledger.commit(meta.id).await.map_err(|e| match e {
                    e @ CheckpointError::Superseded { .. } => Unwritten::Superseded(e),
                    e => Unwritten::Failed(format!("cannot commit it in the ledger: {e}")),
                })
            };
            let written = match tokio::time::timeout(limit, complete).await {
                Ok(done) => done,
                // It may still land; that is safe: the checkpoint is whole,
                // and its sink transactions stay pending until a later one
                // completes (or a restore from it commits them).
                Err(_) => Err(Unwritten::Failed(format!(
                    "its _metadata was not written and committed within the checkpoint timeout ({limit:?})"
                ))),
            };
            (meta, written)
        }));
    }
}

/// Retention after completions: at most one pass at a time, for the newest
/// completed checkpoint; a failure is a warning (the next pass retries).
struct Retention {
    store: CheckpointStore,
    ledger: Ledger,
    retained: usize,
    damaged: Vec<u64>,
    limit: Duration,
    wanted: Option<u64>,
    current: Option<BoxFuture<'static, ()>>,
}

impl Retention {
    fn new(store: CheckpointStore, ledger: Ledger, retained: usize, damaged: Vec<u64>, limit: Duration) -> Self {
        Retention { store, ledger, retained, damaged, limit, wanted: None, current: None }
    }

    fn want(&mut self, latest: u64) {
        self.wanted = Some(latest);
    }

    fn start_next(&mut self) {
        if self.current.is_some() {
            return;
        }
        let Some(latest) = self.wanted.take() else { return };
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let (retained, damaged, limit) = (self.retained, self.damaged.clone(), self.limit);
        self.current = Some(Box::pin(async move {
            let pass = async {
                let committed = ledger.committed().await;
                let done = store.apply_retention(latest, retained, &damaged, &committed).await?;
                match done.oldest_kept {
                    Some(oldest) => ledger.trim(oldest).await,
                    None => Ok(()),
                }
            };
            match tokio::time::timeout(limit, pass).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(checkpoint = latest, "retention after checkpoint {latest} failed: {e}"),
                Err(_) => warn!(checkpoint = latest, "retention after checkpoint {latest} took longer than {limit:?}"),
            }
        }));
    }

    /// Lets the pass in flight, and one for the newest checkpoint, end.
    async fn finish(&mut self) {
        if let Some(pass) = self.current.take() {
            pass.await;
        }
        self.start_next();
        if let Some(pass) = self.current.take() {
            pass.await;
        }
    }
}

fn reply_failed(waiting: &mut Waiting, id: u64, reason: &str) {
    for (wid, reply, stop) in std::mem::take(waiting) {
        if wid == id {
            let _ = reply.send(Err(format!("checkpoint {id} failed: {reason}")));
        } else {
            waiting.push((wid, reply, stop));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::manifest::{CheckpointOptions, HumanDuration};
    use crate::task::error::FailureKind;

    /// One source subtask; what the loop sends it is recorded.
    struct Recorded {
        tasks: Vec<(TaskId, bool)>,
        sent: mpsc::UnboundedSender<Control>,
    }

    impl ControlPlane for Recorded {
        fn tasks(&self) -> &[(TaskId, bool)] {
            &self.tasks
        }
        async fn send(&self, _: usize, msg: Control) {
            let _ = self.sent.send(msg);
        }
    }

    /// A loop over one source subtask, with `_metadata` writes that take
    /// `delay` and a checkpoint timeout of 10 s.
    struct Harness {
        _dir: tempfile::TempDir,
        store: CheckpointStore,
        config: JobConfig,
        plane: Recorded,
        metrics: JobMetrics,
        issued: AtomicU64,
        task: TaskId,
    }

    fn harness(delay: Duration, tolerable_failures: u32) -> (Harness, mpsc::UnboundedReceiver<Control>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().display());
        let checkpoints = CheckpointOptions {
            interval: HumanDuration(Duration::from_secs(3600)),
            timeout: HumanDuration(Duration::from_secs(10)),
            tolerable_failures,
            storage: storage.clone(),
            ..CheckpointOptions::default()
        };
        let config = JobConfig::new("job", "default", checkpoints);
        let mut store = CheckpointStore::open(&storage, "default", "job").unwrap();
        store.metadata_delay = Some(delay);
        let task = TaskId { stage: 0, name: Arc::from("source"), subtask: 0, parallelism: 1 };
        let (sent, controls) = mpsc::unbounded_channel();
        let plane = Recorded { tasks: vec![(task.clone(), true)], sent };
        let h = Harness {
            _dir: dir,
            store,
            config,
            plane,
            metrics: JobMetrics::default(),
            issued: AtomicU64::new(0),
            task,
        };
        (h, controls)
    }

    impl Harness {
        fn run_loop(&self) -> Loop<'_, Recorded> {
            Loop {
                plane: &self.plane,
                store: &self.store,
                config: &self.config,
                metrics: &self.metrics,
                max_parallelism: 128,
                next_id: 1,
                fence: Fence { incarnation: 1, epoch: 1 },
                ledger: Ledger::unfenced(&self.store),
                last_issued: &self.issued,
                damaged: Vec::new(),
            }
        }
    }

    async fn next_trigger(controls: &mut mpsc::UnboundedReceiver<Control>) -> u64 {
        loop {
            if let Some(Control::Trigger(b)) = controls.recv().await {
                return b.id;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_failure_ends_the_loop_while_a_metadata_write_hangs() {
        let (h, mut controls) = harness(Duration::from_secs(3600), 0);
        let (events_tx, mut events) = mpsc::channel(16);
        let (requests_tx, mut requests) = mpsc::channel(4);
        let started = Instant::now();
        let driver = async {
            let (reply, _answer) = tokio::sync::oneshot::channel();
            requests_tx.send(Request::Checkpoint { reply }).await.unwrap();
            let id = next_trigger(&mut controls).await;
            events_tx.send(Event::Ack { checkpoint: id, task: h.task.clone(), files: Vec::new() }).await.unwrap();
            tokio::task::yield_now().await;
            let failure = crate::task::error::TaskFailure::new(FailureKind::BadRecord, "record 7 is not JSON");
            events_tx.send(Event::Failed { task: h.task.clone(), failure }).await.unwrap();
        };
        let (result, ()) = tokio::join!(h.run_loop().run(&mut events, &mut requests), driver);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("record 7"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1), "the failure did not wait for storage");
    }

    #[tokio::test(start_paused = true)]
    async fn a_metadata_write_past_the_timeout_fails_that_checkpoint_and_the_loop_goes_on() {
        let (h, mut controls) = harness(Duration::from_secs(30), 1);
        let (events_tx, mut events) = mpsc::channel(16);
        let (requests_tx, mut requests) = mpsc::channel(4);
        let driver = async {
            let (reply, answer) = tokio::sync::oneshot::channel();
            requests_tx.send(Request::Checkpoint { reply }).await.unwrap();
            let id = next_trigger(&mut controls).await;
            events_tx.send(Event::Ack { checkpoint: id, task: h.task.clone(), files: Vec::new() }).await.unwrap();
            let refused = answer.await.unwrap().unwrap_err();
            assert!(refused.contains("within the checkpoint timeout"), "{refused}");
            assert_eq!(h.metrics.checkpoints_failed.load(Ordering::Relaxed), 1);
            events_tx.send(Event::TaskFinished { task: h.task.clone(), error: None }).await.unwrap();
        };
        let (result, ()) = tokio::join!(h.run_loop().run(&mut events, &mut requests), driver);
        assert_eq!(result.unwrap().map(|c| c.id), None, "no checkpoint completed");
    }

    #[tokio::test]
    async fn a_savepoint_request_whose_checkpoint_is_subsumed_gets_the_subsuming_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().display());
        let checkpoints = CheckpointOptions {
            interval: HumanDuration(Duration::from_secs(3600)),
            max_concurrent: 2,
            storage: storage.clone(),
            ..CheckpointOptions::default()
        };
        let config = JobConfig::new("job", "default", checkpoints);
        let store = CheckpointStore::open(&storage, "default", "job").unwrap();
        let task = TaskId { stage: 0, name: Arc::from("source"), subtask: 0, parallelism: 1 };
        let (sent, mut controls) = mpsc::unbounded_channel();
        let plane = Recorded { tasks: vec![(task.clone(), true)], sent };
        let metrics = JobMetrics::default();
        let issued = AtomicU64::new(0);
        let run = Loop {
            plane: &plane,
            store: &store,
            config: &config,
            metrics: &metrics,
            max_parallelism: 128,
            next_id: 1,
            fence: Fence { incarnation: 1, epoch: 1 },
            ledger: Ledger::unfenced(&store),
            last_issued: &issued,
            damaged: Vec::new(),
        };
        let (events_tx, mut events) = mpsc::channel(16);
        let (requests_tx, mut requests) = mpsc::channel(4);
        let driver = async {
            let (first, first_done) = tokio::sync::oneshot::channel();
            requests_tx.send(Request::Checkpoint { reply: first }).await.unwrap();
            let (second, second_done) = tokio::sync::oneshot::channel();
            requests_tx.send(Request::Checkpoint { reply: second }).await.unwrap();
            let mut triggered = Vec::new();
            while triggered.len() < 2 {
                if let Some(Control::Trigger(b)) = controls.recv().await {
                    triggered.push(b.id);
                }
            }
            assert_eq!(triggered, vec![1, 2]);
            // Checkpoint 2 completes first and subsumes 1.
            events_tx.send(Event::Ack { checkpoint: 2, task: task.clone(), files: Vec::new() }).await.unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(10), first_done).await;
            let first = answer.expect("the subsumed request was answered").unwrap().unwrap();
            let second = second_done.await.unwrap().unwrap();
            assert_eq!((first.metadata.id, second.metadata.id), (2, 2));
            assert_eq!(first.pin.id(), 2, "the subsuming checkpoint is pinned for the copy");
            events_tx.send(Event::TaskFinished { task: task.clone(), error: None }).await.unwrap();
        };
        let (result, ()) = tokio::join!(run.run(&mut events, &mut requests), driver);
        assert_eq!(result.unwrap().map(|c| c.id), Some(2));
    }
}
