//! Fencing tokens: who is allowed to write.
//!
//! A job's *incarnation* is the lineage of its checkpoints: it starts when a
//! job starts without a checkpoint of its own and is carried in every
//! `_metadata` after that, so every attempt restored from those checkpoints
//! belongs to it. An *epoch* is drawn afresh for every attempt. Both are
//! random, never counted: a counter starts over with a new coordinator
//! process, a stale worker of the old one would then hold a valid number.
//!
//! Names of everything an attempt writes or connects to (state files, sink
//! transactions, shuffle channels) carry the epoch, so a stale worker that
//! wakes up can never write over, or be taken for, the live attempt. Names
//! of committed output carry the incarnation too, so a new job (or the same
//! job after its checkpoints were deleted) never collides with an old one's
//! output, and a sink cleans up only what its own incarnation left behind.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("cannot draw a random fencing token: {0}")]
pub struct FenceError(String);

/// The incarnation of the job and the epoch of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub incarnation: u64,
    pub epoch: u64,
}

/// A non-zero random number (zero is what old formats default to).
pub fn random_token() -> Result<u64, FenceError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| FenceError(e.to_string()))?;
        let token = u64::from_le_bytes(bytes);
        if token != 0 {
            return Ok(token);
        }
    }
}

impl Fence {
    /// A new attempt of incarnation `incarnation`, or of a new incarnation.
    pub fn new_attempt(incarnation: Option<u64>) -> Result<Fence, FenceError> {
        let incarnation = match incarnation.filter(|i| *i != 0) {
            Some(i) => i,
            None => random_token()?,
        };
        Ok(Fence { incarnation, epoch: random_token()? })
    }

    /// The attempt of `epoch` (drawn already) of incarnation
    /// `incarnation`, or of a new incarnation.
    pub fn for_attempt(incarnation: Option<u64>, epoch: u64) -> Result<Fence, FenceError> {
        Ok(Fence { epoch, ..Fence::new_attempt(incarnation)? })
    }

    /// How names of committed output carry the fence: `<incarnation>-<epoch>`
    /// in fixed-width hex.
    pub fn tag(&self) -> String {
        format!("{:016x}-{:016x}", self.incarnation, self.epoch)
    }

    /// The incarnation part of [`Fence::tag`].
    pub fn incarnation_tag(&self) -> String {
        format!("{:016x}", self.incarnation)
    }

    /// The epoch as written into state file names.
    pub fn epoch_tag(&self) -> String {
        format!("{:016x}", self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_attempt_keeps_the_incarnation_and_draws_a_new_epoch() {
        let first = Fence::new_attempt(None).unwrap();
        let second = Fence::new_attempt(Some(first.incarnation)).unwrap();
        assert_eq!(first.incarnation, second.incarnation);
        assert_ne!(first.epoch, second.epoch);
        let other_job = Fence::new_attempt(Some(0)).unwrap();
        assert_ne!(other_job.incarnation, first.incarnation, "0 means unknown: a new incarnation");
    }

    #[test]
    fn tags_are_fixed_width_hex() {
        let f = Fence { incarnation: 0xab, epoch: 1 };
        assert_eq!(f.tag(), "00000000000000ab-0000000000000001");
        assert_eq!(f.incarnation_tag(), "00000000000000ab");
        assert_eq!(f.epoch_tag(), "0000000000000001");
    }
}
