//! Watermark alignment across a job's source subtasks, as Flink's source
//! coordinator does it: each subtask reports its watermark as it changes,
//! and the least of them is announced back, so a subtask (or split) more
//! than the allowed drift ahead stops reading until the rest catch up.

use std::collections::HashMap;

use crate::task::TaskId;

/// The watermarks the source subtasks reported, and the least announced.
#[derive(Debug)]
pub struct WatermarkGroup {
    /// Per source subtask: not yet reported (it holds the group at the
    /// beginning of time), reported `None` (idle or read to the end: it
    /// holds nothing back), or its watermark.
    reported: HashMap<TaskId, Option<Option<i64>>>,
    announced: Option<i64>,
}

impl WatermarkGroup {
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a TaskId>) -> WatermarkGroup {
        WatermarkGroup { reported: sources.into_iter().map(|t| (t.clone(), None)).collect(), announced: None }
    }

    /// Takes subtask `task`'s report; the least watermark to announce
    /// when it changed (`i64::MAX` when no subtask holds the others back).
    pub fn report(&mut self, task: TaskId, watermark: Option<i64>) -> Option<i64> {
        self.reported.insert(task, Some(watermark));
        let least = self
            .reported
            .values()
            .filter_map(|r| match r {
                None => Some(i64::MIN),
                Some(w) => *w,
            })
            .min()
            .unwrap_or(i64::MAX);
        (self.announced != Some(least)).then(|| {
            self.announced = Some(least);
            least
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(subtask: u32) -> TaskId {
        TaskId { stage: 0, name: "orders".into(), subtask, parallelism: 2 }
    }

    #[test]
    fn the_least_watermark_is_announced_once_every_source_subtask_reported_and_again_when_it_moves() {
        let mut group = WatermarkGroup::new(&[task(0), task(1)]);
        assert_eq!(group.report(task(0), Some(5_000)), Some(i64::MIN), "subtask 1 may still bring anything");
        assert_eq!(group.report(task(1), Some(2_000)), Some(2_000));
        assert_eq!(group.report(task(0), Some(9_000)), None, "the least did not move");
        assert_eq!(group.report(task(1), Some(3_000)), Some(3_000));
    }

    #[test]
    fn an_idle_or_finished_subtask_holds_nothing_back() {
        let mut group = WatermarkGroup::new(&[task(0), task(1)]);
        group.report(task(0), Some(5_000));
        assert_eq!(group.report(task(1), None), Some(5_000));
        assert_eq!(group.report(task(0), None), Some(i64::MAX));
    }
}
