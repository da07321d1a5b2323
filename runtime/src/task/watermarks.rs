//! The event time of a task fed by several inputs: the least watermark of
//! the inputs that are neither idle nor ended, never going back.
//!
//! An ended input holds nothing back (its last watermark was the end of
//! time). An idle input is left out until it sends a watermark again, so one
//! empty Kafka partition does not stall every window; when all inputs are
//! idle the task says so downstream. An input returning from idleness
//! behind the task's watermark does not move it back: its records may be
//! late, as in Flink.

use super::message::Watermark;

#[derive(Debug, Clone, Copy, Default)]
struct Input {
    at: Option<i64>,
    idle: bool,
    ended: bool,
}

#[derive(Debug)]
pub struct WatermarkTracker {
    inputs: Vec<Input>,
    emitted: Option<i64>,
    idle: bool,
}

impl WatermarkTracker {
    pub fn new(inputs: usize) -> WatermarkTracker {
        WatermarkTracker { inputs: vec![Input::default(); inputs], emitted: None, idle: false }
    }

    /// Input `i` sent `watermark`; returns what to pass downstream, if anything changed.
    pub fn on_watermark(&mut self, i: usize, watermark: Watermark) -> Option<Watermark> {
        let input = self.inputs.get_mut(i)?;
        match watermark {
            Watermark::At(t) => {
                input.at = Some(input.at.map_or(t, |a| a.max(t)));
                input.idle = false;
            }
            Watermark::Idle => input.idle = true,
        }
        self.combine()
    }

    /// Input `i` ended.
    pub fn on_end(&mut self, i: usize) -> Option<Watermark> {
        self.inputs.get_mut(i)?.ended = true;
        self.combine()
    }

    /// The watermark passed downstream last, if any.
    pub fn current(&self) -> Option<i64> {
        self.emitted
    }

    fn combine(&mut self) -> Option<Watermark> {
        let live = self.inputs.iter().filter(|i| !i.ended && !i.idle);
        let mut least = Some(i64::MAX);
        let mut any_live = false;
        for input in live {
            any_live = true;
            least = match (least, input.at) {
                (Some(l), Some(a)) => Some(l.min(a)),
                _ => None,
            };
        }
        if !any_live && self.inputs.iter().any(|i| !i.ended) {
            if self.idle {
                return None;
            }
            self.idle = true;
            return Some(Watermark::Idle);
        }
        let least = least?;
        let next = self.emitted.map_or(least, |e| e.max(least));
        if self.idle || self.emitted.is_none_or(|e| next > e) {
            self.idle = false;
            self.emitted = Some(next);
            return Some(Watermark::At(next));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Watermark::{At, Idle};

    #[test]
    fn the_watermark_is_the_least_of_the_inputs_and_waits_for_every_input() {
        let mut t = WatermarkTracker::new(2);
        assert_eq!(t.on_watermark(0, At(10)), None, "input 1 has said nothing yet");
        assert_eq!(t.on_watermark(1, At(5)), Some(At(5)));
        assert_eq!(t.on_watermark(1, At(20)), Some(At(10)));
        assert_eq!(t.on_watermark(1, At(30)), None, "input 0 holds it at 10");
        assert_eq!(t.on_watermark(0, At(8)), None, "an input's watermark never goes back");
        assert_eq!(t.on_watermark(0, At(40)), Some(At(30)));
    }

    #[test]
    fn an_ended_input_holds_nothing_back_and_all_ended_is_the_end_of_time() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, At(10));
        assert_eq!(t.on_end(1), Some(At(10)));
        assert_eq!(t.on_watermark(0, Watermark::END), Some(Watermark::END));
        assert_eq!(t.on_end(0), None);
    }

    #[test]
    fn idle_inputs_are_skipped_and_all_idle_is_passed_on_once() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, At(10));
        assert_eq!(t.on_watermark(1, Idle), Some(At(10)), "the idle input no longer holds it back");
        assert_eq!(t.on_watermark(0, Idle), Some(Idle));
        assert_eq!(t.on_watermark(1, Idle), None);
        assert_eq!(t.on_watermark(1, At(3)), Some(At(10)), "active again, and the watermark does not go back");
        assert_eq!(t.current(), Some(10));
        assert_eq!(t.on_watermark(1, At(12)), Some(At(12)), "input 0 is still idle");
    }
}
