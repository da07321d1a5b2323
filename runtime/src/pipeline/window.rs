//! Event-time windows per key: tumbling and sliding ones aligned to the
//! epoch, and session windows that close after a gap without records.
//! Records are aggregated as they arrive; a window is emitted once the
//! watermark passes its end, and with `allowedLateness` kept that much
//! longer, emitted again for each record that still comes. Deduplication within a time bound is here too:
//! it is a window of one record per key.
//!
//! Both emit `Result<Row, BadRecord>`: a late record is either dropped and
//! counted, or handed on as a bad record for the error policy
//! (`eventTime.lateRecords`), which the step after them applies.

use std::collections::BTreeMap;

use serde_json::Value;

use super::aggregate::{Accumulator, AggState, Aggregate};
use super::bad_records::Check;
use crate::manifest::{DeduplicateSpec, TimeDomain, WindowKind, WindowSpec};
use crate::operators::{EventTimeFunction, Timers};
use crate::record::{event_time_of, BadRecord, Row};
use crate::task::TaskError;

/// A window's result, or a late record for the error policy.
pub type Routed = Result<Row, BadRecord>;

/// Passes window results on and hands late records to the error policy.
pub struct SplitLate;

impl Check<Routed> for SplitLate {
    fn check(&mut self, batch: Vec<Routed>) -> (Vec<Row>, Vec<BadRecord>) {
        let mut rows = Vec::with_capacity(batch.len());
        let mut late = Vec::new();
        for routed in batch {
            match routed {
                Ok(row) => rows.push(row),
                Err(bad) => late.push(bad),
            }
        }
        (rows, late)
    }
}

/// Where late records go: `None`, dropped and counted; else to the error
/// policy, with the step's path as their origin.
#[derive(Debug, Clone, Default)]
pub struct LateTo(pub Option<String>);

impl LateTo {
    pub(super) fn late(&self, row: Row, ts: i64, why: &str, timers: &mut Timers, out: &mut Vec<Routed>) {
        let Some(origin) = &self.0 else {
            timers.drop_late();
            return;
        };
        let watermark = timers.watermark().unwrap_or(i64::MIN);
        let reason = format!("late record: event time {ts} came after the watermark reached {watermark}, {why}");
        out.push(Err(BadRecord { origin: origin.clone(), raw: row.to_string(), reason }));
    }
}

/// Tumbling (`slide == size`) or sliding windows aligned to the epoch,
/// made safe to step through whatever the manifest said: at least 1 ms
/// long, sliding by at least 1 ms and at most their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hop {
    pub size: i64,
    pub slide: i64,
}

impl Hop {
    pub(super) fn new(size: i64, slide: i64) -> Hop {
        let size = size.max(1);
        Hop { size, slide: slide.clamp(1, size) }
    }

    /// The windows `[start, end)` holding `ts`, latest first.
    pub(super) fn windows(self, ts: i64) -> impl Iterator<Item = (i64, i64)> {
        let Hop { size, slide } = self;
        let last = ts - ts.rem_euclid(slide);
        std::iter::successors(Some(last), move |s| s.checked_sub(slide))
            .map(move |s| (s, s.saturating_add(size)))
            // A window [s, s + size) holds ts while s > ts - size.
            .take_while(move |(_, end)| *end > ts)
    }

    /// The end of the last window holding `ts`.
    pub(super) fn last_end(self, ts: i64) -> i64 {
        (ts - ts.rem_euclid(self.slide)).saturating_add(self.size)
    }
}

/// The event time of a keyed record; a record without one failing names its key.
fn event_time(row: &Row, field: &str, key: &str) -> Result<i64, TaskError> {
    event_time_of(row, field).map_err(|reason| TaskError::BadRecord { record: format!("with key `{key}`"), reason })
}

#[derive(Debug, Clone)]
pub struct WindowAggregate<A = AggState> {
    aggregate: Aggregate<A>,
    time_field: String,
    kind: WindowKind,
    /// With early results by event time: how often, from a window's start.
    early: Option<i64>,
    /// With early results by processing time: how often, on the wall clock.
    early_processing: Option<i64>,
    /// How long past its last instant a fired window is kept for late
    /// records (0: dropped as it fires).
    lateness: i64,
    late: LateTo,
}

/// A key's open windows by start: the end (exclusive) and the aggregates.
pub type Windows<A = AggState> = BTreeMap<i64, (i64, A)>;

impl<A: Accumulator> WindowAggregate<A> {
    /// `spec` was validated: its kind is known and its lengths positive.
    pub fn new(key_field: &str, time_field: &str, spec: &WindowSpec, late: LateTo) -> WindowAggregate<A> {
        let kind = match spec.kind() {
            Ok(WindowKind::Sliding { size, slide }) => {
                let Hop { size, slide } = Hop::new(size, slide);
                WindowKind::Sliding { size, slide }
            }
            Ok(WindowKind::Session { gap }) => WindowKind::Session { gap: gap.max(1) },
            Err(_) => WindowKind::Sliding { size: 1, slide: 1 },
        };
        let aggregate = Aggregate::new(key_field, &spec.aggregate);
        let every = spec.early_every.map(|e| e.millis().max(1));
        let (early, early_processing) = match spec.early_time {
            TimeDomain::EventTime => (every, None),
            TimeDomain::ProcessingTime => (None, every),
        };
        let lateness = spec.allowed_lateness.map_or(0, |l| l.millis().max(0));
        WindowAggregate { aggregate, time_field: time_field.into(), kind, early, early_processing, lateness, late }
    }

    /// With early results by processing time, a record reached the key's
    /// open windows: they are emitted at the next multiple of the interval
    /// (one timer per key and multiple, however many records come).
    fn changed(&self, timers: &mut Timers) {
        if let Some(every) = self.early_processing {
            let now = timers.now();
            timers.register_processing_time(now.div_euclid(every).saturating_add(1).saturating_mul(every));
        }
    }

    /// When the window ending (exclusively) at `end` is dropped: once the
    /// watermark passes its last instant plus the allowed lateness.
    fn expiry(&self, end: i64) -> i64 {
        (end - 1).saturating_add(self.lateness)
    }

    /// The key's row for the window `[start, end)`; `last` marks the final
    /// row where early rows come too.
    fn row(&self, key: &str, start: i64, end: i64, last: bool, acc: &A) -> Row {
        let mut bounds = vec![("window_start", Value::from(start)), ("window_end", Value::from(end))];
        let early = self.early.is_some() || self.early_processing.is_some();
        bounds.extend(early.then(|| ("final", Value::from(last))));
        self.aggregate.row(key, bounds, acc)
    }

    /// After `row` went into the window `[start, end)`: a window that fired
    /// already is emitted again, now; else its timer is set.
    fn placed_in(&self, key: &str, start: i64, end: i64, acc: &A, timers: &mut Timers, out: &mut Vec<Routed>) {
        if timers.watermark().is_some_and(|w| w >= end - 1) {
            out.push(Ok(self.row(key, start, end, true, acc)));
            timers.register(self.expiry(end));
        } else {
            timers.register(end - 1);
            self.changed(timers);
        }
    }

    /// With early results, the first time after `after` (the watermark)
    /// that the window `[start, end)` fires early at: the last instant of
    /// each `early` from its start, before its end.
    fn next_early(&self, start: i64, end: i64, after: Option<i64>) -> Option<i64> {
        let every = self.early?;
        let k = match after.map(|a| a.saturating_sub(start).saturating_add(1)) {
            Some(passed) if passed >= 0 => passed / every + 1,
            _ => 1,
        };
        let at = start.saturating_add(every.saturating_mul(k)).saturating_sub(1);
        (at < end - 1).then_some(at)
    }

    /// Adds `row` at `ts` to the sliding windows holding it that are still
    /// open; false when all of them were emitted already.
    fn add_sliding(
        &self,
        key: &str,
        row: &Row,
        ts: i64,
        windows: &mut Windows<A>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<bool, TaskError> {
        let WindowKind::Sliding { size, slide } = self.kind else { return Ok(false) };
        let mut placed = false;
        // Earliest first, so a record updating several fired windows emits
        // their rows in start order.
        let mut windows_of: Vec<(i64, i64)> = Hop { size, slide }.windows(ts).collect();
        windows_of.reverse();
        for (start, end) in windows_of {
            if timers.watermark().is_some_and(|w| w >= self.expiry(end)) {
                continue;
            }
            if !windows.contains_key(&start) {
                if let Some(at) = self.next_early(start, end, timers.watermark()) {
                    timers.register(at);
                }
            }
            let (_, acc) = windows.entry(start).or_insert_with(|| (end, A::default()));
            self.aggregate.fold(key, row, ts, acc)?;
            self.placed_in(key, start, end, acc, timers, out);
            placed = true;
        }
        Ok(placed)
    }

    /// Adds `row` at `ts` as a session `[ts, ts + gap)` merged with the
    /// key's open sessions it overlaps; false when that session had closed.
    /// A session that fired and is kept for late records may merge too;
    /// the merged session then fires at once, under its new bounds.
    fn add_session(
        &self,
        key: &str,
        row: &Row,
        ts: i64,
        windows: &mut Windows<A>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<bool, TaskError> {
        let WindowKind::Session { gap } = self.kind else { return Ok(false) };
        let (mut start, mut end) = (ts, ts.saturating_add(gap));
        let overlapping: Vec<i64> = windows.range(..end).filter(|(_, (e, _))| *e > start).map(|(s, _)| *s).collect();
        if overlapping.is_empty() && timers.watermark().is_some_and(|w| w >= self.expiry(end)) {
            return Ok(false);
        }
        let mut acc = A::default();
        self.aggregate.fold(key, row, ts, &mut acc)?;
        for s in overlapping {
            if let Some((e, other)) = windows.remove(&s) {
                timers.delete(e - 1);
                timers.delete(self.expiry(e));
                start = start.min(s);
                end = end.max(e);
                self.aggregate.merge(&mut acc, &other);
            }
        }
        self.placed_in(key, start, end, &acc, timers, out);
        windows.insert(start, (end, acc));
        Ok(true)
    }
}

impl<A: Accumulator> EventTimeFunction<String, Row, Routed> for WindowAggregate<A> {
    type State = Windows<A>;

    fn process(
        &mut self,
        key: &String,
        row: Row,
        windows: &mut Windows<A>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let ts = event_time(&row, &self.time_field, key)?;
        let placed = match self.kind {
            WindowKind::Sliding { .. } => self.add_sliding(key, &row, ts, windows, timers, out)?,
            WindowKind::Session { .. } => self.add_session(key, &row, ts, windows, timers, out)?,
        };
        if !placed {
            self.late.late(row, ts, "so every window it belongs to had fired", timers, out);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &String,
        time: i64,
        windows: &mut Windows<A>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        // Early results, in start order, of windows still open at `time`
        // whose final result this watermark does not bring anyway.
        if let Some(every) = self.early {
            for (start, (end, acc)) in windows.iter() {
                let closing = timers.watermark().is_some_and(|w| w >= end - 1);
                if !closing && time < end - 1 && time >= *start && (time + 1 - start) % every == 0 {
                    out.push(Ok(self.row(key, *start, *end, false, acc)));
                    // One early row per watermark step, however far it jumped.
                    let after = timers.watermark().map_or(time, |w| w.max(time));
                    if let Some(at) = self.next_early(*start, *end, Some(after)) {
                        timers.register(at);
                    }
                }
            }
        }
        // Windows of a key have distinct ends: the one whose last instant
        // this is fires, and the one kept for late records until now goes.
        let due = windows.iter().find(|(_, (end, _))| end - 1 == time).map(|(start, _)| *start);
        if let Some((start, (end, acc))) = due.and_then(|s| windows.get(&s).map(|w| (s, w))) {
            out.push(Ok(self.row(key, start, *end, true, acc)));
            if self.lateness > 0 {
                timers.register(self.expiry(*end));
            }
        }
        let expired = windows.iter().find(|(_, (end, _))| self.expiry(*end) == time).map(|(start, _)| *start);
        if let Some(start) = expired {
            windows.remove(&start);
        }
        Ok(())
    }

    /// Early results by processing time: the key's windows still open.
    fn on_processing_timer(
        &mut self,
        key: &String,
        _time: i64,
        windows: &mut Windows<A>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        for (start, (end, acc)) in windows.iter() {
            if timers.watermark().is_none_or(|w| w < end - 1) {
                out.push(Ok(self.row(key, *start, *end, false, acc)));
            }
        }
        Ok(())
    }

    fn is_empty(&self, windows: &Windows<A>) -> bool {
        windows.is_empty()
    }
}

/// Passes on a key's first record and drops its records less than
/// `within` from it in event time.
#[derive(Debug, Clone)]
pub struct Deduplicate {
    time_field: String,
    within: i64,
    late: LateTo,
}

impl Deduplicate {
    pub fn new(time_field: &str, spec: &DeduplicateSpec, late: LateTo) -> Deduplicate {
        let within = spec.within.millis().max(1);
        Deduplicate { time_field: time_field.into(), within, late }
    }
}

impl EventTimeFunction<String, Row, Routed> for Deduplicate {
    /// The event time of the record passed on, while records near it may come.
    type State = Option<i64>;

    fn process(
        &mut self,
        key: &String,
        row: Row,
        kept: &mut Option<i64>,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let ts = event_time(&row, &self.time_field, key)?;
        if kept.is_some_and(|k| ts.abs_diff(k) < self.within as u64) {
            return Ok(());
        }
        // Past its horizon, a record may duplicate one whose memory is gone.
        if timers.watermark().is_some_and(|w| w >= ts.saturating_add(self.within - 1)) {
            let why = "so whether it repeats an earlier record is no longer known (deduplicate.within)";
            self.late.late(row, ts, why, timers, out);
            return Ok(());
        }
        if let Some(k) = kept.replace(ts) {
            timers.delete(k.saturating_add(self.within - 1));
        }
        // Once the watermark is past `ts + within`, no record near it can come.
        timers.register(ts.saturating_add(self.within - 1));
        out.push(Ok(row));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &String,
        _time: i64,
        kept: &mut Option<i64>,
        _timers: &mut Timers,
        _out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        *kept = None;
        Ok(())
    }

    fn is_empty(&self, kept: &Option<i64>) -> bool {
        kept.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_results_come_each_time_the_watermark_passes_another_interval_and_the_final_one_at_the_end() {
        let spec: WindowSpec = serde_json::from_value(
            serde_json::json!({"size": "10ms", "earlyEvery": "3ms", "aggregate": {"count": true}}),
        )
        .unwrap();
        let mut w = WindowAggregate::<AggState>::new("key", "ts", &spec, LateTo(None));
        let rec = |ts: i64| serde_json::json!({"key": "a", "ts": ts});
        let steps = vec![(None, rec(1)), (Some(2), rec(4)), (Some(7), rec(8)), (Some(8), rec(12))];
        let (out, late, _) = crate::operators::event_time::drive(&mut w, steps, Some(100));
        let rows: Vec<(i64, u64, bool)> = out
            .into_iter()
            .map(|r| r.unwrap())
            .map(|r| (r["window_start"].as_i64().unwrap(), r["count"].as_u64().unwrap(), r["final"] == true))
            .collect();
        assert_eq!(late, 0);
        assert_eq!(
            rows,
            vec![
                (0, 1, false), // the watermark at 2 passes [0, 3)
                (0, 2, false), // at 7, [3, 6)
                (0, 3, false), // at 8, [6, 9)
                (0, 3, true),  // the end
                (10, 1, true), // [10, 20): the watermark jumps past its end, so no early row first
            ]
        );
    }

    /// Runs `spec` over one key's `(watermark, ts)` steps: the rows as
    /// (start, end, count), the records late, and whether the state is empty.
    fn windows_of(spec: serde_json::Value, steps: &[(Option<i64>, i64)]) -> (Vec<(i64, i64, u64)>, u64, bool) {
        let spec: WindowSpec = serde_json::from_value(spec).unwrap();
        let mut w = WindowAggregate::<AggState>::new("key", "ts", &spec, LateTo(None));
        let steps = steps.iter().map(|(w, ts)| (*w, serde_json::json!({"key": "a", "ts": ts}))).collect();
        let (out, late, empty) = crate::operators::event_time::drive(&mut w, steps, Some(1_000));
        let rows = out
            .into_iter()
            .map(|r| r.unwrap())
            .map(|r| {
                let field = |f: &str| r[f].as_i64().unwrap();
                (field("window_start"), field("window_end"), r["count"].as_u64().unwrap())
            })
            .collect();
        (rows, late, empty)
    }

    #[test]
    fn a_record_within_the_allowed_lateness_updates_its_fired_window_and_one_past_it_is_late() {
        let spec = serde_json::json!({"size": "10ms", "allowedLateness": "5ms", "aggregate": {"count": true}});
        let steps = [
            (None, 1),
            (None, 3),
            (Some(9), 15), // [0, 10) fires with 2
            (Some(12), 2), // within 5ms of its end: fires again with 3
            (Some(14), 4), // the watermark passed 9 + 5: gone, so late
        ];
        let (rows, late, empty) = windows_of(spec, &steps);
        assert_eq!(rows, vec![(0, 10, 2), (0, 10, 3), (10, 20, 1)]);
        assert_eq!(late, 1);
        assert!(empty, "every window was dropped after its lateness");
    }

    #[test]
    fn without_allowed_lateness_a_window_fires_once_and_is_dropped() {
        let spec = serde_json::json!({"size": "10ms", "aggregate": {"count": true}});
        let (rows, late, empty) = windows_of(spec, &[(None, 1), (Some(9), 15), (Some(10), 2)]);
        assert_eq!(rows, vec![(0, 10, 1), (10, 20, 1)]);
        assert_eq!(late, 1);
        assert!(empty);
    }

    #[test]
    fn a_late_record_merges_into_a_fired_session_which_fires_again_under_its_new_bounds() {
        let spec = serde_json::json!({"gap": "10ms", "allowedLateness": "20ms", "aggregate": {"count": true}});
        let steps = [
            (None, 0),
            (Some(9), 40),  // [0, 10) fires with 1; 40 opens [40, 50)
            (Some(15), 5),  // merges: [0, 15) with 2, past its end so at once
            (Some(25), 12), // merges again: [0, 22) with 3
            (Some(42), 3),  // [0, 22) went at 21 + 20: late
        ];
        let (rows, late, empty) = windows_of(spec, &steps);
        assert_eq!(rows, vec![(0, 10, 1), (0, 15, 2), (0, 22, 3), (40, 50, 1)]);
        assert_eq!(late, 1);
        assert!(empty);
    }

    #[test]
    fn a_record_within_the_lateness_updates_each_fired_sliding_window_holding_it_in_start_order() {
        let spec = serde_json::json!({"size": "10ms", "slide": "5ms", "allowedLateness": "10ms",
            "aggregate": {"count": true}});
        // 7 is in [0, 10) and [5, 15); both fired by 14, neither gone.
        let (rows, late, _) = windows_of(spec, &[(None, 7), (Some(14), 8)]);
        assert_eq!(rows, vec![(0, 10, 1), (5, 15, 1), (0, 10, 2), (5, 15, 2)]);
        assert_eq!(late, 0);
    }

    #[test]
    fn early_results_by_processing_time_come_at_the_next_multiple_after_a_change_for_open_windows_only() {
        let spec: WindowSpec = serde_json::from_value(serde_json::json!({"size": "10ms", "earlyEvery": "100ms",
            "earlyTime": "ProcessingTime", "aggregate": {"count": true}}))
        .unwrap();
        let mut w = WindowAggregate::<AggState>::new("key", "ts", &spec, LateTo(None));
        let (mut windows, mut set, mut added, mut late, mut processing) =
            (Windows::default(), Default::default(), Vec::new(), 0, Vec::new());
        let mut out = Vec::new();
        let key = "a".to_string();
        for (ts, now) in [(1, 1_030), (12, 1_070)] {
            let mut timers = Timers::for_test((Some(0), now), &mut set, &mut added, &mut late, &mut processing);
            w.process(&key, serde_json::json!({"key": "a", "ts": ts}), &mut windows, &mut timers, &mut out).unwrap();
        }
        assert_eq!(processing, [(1_100, true), (1_100, true)], "both changes are due at the next multiple of 100");
        // Event time closed [0, 10) meanwhile: only [10, 20) is early.
        let mut timers = Timers::for_test((Some(9), 1_100), &mut set, &mut added, &mut late, &mut processing);
        w.on_processing_timer(&key, 1_100, &mut windows, &mut timers, &mut out).unwrap();
        let rows: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0]["window_start"].as_i64(), rows[0]["final"].as_bool()), (Some(10), Some(false)));
    }

    #[test]
    fn a_record_falls_in_one_tumbling_window_and_in_size_over_slide_sliding_ones() {
        let starts = |ts, size, slide| Hop::new(size, slide).windows(ts).map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(starts(61_500, 60_000, 60_000), vec![60_000]);
        assert_eq!(starts(-1, 60_000, 60_000), vec![-60_000], "before the epoch too");
        assert_eq!(starts(61_500, 60_000, 20_000), vec![60_000, 40_000, 20_000]);
        assert_eq!(starts(60_000, 60_000, 20_000), vec![60_000, 40_000, 20_000]);
        assert_eq!(starts(59_999, 60_000, 20_000), vec![40_000, 20_000, 0]);
    }
}
