//! The checkpoint loop: trigger, collect acks, write `_metadata`, notify,
//! retain; end when every subtask finished, fail when one failed. It talks
//! to subtasks through a [`ControlPlane`], so the same loop drives threads
//! in this process and subtasks on remote workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::fence::Fence;
use super::{JobConfig, JobError};
use crate::checkpoint::coordinator::FailureVerdict;
use crate::checkpoint::Pin;
use crate::checkpoint::{CheckpointMetadata, CheckpointStore, CoordinatorOptions, PendingCheckpoints};
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
    /// The attempt's fence; checkpoints record its incarnation.
    pub fence: Fence,
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
        .with_incarnation(self.fence.incarnation);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut exhausted, mut finished) = (0, 0);
        let mut stopping = false;
        let mut last = None;
        // Requests waiting for a checkpoint: (id, reply, stop afterwards).
        let mut waiting: Waiting = Vec::new();
        let mut failure: Option<(JobError, Instant)> = None;
        loop {
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
                        self.metrics.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
                        broadcast(self.plane, Control::Abort(id), false).await;
                        reply_failed(&mut waiting, id, "expired");
                        if let FailureVerdict::FailJob { consecutive } = checkpoints.fail(id) {
                            return Err(JobError::TooManyCheckpointFailures { id, reason: "expired".into(), consecutive });
                        }
                    }
                    if !stopping && checkpoints.due(now) {
                        self.trigger(&mut checkpoints, now).await;
                    }
                }
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
                        let Some(meta) = checkpoints.ack(checkpoint, task, files, Instant::now(), wall_ms()) else { continue };
                        let completed = self.complete(&meta).await?;
                        last = Some(completed);
                        let mut stop_now = checkpoints.is_final(meta.id);
                        // A request whose checkpoint this one subsumed gets this one.
                        for (id, reply, stop) in std::mem::take(&mut waiting) {
                            if id <= meta.id {
                                stop_now |= stop;
                                let pin = self.store.pin(meta.id);
                                let _ = reply.send(Ok(Requested { metadata: meta.clone(), pin }));
                            } else {
                                waiting.push((id, reply, stop));
                            }
                        }
                        if stop_now && !stopping {
                            stopping = true;
                            broadcast(self.plane, Control::Stop, false).await;
                        }
                    }
                    Event::Decline { checkpoint, task, reason } => {
                        warn!(checkpoint, %task, "checkpoint {checkpoint} declined by {task}: {reason}");
                        self.metrics.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
                        broadcast(self.plane, Control::Abort(checkpoint), false).await;
                        reply_failed(&mut waiting, checkpoint, &reason);
                        if let FailureVerdict::FailJob { consecutive } = checkpoints.fail(checkpoint) {
                            return Err(JobError::TooManyCheckpointFailures { id: checkpoint, reason, consecutive });
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

    /// Makes a checkpoint complete: `_metadata`, notification, retention.
    async fn complete(&self, meta: &CheckpointMetadata) -> Result<CompletedCheckpoint, JobError> {
        let id = meta.id;
        self.store.write_metadata(meta).await.map_err(|source| JobError::Complete {
            action: "complete",
            id,
            source,
        })?;
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
        let retained = self.config.checkpoints.retained.max(1) as usize;
        self.store.apply_retention(id, retained, &self.damaged).await.map_err(|source| JobError::Complete {
            action: "apply retention after",
            id,
            source,
        })?;
        Ok(completed)
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
