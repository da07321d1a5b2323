//! Job counters, read by the progress line and (later) the metrics endpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A completed checkpoint, as shown to users.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedCheckpoint {
    pub id: u64,
    pub path: String,
    pub completed_at_ms: u64,
    pub duration_ms: u64,
    pub size_bytes: u64,
}

/// Counters of one stage (its chained operators), over its subtasks here.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    /// Time spent waiting for downstream capacity: backpressure.
    pub backpressure_ns: AtomicU64,
}

/// A reading of [`StageCounters`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSample {
    pub stage: String,
    pub records_in: u64,
    pub records_out: u64,
    pub backpressure_ms: u64,
}

#[derive(Debug, Default)]
pub struct JobMetrics {
    pub stages: Mutex<std::collections::BTreeMap<String, std::sync::Arc<StageCounters>>>,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bad_records_skipped: AtomicU64,
    pub bad_records_dead_lettered: AtomicU64,
    /// Records that came after the watermark had closed their windows.
    pub late_records_dropped: AtomicU64,
    /// Sink operations retried after a transient error (a lost connection).
    pub sink_retries: AtomicU64,
    /// Transient source errors (brokers unreachable, a fetch timed out)
    /// that the source's client retries.
    pub source_errors: AtomicU64,
    pub checkpoints_completed: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    pub checkpoints_in_progress: AtomicU64,
    /// When a source first emitted a batch, in ms since the epoch (0: not yet).
    pub first_record_at_ms: AtomicU64,
    pub last_checkpoint: Mutex<Option<CompletedCheckpoint>>,
    /// The most recent completed checkpoints, oldest first.
    pub history: Mutex<VecDeque<CompletedCheckpoint>>,
}

/// How many completed checkpoints [`JobMetrics::history`] keeps.
pub const HISTORY_LEN: usize = 256;

impl JobMetrics {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Notes the first record of a run; later calls change nothing.
    pub fn mark_first_record(&self) {
        if self.first_record_at_ms.load(Ordering::Relaxed) == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1);
            let _ = self.first_record_at_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The counters of stage `name`, created on first use.
    pub fn stage(&self, name: &str) -> std::sync::Arc<StageCounters> {
        match self.stages.lock() {
            Ok(mut m) => m.entry(name.to_string()).or_default().clone(),
            Err(_) => std::sync::Arc::default(),
        }
    }

    pub fn stage_samples(&self) -> Vec<StageSample> {
        let Ok(m) = self.stages.lock() else { return Vec::new() };
        m.iter()
            .map(|(name, c)| StageSample {
                stage: name.clone(),
                records_in: Self::get(&c.records_in),
                records_out: Self::get(&c.records_out),
                backpressure_ms: Self::get(&c.backpressure_ns) / 1_000_000,
            })
            .collect()
    }

    pub fn last_checkpoint(&self) -> Option<CompletedCheckpoint> {
        self.last_checkpoint.lock().ok().and_then(|g| g.clone())
    }

    pub fn set_last_checkpoint(&self, c: CompletedCheckpoint) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY_LEN {
                h.pop_front();
            }
            h.push_back(c.clone());
        }
        if let Ok(mut g) = self.last_checkpoint.lock() {
            *g = Some(c);
        }
    }

    pub fn history(&self) -> Vec<CompletedCheckpoint> {
        self.history.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }
}
