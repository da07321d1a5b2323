//! Fault injection: named points where a test can make the job crash.
//!
//! A plan says "crash at the n-th time point P is reached". Production jobs
//! carry an empty plan, which costs one branch per check.
//!
//! Stop points are the other kind: `WEIR_STOP_AT=Point:n` makes the whole
//! process stop itself (`SIGSTOP`) the n-th time it passes the point, so a
//! fault harness outside can `kill -9` it there, or resume it, at an instant
//! a timer could hardly hit (between writing `_metadata` and renaming it,
//! between a sink's pre-commit and its commit).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::task::TaskError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A source subtask, after emitting a batch.
    SourceBatch,
    /// A keyed operator, halfway through a batch.
    MidBatch,
    /// A subtask wrote its state files but has not acknowledged.
    BeforeAck,
    /// The coordinator wrote `_metadata` but has not notified completion.
    AfterMetadata,
    /// A sink committed some of its pending transactions, not all.
    DuringCommit,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::SourceBatch,
        FaultPoint::MidBatch,
        FaultPoint::BeforeAck,
        FaultPoint::AfterMetadata,
        FaultPoint::DuringCommit,
    ];
}

#[derive(Debug)]
struct Plan {
    point: FaultPoint,
    remaining: AtomicI64,
}

/// A crash plan, a delay for every snapshot write, and a pause after every
/// source batch (tests only).
#[derive(Debug, Clone, Default)]
pub struct Faults(Option<Arc<Plan>>, Option<std::time::Duration>, Option<std::time::Duration>);

impl Faults {
    pub fn none() -> Faults {
        Faults(None, None, None)
    }

    /// Reads a plan for a whole process from the environment, so tests can
    /// inject faults into `weir` processes: `WEIR_INJECT_FAULT=MidBatch:3`
    /// crashes the 3rd time the point is reached, and
    /// `WEIR_INJECT_SNAPSHOT_DELAY_MS=500` makes every snapshot write slow.
    pub fn from_env() -> Faults {
        let plan = std::env::var("WEIR_INJECT_FAULT").ok().and_then(|v| {
            let (name, nth) = v.split_once(':')?;
            let point = FaultPoint::ALL.into_iter().find(|p| format!("{p:?}") == name)?;
            Some(Arc::new(Plan { point, remaining: AtomicI64::new(nth.parse().ok()?) }))
        });
        let delay = std::env::var("WEIR_INJECT_SNAPSHOT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        Faults(plan, delay, None)
    }

    /// Extra time every snapshot write takes (tests only).
    pub fn snapshot_delay(&self) -> Option<std::time::Duration> {
        self.1
    }

    /// Crash the `nth` (1-based) time `point` is reached.
    pub fn crash_at(point: FaultPoint, nth: u64) -> Faults {
        Faults(Some(Arc::new(Plan { point, remaining: AtomicI64::new(nth as i64) })), None, None)
    }

    /// Makes every source subtask pause this long after each batch, so that
    /// a small input spans many checkpoints however fast the machine is,
    /// and a crash drawn at the n-th checkpoint is met before the input
    /// ends (tests only).
    pub fn pacing_sources(mut self, pause: std::time::Duration) -> Faults {
        self.2 = Some(pause);
        self
    }

    /// The pause after each source batch, if any.
    pub fn source_pause(&self) -> Option<std::time::Duration> {
        self.2
    }

    #[inline]
    pub fn check(&self, point: FaultPoint) -> Result<(), TaskError> {
        match &self.0 {
            Some(plan) if plan.point == point => {
                if plan.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                    Err(TaskError::Injected(point))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether the planned crash happened.
    pub fn fired(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.remaining.load(Ordering::SeqCst) <= 0)
    }
}

/// Where a process can stop itself for a fault harness (`WEIR_STOP_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPoint {
    /// `_metadata` is written under its temporary name, not yet renamed.
    MetadataWritten,
    /// `_metadata` is in place; the checkpoint is not committed in the ledger.
    MetadataRenamed,
    /// The checkpoint is committed in the ledger; nobody has been told.
    LedgerCommitted,
    /// A subtask wrote its state files and has not acknowledged them.
    StateWritten,
    /// A sink pre-committed its transaction for a checkpoint in flight.
    PreCommitted,
    /// A checkpoint completed; its sink transaction is not committed yet.
    BeforeCommit,
    /// A sink committed one transaction; later ones may be pending.
    Committed,
    /// An object-storage sink made one part of a transaction visible and
    /// not yet the others.
    PartCommitted,
    /// A Kafka sink subtask other than 0 sent its transaction's records and
    /// has not committed them. The process stops a second later, so that
    /// the other subtasks' commits of the same checkpoint land first.
    KafkaTxnOpen,
}

impl StopPoint {
    /// The points every job with a two-phase-commit sink passes.
    pub const COMMON: [StopPoint; 7] = [
        StopPoint::MetadataWritten,
        StopPoint::MetadataRenamed,
        StopPoint::LedgerCommitted,
        StopPoint::StateWritten,
        StopPoint::PreCommitted,
        StopPoint::BeforeCommit,
        StopPoint::Committed,
    ];

    /// [`StopPoint::COMMON`] and the sinks' own points.
    pub const ALL: [StopPoint; 9] = {
        let mut all = [StopPoint::PartCommitted; 9];
        all[8] = StopPoint::KafkaTxnOpen;
        let mut i = 0;
        while i < Self::COMMON.len() {
            all[i] = Self::COMMON[i];
            i += 1;
        }
        all
    };

    /// Parses `Point:n` (n >= 1).
    pub fn parse_plan(text: &str) -> Option<(StopPoint, u64)> {
        let (name, nth) = text.split_once(':')?;
        let point = StopPoint::ALL.into_iter().find(|p| format!("{p:?}") == name)?;
        let nth: u64 = nth.parse().ok()?;
        (nth >= 1).then_some((point, nth))
    }
}

struct StopPlan {
    point: StopPoint,
    remaining: AtomicI64,
}

static STOP_PLAN: OnceLock<Option<StopPlan>> = OnceLock::new();

/// Stops the whole process here if `WEIR_STOP_AT` says so (tests only);
/// without the variable this is one load and one branch.
#[inline]
pub fn stop_point(point: StopPoint) {
    stop_point_after(point, std::time::Duration::ZERO);
}

/// [`stop_point`], the process stopping `delay` after the point is passed;
/// until then only the calling thread waits.
#[inline]
pub fn stop_point_after(point: StopPoint, delay: std::time::Duration) {
    let plan = STOP_PLAN.get_or_init(|| {
        let text = std::env::var("WEIR_STOP_AT").ok()?;
        let parsed = StopPoint::parse_plan(&text);
        if parsed.is_none() {
            tracing::warn!(
                "ignoring WEIR_STOP_AT={text}: expected Point:n with n >= 1, Point one of {:?}",
                StopPoint::ALL
            );
        }
        let (point, nth) = parsed?;
        Some(StopPlan { point, remaining: AtomicI64::new(nth as i64) })
    });
    if let Some(plan) = plan {
        if plan.point == point && plan.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            tracing::warn!("stopping the process at {point:?} (WEIR_STOP_AT)");
            std::thread::sleep(delay);
            // SIGSTOP stops every thread of the process, whichever raises it.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StopPoint;

    #[test]
    fn stop_plans_name_a_point_and_a_positive_count() {
        assert_eq!(StopPoint::parse_plan("BeforeCommit:2"), Some((StopPoint::BeforeCommit, 2)));
        assert_eq!(StopPoint::parse_plan("BeforeCommit:0"), None);
        assert_eq!(StopPoint::parse_plan("Elsewhere:1"), None);
        assert_eq!(StopPoint::parse_plan("MetadataWritten"), None);
    }
}
