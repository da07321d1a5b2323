//! The first `limit` records of each key by a numeric field, as an update
//! stream: a record entering the ranking is emitted with its rank, and so
//! is every record it moved down one. Or, per window ([`WindowTopN`]), the
//! ranking of each window's results emitted once when the window is over.

use std::collections::BTreeMap;

use serde_json::Value;

use super::window::{Hop, LateTo, Routed};
use super::{not_a_number, read_back};
use crate::manifest::{RankFunction, SortOrder, TopNSpec};
use crate::operators::{EventTimeFunction, KeyedProcessFunction, Timers};
use crate::record::Row;
use crate::task::TaskError;

#[derive(Debug, Clone)]
pub struct TopN {
    limit: usize,
    order_by: String,
    descending: bool,
    rank_field: String,
}

impl TopN {
    pub fn new(spec: &TopNSpec) -> TopN {
        TopN {
            limit: spec.limit.max(1) as usize,
            order_by: spec.order_by.clone(),
            descending: spec.order == SortOrder::Descending,
            rank_field: spec.rank_field().to_string(),
        }
    }

    /// Whether `a` ranks before `b`; an equal value ranks after the records
    /// already there, so a tie keeps the earlier record first.
    fn before(&self, a: f64, b: f64) -> bool {
        if self.descending {
            a > b
        } else {
            a < b
        }
    }

    /// The value `row` is ranked by.
    fn value_of(&self, row: &Row, key: &str) -> Result<f64, TaskError> {
        row.get(&self.order_by).and_then(Value::as_f64).ok_or_else(|| not_a_number(&self.order_by, key))
    }
}

/// A key's ranking, first first: each record's value and its JSON text
/// (postcard cannot read a `serde_json::Value` back).
pub type Ranking = Vec<(f64, String)>;

/// `row` with its rank (1-based) in `field`.
fn ranked(mut row: Row, field: &str, rank: usize) -> Row {
    if let Value::Object(o) = &mut row {
        o.insert(field.into(), Value::from(rank));
    }
    row
}

impl KeyedProcessFunction<String, Row, Row> for TopN {
    /// The key's ranking, first first: each record's value and its JSON
    /// text (postcard cannot read a `serde_json::Value` back).
    type State = Vec<(f64, String)>;

    fn process(
        &mut self,
        key: &String,
        row: Row,
        top: &mut Vec<(f64, String)>,
        out: &mut Vec<Row>,
    ) -> Result<(), TaskError> {
        let value = self.value_of(&row, key)?;
        let at = top.iter().position(|(v, _)| self.before(value, *v)).unwrap_or(top.len());
        if at >= self.limit {
            return Ok(());
        }
        top.insert(at, (value, row.to_string()));
        top.truncate(self.limit);
        out.push(ranked(row, &self.rank_field, at + 1));
        for (i, (_, text)) in top.iter().enumerate().skip(at + 1) {
            let moved = read_back(text, "topN", &format!("a ranked record of key `{key}`"))?;
            out.push(ranked(moved, &self.rank_field, i + 1));
        }
        Ok(())
    }
}

/// Window results ranked per key and window: a window's ranking is held
/// (its first `limit` rows only) until the watermark reaches the window's
/// last instant, then emitted once, first first, and dropped.
///
/// The window step before it emits a window's rows before the watermark
/// that closed it, on every channel, so all of them are here before that
/// watermark is; a row arriving after it is late.
#[derive(Debug, Clone)]
pub struct WindowTopN {
    top: TopN,
    /// With `Rank` and `DenseRank` tied rows share a rank and are all kept.
    ranking: RankFunction,
    /// Ranking the records themselves (`topN.window`): their event-time
    /// field and the windows' size and slide; else the rows of a window
    /// step, which carry their window's bounds.
    assign: Option<(String, Hop)>,
    late: LateTo,
}

/// A key's rankings by window (`window_start`, `window_end`).
pub type WindowRankings = BTreeMap<(i64, i64), Ranking>;

impl WindowTopN {
    /// `time`: the pipeline's event-time field.
    pub fn new(spec: &TopNSpec, time: &str, late: LateTo) -> WindowTopN {
        let assign = spec.window.as_ref().map(|w| {
            let size = w.size.millis();
            (time.to_string(), Hop::new(size, w.slide.map_or(size, |s| s.millis())))
        });
        WindowTopN { top: TopN::new(spec), ranking: spec.ranking, assign, late }
    }

    /// Ranks `row` (by `value`) into a window's ranking `top`, if it ranks
    /// within the limit; only then is its text made.
    fn place(&self, value: f64, row: &Row, top: &mut Ranking) {
        let limit = self.top.limit;
        // The rank `value` would have: how many rows (or, dense, values)
        // come before it, plus one (for a row number, the least it can
        // have, before the rows it ties with).
        let ahead = top.iter().take_while(|(v, _)| self.top.before(*v, value));
        let rank = match self.ranking {
            RankFunction::RowNumber | RankFunction::Rank => ahead.count() + 1,
            RankFunction::DenseRank => distinct(ahead.map(|(v, _)| *v)) + 1,
        };
        if rank > limit {
            return;
        }
        let text = row.to_string();
        // All of a window's rows are ranked at once, so a tie is broken by
        // the rows' text rather than by their arrival, which differs
        // between a run and its replay after a restore.
        let at =
            top.iter().position(|(v, t)| self.top.before(value, *v) || (value == *v && text < *t)).unwrap_or(top.len());
        let rank = match self.ranking {
            RankFunction::RowNumber => at + 1,
            _ => rank,
        };
        if rank <= limit {
            top.insert(at, (value, text));
            let kept = match self.ranking {
                RankFunction::RowNumber => limit,
                // Rows after the limit stay while tied with the last within it.
                RankFunction::Rank => top
                    .get(limit - 1)
                    .map_or(top.len(), |(last, _)| limit + top[limit..].iter().take_while(|(v, _)| v == last).count()),
                // Every row of the first `limit` values stays.
                RankFunction::DenseRank => {
                    let mut values = 0;
                    top.iter()
                        .enumerate()
                        .take_while(|(i, (v, _))| {
                            values += usize::from(*i == 0 || top[i - 1].0 != *v);
                            values <= limit
                        })
                        .count()
                }
            };
            top.truncate(kept);
        }
    }
}

/// How many distinct values an ordered run holds.
fn distinct(values: impl Iterator<Item = f64>) -> usize {
    let mut last = None;
    values.filter(|v| last.replace(*v) != Some(*v)).count()
}

/// A window bound of a window step's row.
fn bound(row: &Row, field: &str, key: &str) -> Result<i64, TaskError> {
    row.get(field).and_then(Value::as_i64).ok_or_else(|| TaskError::BadRecord {
        record: format!("with key `{key}`"),
        reason: format!(
            "field `{field}` is not a window bound (milliseconds since the epoch); topN.perWindow ranks \
             the rows of a window step"
        ),
    })
}

impl EventTimeFunction<String, Row, Routed> for WindowTopN {
    type State = WindowRankings;

    fn process(
        &mut self,
        key: &String,
        mut row: Row,
        rankings: &mut WindowRankings,
        timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let value = self.top.value_of(&row, key)?;
        let watermark = timers.watermark();
        let open = |end: i64| watermark.is_none_or(|w| w < end - 1);
        let Some((field, hop)) = &self.assign else {
            // A window step's row: it carries its one window's bounds.
            let (start, end) = (bound(&row, "window_start", key)?, bound(&row, "window_end", key)?);
            if !open(end) {
                self.late.late(row, end - 1, "so its window's ranking was emitted", timers, out);
                return Ok(());
            }
            self.place(value, &row, rankings.entry((start, end)).or_default());
            timers.register(end - 1);
            return Ok(());
        };
        let ts = super::join::time_of(&row, field, key)?;
        let mut ranked = false;
        for (start, end) in hop.windows(ts).filter(|(_, end)| open(*end)) {
            if let Some(fields) = row.as_object_mut() {
                fields.insert("window_start".into(), Value::from(start));
                fields.insert("window_end".into(), Value::from(end));
            }
            self.place(value, &row, rankings.entry((start, end)).or_default());
            timers.register(end - 1);
            ranked = true;
        }
        if !ranked {
            self.late.late(row, ts, "so the ranking of every window it belongs to was emitted", timers, out);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &String,
        time: i64,
        rankings: &mut WindowRankings,
        _timers: &mut Timers,
        out: &mut Vec<Routed>,
    ) -> Result<(), TaskError> {
        let due: Vec<(i64, i64)> = rankings.keys().filter(|(_, end)| end - 1 == time).copied().collect();
        for window in due {
            let Some(top) = rankings.remove(&window) else { continue };
            let mut rank = 0;
            for (i, (value, text)) in top.iter().enumerate() {
                let tied = i > 0 && top[i - 1].0 == *value;
                rank = match self.ranking {
                    RankFunction::RowNumber => i + 1,
                    RankFunction::Rank if tied => rank,
                    RankFunction::Rank => i + 1,
                    RankFunction::DenseRank if tied => rank,
                    RankFunction::DenseRank => rank + 1,
                };
                let row = read_back(text, "topN", &format!("a ranked record of key `{key}`"))?;
                out.push(Ok(ranked(row, &self.top.rank_field, rank)));
            }
        }
        Ok(())
    }

    fn is_empty(&self, rankings: &WindowRankings) -> bool {
        rankings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(spec: TopNSpec, values: &[i64]) -> (Vec<(i64, u64)>, Ranking) {
        let mut top = TopN::new(&spec);
        let mut state = Vec::new();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            top.process(&"k".to_string(), json!({"id": i, "v": v}), &mut state, &mut out).unwrap();
        }
        let rank = spec.rank_field();
        let emitted = out.iter().map(|r| (r["id"].as_i64().unwrap(), r[rank].as_u64().unwrap())).collect();
        (emitted, state)
    }

    #[test]
    fn a_record_entering_the_ranking_is_emitted_with_every_record_it_moved_down() {
        let spec = TopNSpec {
            limit: 3,
            order_by: "v".into(),
            order: SortOrder::Descending,
            rank_field: None,
            per_window: false,
            window: None,
            ranking: RankFunction::RowNumber,
        };
        let (emitted, state) = run(spec, &[5, 9, 1, 7, 2, 7]);
        assert_eq!(
            emitted,
            [
                (0, 1),
                (1, 1),
                (0, 2),
                (2, 3),
                (3, 2),
                (0, 3),
                // 2 ranks below the three there are: nothing changes.
                // The second 7 ties with the first and ranks after it.
                (5, 3),
            ]
        );
        assert_eq!(state.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [9.0, 7.0, 7.0]);
    }

    #[test]
    fn ascending_ranks_the_least_first_into_the_rank_field_and_a_non_number_names_the_field_and_key() {
        let spec = TopNSpec {
            limit: 2,
            order_by: "v".into(),
            order: SortOrder::Ascending,
            rank_field: Some("pos".into()),
            per_window: false,
            window: None,
            ranking: RankFunction::RowNumber,
        };
        let (emitted, _) = run(spec.clone(), &[5, 9, 1]);
        assert_eq!(emitted, [(0, 1), (1, 2), (2, 1), (0, 2)]);
        let err = TopN::new(&spec)
            .process(&"k".to_string(), json!({"v": "high"}), &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `v`") && err.contains("key `k`"), "{err}");
    }

    fn window_row(item: &str, start: i64, count: i64) -> Row {
        json!({"item": item, "window_start": start, "window_end": start + 10, "count": count})
    }

    #[test]
    fn each_windows_ranking_is_emitted_once_when_the_watermark_passes_its_end_and_a_late_row_is_routed() {
        let spec = TopNSpec {
            limit: 2,
            order_by: "count".into(),
            order: SortOrder::Descending,
            rank_field: None,
            per_window: true,
            window: None,
            ranking: RankFunction::RowNumber,
        };
        let mut top = WindowTopN::new(&spec, "ts", LateTo(Some("spec.pipeline.steps[3]".into())));
        let steps = vec![
            (None, window_row("a", 0, 3)),
            (None, window_row("b", 0, 7)),
            (None, window_row("c", 10, 1)),
            (None, window_row("d", 0, 5)),
            // The watermark reaches window 0's last instant: its ranking
            // comes out before this row of window 10 is ranked.
            (Some(9), window_row("e", 10, 4)),
            (None, window_row("f", 0, 9)),
            // Tied with c: ranked by text, so the same in every replay.
            (None, window_row("b", 10, 1)),
        ];
        let (out, late, empty) = crate::operators::event_time::drive(&mut top, steps, Some(19));
        let got: Vec<String> = out
            .iter()
            .map(|r| match r {
                Ok(row) => format!("{}@{}#{}", row["item"].as_str().unwrap(), row["window_start"], row["rank"]),
                Err(bad) => format!("late {}", bad.reason),
            })
            .collect();
        assert_eq!(got[..2], ["b@0#1", "d@0#2"]);
        assert!(got[2].starts_with("late") && got[2].contains("its window's ranking was emitted"), "{got:?}");
        assert_eq!(got[3..], ["e@10#1", "b@10#2"]);
        assert_eq!(late, 0, "routed, not dropped");
        assert!(empty, "emitted windows leave no state behind");
    }

    /// One window of items with these counts ranked by `ranking` within
    /// `limit`: `item#rank` in order, and whether the state is left empty.
    fn ranked_window(ranking: RankFunction, limit: u32, counts: &[(&str, i64)]) -> (Vec<String>, bool) {
        let spec = TopNSpec {
            limit,
            order_by: "count".into(),
            order: SortOrder::Descending,
            rank_field: None,
            per_window: true,
            window: None,
            ranking,
        };
        let mut top = WindowTopN::new(&spec, "ts", LateTo(None));
        let steps = counts.iter().map(|(item, n)| (None, window_row(item, 0, *n))).collect();
        let (out, _, empty) = crate::operators::event_time::drive(&mut top, steps, Some(9));
        let ranks = out
            .iter()
            .map(|r| {
                let row = r.as_ref().unwrap();
                format!("{}#{}", row["item"].as_str().unwrap(), row["rank"])
            })
            .collect();
        (ranks, empty)
    }

    #[test]
    fn with_rank_rows_tied_on_the_order_share_a_rank_and_are_all_kept_past_the_limit() {
        let counts = [("a", 5), ("b", 9), ("c", 5), ("d", 1), ("e", 5), ("f", 9)];
        let (ranks, empty) = ranked_window(RankFunction::Rank, 2, &counts);
        // Two 9s share rank 1, so the 5s rank 3 (past the limit): dropped.
        assert_eq!(ranks, ["b#1", "f#1"]);
        assert!(empty);
        // All three 5s tie at rank 3, within the limit: all kept.
        let (ranks, _) = ranked_window(RankFunction::Rank, 3, &counts);
        assert_eq!(ranks, ["b#1", "f#1", "a#3", "c#3", "e#3"]);
    }

    #[test]
    fn with_dense_rank_ties_share_a_rank_the_next_value_follows_and_rows_of_the_first_values_are_kept() {
        let counts = [("a", 5), ("b", 9), ("c", 5), ("d", 1), ("e", 7), ("f", 9), ("g", 5), ("h", 8)];
        let (ranks, empty) = ranked_window(RankFunction::DenseRank, 2, &counts);
        // 9, 9 rank 1; 8 ranks 2; 7 would rank 3: past the limit. Each
        // value that came in on top pushed the 5s, then the 7, out.
        assert_eq!(ranks, ["b#1", "f#1", "h#2"]);
        assert!(empty);
        let (ranks, _) = ranked_window(RankFunction::DenseRank, 4, &counts);
        assert_eq!(ranks, ["b#1", "f#1", "h#2", "e#3", "a#4", "c#4", "g#4"]);
    }

    /// The highest-priced bid (`{"bid", "ts", "price"}`) of each 10 s
    /// window, sliding by `slide` if given, ranked by `ranking`.
    fn highest_bid_per_window(slide: Option<&str>, ranking: RankFunction) -> WindowTopN {
        let spec = TopNSpec {
            limit: 1,
            order_by: "price".into(),
            order: SortOrder::Descending,
            rank_field: None,
            per_window: false,
            window: Some(crate::manifest::TopNWindow {
                size: "10s".parse().unwrap(),
                slide: slide.map(|s| s.parse().unwrap()),
            }),
            ranking,
        };
        WindowTopN::new(&spec, "ts", LateTo(None))
    }

    fn bid(b: &str, ts: i64, price: i64) -> Row {
        serde_json::json!({"bid": b, "ts": ts, "price": price})
    }

    #[test]
    fn with_a_window_records_are_ranked_per_tumbling_window_of_their_event_time_and_keep_their_own_time() {
        let mut top = highest_bid_per_window(None, RankFunction::Rank);
        let steps = vec![
            (None, bid("a", 1_000, 5)),
            (None, bid("b", 9_999, 7)),
            (None, bid("c", 10_000, 3)),
            (None, bid("d", 4_000, 7)),
            // Window [0, 10000) is over: a bid in it now is late.
            (Some(9_999), bid("late", 2_000, 100)),
            (None, bid("e", 12_000, 1)),
        ];
        let (out, late, empty) = crate::operators::event_time::drive(&mut top, steps, Some(19_999));
        let got: Vec<(String, i64, i64, i64)> = out
            .iter()
            .map(|r| {
                let row = r.as_ref().unwrap();
                let n = |f: &str| row[f].as_i64().unwrap();
                (row["bid"].as_str().unwrap().to_string(), n("window_start"), n("ts"), n("rank"))
            })
            .collect();
        let want = [("b", 0, 9_999, 1), ("d", 0, 4_000, 1), ("c", 10_000, 10_000, 1)];
        assert_eq!(got, want.map(|(b, w, t, r)| (b.to_string(), w, t, r)), "the highest bids of each window, ties all");
        assert_eq!((late, empty), (1, true));
    }

    #[test]
    fn with_a_sliding_window_a_record_is_ranked_in_each_window_still_open_and_late_only_when_none_is() {
        let mut top = highest_bid_per_window(Some("5s"), RankFunction::RowNumber);
        let steps = vec![
            (None, bid("a", 1_000, 5)),
            (None, bid("b", 6_000, 7)),
            (None, bid("c", 12_000, 3)),
            // [-5000, 5000) and [0, 10000) are over: 4000 is late, and 8000
            // is ranked in [5000, 15000) alone.
            (Some(9_999), bid("d", 4_000, 100)),
            (None, bid("e", 8_000, 100)),
        ];
        let (out, late, empty) = crate::operators::event_time::drive(&mut top, steps, Some(19_999));
        let got: Vec<(String, i64)> = out
            .iter()
            .map(|r| {
                let row = r.as_ref().unwrap();
                (row["bid"].as_str().unwrap().to_string(), row["window_start"].as_i64().unwrap())
            })
            .collect();
        let want = [("a", -5_000), ("b", 0), ("e", 5_000), ("c", 10_000)];
        assert_eq!(got, want.map(|(b, w)| (b.to_string(), w)));
        assert_eq!((late, empty), (1, true));
    }
}
