//! The checkpoint coordinator's decisions, as a state machine over plain
//! values: when to trigger, when a checkpoint is complete, when it expired,
//! when failures are too many. The job loop performs the effects.
//!
//! A checkpoint whose every subtask acknowledged is *finalizing* until the
//! loop reports its `_metadata` written ([`PendingCheckpoints::completed`])
//! or not ([`PendingCheckpoints::fail`]); it still counts against
//! `maxConcurrent`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::metadata::CheckpointMetadata;
use crate::job::fence::Fence;
use crate::manifest::CheckpointOptions;
use crate::task::message::{TaskId, WrittenState};
use crate::task::Barrier;

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// `None`: no periodic checkpoints.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub min_pause: Duration,
    pub max_concurrent: usize,
    pub tolerable_failures: u32,
}

impl From<&CheckpointOptions> for CoordinatorOptions {
    fn from(o: &CheckpointOptions) -> Self {
        CoordinatorOptions {
            interval: Some(o.interval.get()).filter(|d| !d.is_zero()),
            timeout: o.timeout.get(),
            min_pause: o.min_pause.get(),
            max_concurrent: o.max_concurrent.max(1) as usize,
            tolerable_failures: o.tolerable_failures,
        }
    }
}

#[derive(Debug)]
struct Pending {
    started: Instant,
    acked: HashSet<TaskId>,
    metadata: CheckpointMetadata,
}

/// What a failed checkpoint means for the job.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Keep running; the next checkpoint may succeed.
    Tolerated,
    /// More consecutive failures than `tolerableFailures`: fail the job.
    FailJob { consecutive: u32 },
}

#[derive(Debug)]
pub struct PendingCheckpoints {
    opts: CoordinatorOptions,
    job: String,
    fence: Fence,
    max_parallelism: u32,
    tasks: usize,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// Acknowledged by every subtask, `_metadata` being written.
    finalizing: BTreeSet<u64>,
    last_trigger: Option<Instant>,
    last_completion: Option<Instant>,
    consecutive_failures: u32,
    /// Set when all sources are exhausted: the job needs one last checkpoint.
    final_wanted: bool,
    final_id: Option<u64>,
}

impl PendingCheckpoints {
    /// `next_id` must be above every id ever used in the job's storage.
    pub fn new(
        opts: CoordinatorOptions,
        job: String,
        max_parallelism: u32,
        tasks: usize,
        next_id: u64,
        now: Instant,
    ) -> Self {
        PendingCheckpoints {
            opts,
            job,
            fence: Fence { incarnation: 0, epoch: 0 },
            max_parallelism,
            tasks,
            next_id,
            pending: BTreeMap::new(),
            finalizing: BTreeSet::new(),
            last_trigger: Some(now),
            last_completion: None,
            consecutive_failures: 0,
            final_wanted: false,
            final_id: None,
        }
    }

    /// Checkpoints record the job incarnation and the attempt's epoch that wrote them.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// The id the next trigger will use.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Whether a checkpoint should be triggered now.
    pub fn due(&self, now: Instant) -> bool {
        if self.in_progress() >= self.opts.max_concurrent {
            return false;
        }
        if self.final_wanted {
            // The last checkpoint must start after every source finished.
            return self.final_id.is_none() && self.in_progress() == 0;
        }
        let Some(interval) = self.opts.interval else { return false };
        let since_trigger = self.last_trigger.is_none_or(|t| now.duration_since(t) >= interval);
        let since_completion = self.last_completion.is_none_or(|t| now.duration_since(t) >= self.opts.min_pause);
        since_trigger && since_completion
    }

    pub fn trigger(&mut self, now: Instant, wall_ms: u64) -> Barrier {
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now);
        if self.final_wanted {
            self.final_id = Some(id);
        }
        let mut metadata = CheckpointMetadata::new(id, self.job.clone(), self.max_parallelism, wall_ms, wall_ms);
        metadata.incarnation = self.fence.incarnation;
        metadata.epoch = self.fence.epoch;
        self.pending.insert(id, Pending { started: now, acked: HashSet::new(), metadata });
        Barrier { id, timestamp_ms: wall_ms }
    }

    /// Records an ack; returns the metadata to write when every subtask
    /// acknowledged (the checkpoint is finalizing from then on).
    pub fn ack(
        &mut self,
        id: u64,
        task: TaskId,
        files: Vec<WrittenState>,
        now: Instant,
        wall_ms: u64,
    ) -> Option<CheckpointMetadata> {
        let p = self.pending.get_mut(&id)?;
        if !p.acked.insert(task) {
            return None;
        }
        for f in files {
            p.metadata.add_file(&f.uid, f.parallelism, f.file);
        }
        if p.acked.len() < self.tasks {
            return None;
        }
        let mut done = self.pending.remove(&id)?;
        // Older checkpoints still pending are subsumed by this one.
        self.pending.retain(|older, _| *older > id);
        self.finalizing.insert(id);
        done.metadata.completed_at_ms = wall_ms;
        done.metadata.duration_ms = now.duration_since(done.started).as_millis() as u64;
        Some(done.metadata)
    }

    /// The `_metadata` of finalizing checkpoint `id` is written: it is complete.
    pub fn completed(&mut self, id: u64, now: Instant) {
        if self.finalizing.remove(&id) {
            self.last_completion = Some(now);
            self.consecutive_failures = 0;
        }
    }

    /// Whether `id` was the checkpoint taken after every source finished.
    pub fn is_final(&self, id: u64) -> bool {
        self.final_id == Some(id)
    }

    /// Every source is exhausted: take one more checkpoint to commit the rest.
    pub fn request_final(&mut self) {
        self.final_wanted = true;
    }

    /// Checkpoint `id` failed (declined, expired, or its `_metadata` write
    /// failed).
    pub fn fail(&mut self, id: u64) -> FailureVerdict {
        if self.pending.remove(&id).is_none() && !self.finalizing.remove(&id) {
            return FailureVerdict::Tolerated;
        }
        if self.final_id == Some(id) {
            self.final_id = None; // take the final checkpoint again
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures > self.opts.tolerable_failures {
            FailureVerdict::FailJob { consecutive: self.consecutive_failures }
        } else {
            FailureVerdict::Tolerated
        }
    }

    /// Checkpoints in progress longer than the timeout.
    pub fn expired(&self, now: Instant) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= self.opts.timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Checkpoints triggered and not yet complete or failed.
    pub fn in_progress(&self) -> usize {
        self.pending.len() + self.finalizing.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn opts() -> CoordinatorOptions {
        CoordinatorOptions {
            interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_secs(10),
            min_pause: Duration::from_millis(500),
            max_concurrent: 1,
            tolerable_failures: 1,
        }
    }

    fn task(i: u32) -> TaskId {
        TaskId { stage: 0, name: Arc::from("t"), subtask: i, parallelism: 2 }
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_after_the_interval_and_completes_when_every_task_acked() {
        let t0 = Instant::now();
        let mut c = PendingCheckpoints::new(opts(), "job".into(), 128, 2, 5, t0);
        assert!(!c.due(t0));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(c.due(now));
        let b = c.trigger(now, 1000);
        assert_eq!(b.id, 5);
        assert!(!c.due(now), "max_concurrent is 1");
        assert!(c.ack(5, task(0), vec![], now, 1001).is_none());
        assert!(c.ack(5, task(0), vec![], now, 1001).is_none(), "a duplicate ack does not count");
        tokio::time::advance(Duration::from_millis(80)).await;
        let meta = c.ack(5, task(1), vec![], Instant::now(), 1080).unwrap();
        assert_eq!(meta.id, 5);
        assert_eq!(meta.duration_ms, 80);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_min_pause_after_a_completion() {
        let t0 = Instant::now();
        let mut c = PendingCheckpoints::new(opts(), "job".into(), 128, 1, 1, t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        c.trigger(Instant::now(), 0);
        tokio::time::advance(Duration::from_millis(900)).await;
        c.ack(1, task(0), vec![], Instant::now(), 0).unwrap();
        c.completed(1, Instant::now());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!c.due(Instant::now()), "interval passed but min pause did not");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(c.due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn fails_the_job_after_more_than_tolerable_consecutive_failures() {
        let t0 = Instant::now();
        let mut c = PendingCheckpoints::new(opts(), "job".into(), 128, 1, 1, t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        c.trigger(Instant::now(), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.expired(Instant::now()), vec![1]);
        assert_eq!(c.fail(1), FailureVerdict::Tolerated);
        c.trigger(Instant::now(), 0);
        assert_eq!(c.fail(2), FailureVerdict::FailJob { consecutive: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn final_checkpoint_waits_for_the_one_in_flight_then_triggers_without_interval() {
        let t0 = Instant::now();
        let mut o = opts();
        o.interval = None;
        o.max_concurrent = 2;
        let mut c = PendingCheckpoints::new(o, "job".into(), 128, 1, 1, t0);
        assert!(!c.due(t0), "no periodic checkpoints");
        c.request_final();
        let b = c.trigger(t0, 0);
        assert!(c.is_final(b.id));
        assert!(!c.due(t0));
        c.fail(b.id);
        assert!(c.due(t0), "a failed final checkpoint is taken again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finalizing_checkpoint_counts_as_in_progress_until_its_metadata_is_written_or_fails() {
        let t0 = Instant::now();
        let mut c = PendingCheckpoints::new(opts(), "job".into(), 128, 1, 1, t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        c.trigger(Instant::now(), 0);
        c.ack(1, task(0), vec![], Instant::now(), 0).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.in_progress(), 1);
        assert!(!c.due(Instant::now()), "max_concurrent 1 holds while _metadata is written");
        assert!(c.expired(Instant::now()).is_empty(), "the write has its own timeout");
        assert_eq!(c.fail(1), FailureVerdict::Tolerated, "a failed _metadata write is a checkpoint failure");
        assert_eq!(c.in_progress(), 0);
        c.trigger(Instant::now(), 0);
        c.ack(2, task(0), vec![], Instant::now(), 0).unwrap();
        c.completed(2, Instant::now());
        assert_eq!(c.in_progress(), 0);
        c.trigger(Instant::now(), 0);
        assert_eq!(c.fail(3), FailureVerdict::Tolerated, "the completion reset the failure count");
    }
}
