//! Tumbling and sliding event-time windows per key, aggregated as records
//! arrive and emitted once the watermark passes each window's end.

use std::collections::BTreeMap;

use serde_json::Value;

use super::aggregate::{AggState, Aggregate};
use crate::manifest::WindowSpec;
use crate::operators::{EventTimeFunction, Timers};
use crate::record::{event_time_of, Row};
use crate::task::TaskError;

#[derive(Debug, Clone)]
pub struct WindowAggregate {
    aggregate: Aggregate,
    time_field: String,
    size: i64,
    slide: i64,
}

impl WindowAggregate {
    pub fn new(key_field: &str, time_field: &str, spec: &WindowSpec) -> WindowAggregate {
        let (size, slide) = spec.millis();
        WindowAggregate {
            aggregate: Aggregate::new(key_field, &spec.aggregate),
            time_field: time_field.into(),
            size: size.max(1),
            slide: slide.clamp(1, size.max(1)),
        }
    }

    /// The starts of the windows holding `ts`, latest first.
    fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + '_ {
        let last = ts - ts.rem_euclid(self.slide);
        std::iter::successors(Some(last), move |s| s.checked_sub(self.slide)).take_while(move |s| {
            // A window [s, s + size) holds ts while s > ts - size.
            s.saturating_add(self.size) > ts
        })
    }

    /// The last event time a window starting at `start` holds, when its timer fires.
    fn last_instant(&self, start: i64) -> i64 {
        start.saturating_add(self.size - 1)
    }
}

impl EventTimeFunction<String, Row, Row> for WindowAggregate {
    /// Each open window of the key by its start.
    type State = BTreeMap<i64, AggState>;

    fn process(
        &mut self,
        key: &String,
        row: Row,
        windows: &mut Self::State,
        timers: &mut Timers,
        _out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        let ts = event_time_of(&row, &self.time_field)
            .map_err(|reason| TaskError::BadRecord { record: format!("with key `{key}`"), reason })?;
        let watermark = timers.watermark();
        let mut placed = false;
        for start in self.starts(ts) {
            let fires_at = self.last_instant(start);
            if watermark.is_some_and(|w| w >= fires_at) {
                continue; // this window was emitted already
            }
            self.aggregate.fold(key, &row, windows.entry(start).or_default())?;
            timers.register(fires_at);
            placed = true;
        }
        if !placed {
            timers.drop_late();
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &String,
        time: i64,
        windows: &mut Self::State,
        _timers: &mut Timers,
        out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        let start = time.saturating_sub(self.size - 1);
        if let Some(acc) = windows.remove(&start) {
            let bounds =
                [("window_start", Value::from(start)), ("window_end", Value::from(start.saturating_add(self.size)))];
            out.push(self.aggregate.row(key, bounds, &acc));
        }
        Ok(())
    }

    fn is_empty(&self, windows: &Self::State) -> bool {
        windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{AggregateSpec, HumanDuration};
    use std::time::Duration;

    fn spec(size_ms: u64, slide_ms: Option<u64>) -> WindowSpec {
        let d = |ms| HumanDuration(Duration::from_millis(ms));
        WindowSpec {
            size: d(size_ms),
            slide: slide_ms.map(d),
            aggregate: AggregateSpec { count: true, ..Default::default() },
        }
    }

    #[test]
    fn a_record_falls_in_one_tumbling_window_and_in_size_over_slide_sliding_ones() {
        let tumbling = WindowAggregate::new("k", "ts", &spec(60_000, None));
        assert_eq!(tumbling.starts(61_500).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), vec![-60_000], "before the epoch too");
        let sliding = WindowAggregate::new("k", "ts", &spec(60_000, Some(20_000)));
        assert_eq!(sliding.starts(61_500).collect::<Vec<_>>(), vec![60_000, 40_000, 20_000]);
        assert_eq!(sliding.starts(60_000).collect::<Vec<_>>(), vec![60_000, 40_000, 20_000]);
        assert_eq!(sliding.starts(59_999).collect::<Vec<_>>(), vec![40_000, 20_000, 0]);
    }
}
