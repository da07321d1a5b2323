//! Barrier alignment for a subtask with several inputs.
//!
//! Exactly-once: an input that delivered barrier N is blocked (not read, so
//! its records wait in its bounded channel) until every input delivered N;
//! then the snapshot is taken. At-least-once: nothing is blocked and the
//! snapshot is taken when the last barrier N arrives, so records that
//! overtook it on other inputs may be replayed after a restore.

use super::message::Barrier;
use crate::manifest::CheckpointMode;

#[derive(Debug, PartialEq, Eq)]
pub enum Alignment {
    /// Keep reading; the checkpoint is not aligned yet.
    Pending,
    /// Every input delivered the barrier: snapshot now.
    Aligned(Barrier),
}

#[derive(Debug)]
pub struct Aligner {
    mode: CheckpointMode,
    arrived: Vec<bool>,
    ended: Vec<bool>,
    current: Option<Barrier>,
    /// Highest checkpoint id aligned, or aborted while aligning; older
    /// barriers are stale.
    floor: u64,
    /// Newer checkpoints aborted before their barriers arrived here.
    aborted: Vec<u64>,
}

impl Aligner {
    pub fn new(inputs: usize, mode: CheckpointMode) -> Aligner {
        Aligner {
            mode,
            arrived: vec![false; inputs],
            ended: vec![false; inputs],
            current: None,
            floor: 0,
            aborted: Vec::new(),
        }
    }

    /// Whether `input` must not be read now.
    pub fn is_blocked(&self, input: usize) -> bool {
        self.mode == CheckpointMode::ExactlyOnce && self.arrived[input]
    }

    pub fn on_barrier(&mut self, input: usize, barrier: Barrier) -> Alignment {
        if barrier.id <= self.floor || self.aborted.contains(&barrier.id) {
            return Alignment::Pending;
        }
        match self.current {
            Some(cur) if barrier.id < cur.id => return Alignment::Pending, // late barrier of an abandoned checkpoint
            Some(cur) if barrier.id > cur.id => self.reset(), // a newer checkpoint subsumes the unfinished one
            _ => {}
        }
        self.current = Some(barrier);
        self.arrived[input] = true;
        self.check()
    }

    /// An input ended: it will deliver no more barriers.
    pub fn on_end(&mut self, input: usize) -> Alignment {
        self.ended[input] = true;
        if self.current.is_some() {
            self.check()
        } else {
            Alignment::Pending
        }
    }

    /// The coordinator aborted checkpoint `id`: unblock if aligning for
    /// it, ignore its barriers from now on, and leave the alignment of any
    /// other checkpoint as it is.
    pub fn abort(&mut self, id: u64) {
        match self.current {
            Some(cur) if cur.id == id => {
                self.reset();
                self.floor = self.floor.max(id);
            }
            _ if id > self.floor => self.aborted.push(id),
            _ => {}
        }
        let floor = self.floor;
        self.aborted.retain(|a| *a > floor);
    }

    pub fn all_ended(&self) -> bool {
        self.ended.iter().all(|e| *e)
    }

    fn check(&mut self) -> Alignment {
        let done = self.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e);
        match (done, self.current) {
            (true, Some(b)) => {
                self.reset();
                self.floor = b.id;
                self.aborted.retain(|a| *a > b.id);
                Alignment::Aligned(b)
            }
            _ => Alignment::Pending,
        }
    }

    fn reset(&mut self) {
        self.current = None;
        self.arrived.iter_mut().for_each(|a| *a = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: u64) -> Barrier {
        Barrier { id, timestamp_ms: 0 }
    }

    #[test]
    fn exactly_once_blocks_inputs_that_delivered_the_barrier_until_all_did() {
        let mut a = Aligner::new(3, CheckpointMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(1)), Alignment::Pending);
        assert!(a.is_blocked(0));
        assert!(!a.is_blocked(1));
        assert_eq!(a.on_barrier(2, b(1)), Alignment::Pending);
        assert_eq!(a.on_barrier(1, b(1)), Alignment::Aligned(b(1)));
        assert!((0..3).all(|i| !a.is_blocked(i)));
    }

    #[test]
    fn at_least_once_never_blocks_but_snapshots_at_the_last_barrier() {
        let mut a = Aligner::new(2, CheckpointMode::AtLeastOnce);
        assert_eq!(a.on_barrier(0, b(4)), Alignment::Pending);
        assert!(!a.is_blocked(0));
        assert_eq!(a.on_barrier(1, b(4)), Alignment::Aligned(b(4)));
    }

    #[test]
    fn a_single_input_aligns_at_once() {
        let mut a = Aligner::new(1, CheckpointMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(7)), Alignment::Aligned(b(7)));
    }

    #[test]
    fn an_ended_input_counts_as_having_delivered_the_barrier() {
        let mut a = Aligner::new(2, CheckpointMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(1)), Alignment::Pending);
        assert_eq!(a.on_end(1), Alignment::Aligned(b(1)));
        assert_eq!(a.on_barrier(0, b(2)), Alignment::Aligned(b(2)));
    }

    #[test]
    fn abort_unblocks_inputs_and_a_late_barrier_of_the_aborted_checkpoint_is_ignored() {
        let mut a = Aligner::new(2, CheckpointMode::ExactlyOnce);
        a.on_barrier(0, b(3));
        a.abort(3);
        assert!(!a.is_blocked(0));
        assert_eq!(a.on_barrier(1, b(4)), Alignment::Pending);
        assert_eq!(a.on_barrier(0, b(4)), Alignment::Aligned(b(4)));
        assert_eq!(a.on_barrier(1, b(3)), Alignment::Pending);
        assert!(!a.is_blocked(1));
    }

    #[test]
    fn aborting_a_newer_checkpoint_keeps_aligning_the_older_one() {
        // maxConcurrent 2: checkpoint 6 is declined while 5 is aligning here.
        let mut a = Aligner::new(2, CheckpointMode::ExactlyOnce);
        a.on_barrier(0, b(5));
        a.abort(6);
        assert!(a.is_blocked(0), "5 is still aligning");
        assert_eq!(a.on_barrier(1, b(5)), Alignment::Aligned(b(5)));
        assert_eq!(a.on_barrier(0, b(6)), Alignment::Pending, "barriers of the aborted 6 are ignored");
        assert!(!a.is_blocked(0));
        assert_eq!(a.on_barrier(0, b(7)), Alignment::Pending);
        assert_eq!(a.on_barrier(1, b(7)), Alignment::Aligned(b(7)));
    }

    #[test]
    fn a_newer_barrier_abandons_an_unfinished_alignment() {
        let mut a = Aligner::new(2, CheckpointMode::ExactlyOnce);
        a.on_barrier(0, b(1));
        assert_eq!(a.on_barrier(1, b(2)), Alignment::Pending);
        assert!(!a.is_blocked(0));
        assert!(a.is_blocked(1));
    }
}
