//! Fault injection: named points where a test can make the job crash.
//!
//! A plan says "crash at the n-th time point P is reached". Production jobs
//! carry an empty plan, which costs one branch per check.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

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

#[derive(Debug, Clone, Default)]
pub struct Faults(Option<Arc<Plan>>, Option<std::time::Duration>);

impl Faults {
    pub fn none() -> Faults {
        Faults(None, None)
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
        Faults(plan, delay)
    }

    /// Extra time every snapshot write takes (tests only).
    pub fn snapshot_delay(&self) -> Option<std::time::Duration> {
        self.1
    }

    /// Crash the `nth` (1-based) time `point` is reached.
    pub fn crash_at(point: FaultPoint, nth: u64) -> Faults {
        Faults(Some(Arc::new(Plan { point, remaining: AtomicI64::new(nth as i64) })), None)
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
