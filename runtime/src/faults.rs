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
pub struct Faults(Option<Arc<Plan>>);

impl Faults {
    pub fn none() -> Faults {
        Faults(None)
    }

    /// Crash the `nth` (1-based) time `point` is reached.
    pub fn crash_at(point: FaultPoint, nth: u64) -> Faults {
        Faults(Some(Arc::new(Plan { point, remaining: AtomicI64::new(nth as i64) })))
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
