//! `spec.pipeline.steps[].topN`: the N first records or rows per key by a
//! field, updated per record or once per window, and its checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopNSpec {
    /// How many records of each key to rank: 1 to 1000. (Not `n`: YAML 1.1,
    /// which kubectl reads, takes a bare `n` for `false`.)
    pub limit: u32,
    /// The numeric field to rank by.
    pub order_by: String,
    /// `Descending` (the greatest first, the default) or `Ascending`.
    #[serde(default)]
    pub order: SortOrder,
    /// The field each emitted record's rank is written to; absent: `rank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_field: Option<String>,
    /// Rank the results of each window of an earlier `window` step apart
    /// (Flink's Window Top-N), per key and `window_start`/`window_end`, and
    /// emit each window's ranking once, final, when the watermark passes
    /// the window's end; instead of an update stream per record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_window: bool,
    /// How rows tied on `orderBy` are ranked, as SQL's ranking functions:
    /// `RowNumber` (the default: ties get ranks of their own, 1, 2, 3),
    /// or, with `perWindow`, `Rank` (ties share a rank and the next skips,
    /// 1, 1, 3) or `DenseRank` (ties share a rank, the next follows, 1, 1,
    /// 2). With those two every row within `limit` ranks is kept, so a
    /// window may emit more than `limit` rows.
    #[serde(default, skip_serializing_if = "RankFunction::is_row_number")]
    pub ranking: RankFunction,
    /// Rank the records themselves per key and tumbling or sliding
    /// event-time window (Flink's Window Top-N over a windowing TVF, `TABLE(
    /// TUMBLE(TABLE t, DESCRIPTOR(ts), size))` or `HOP`), with no window step
    /// before: each record gets its window's `window_start` and
    /// `window_end`, and each window's ranking is emitted once, final,
    /// when the watermark passes its end. Needs `spec.pipeline.eventTime`;
    /// not with `perWindow`, which ranks a window step's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<TopNWindow>,
}

/// The windows a `topN` ranks records in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopNWindow {
    /// The windows' length, aligned to the epoch as the `window` step's.
    pub size: HumanDuration,
    /// With `slide`, sliding (hopping) windows that start every `slide` (at
    /// most `size`), a record ranked in each window holding it; absent:
    /// tumbling windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<HumanDuration>,
}

/// SQL's ranking functions.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum RankFunction {
    #[default]
    RowNumber,
    Rank,
    DenseRank,
}

impl RankFunction {
    fn is_row_number(&self) -> bool {
        *self == RankFunction::RowNumber
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    Descending,
    Ascending,
}

impl TopNSpec {
    /// `window`: the last window step before this one, if any.
    pub(super) fn problems(&self, at: &str, keyed: bool, window: Option<&WindowSpec>) -> Vec<String> {
        let mut errors = Vec::new();
        if !keyed {
            errors.push(format!("{at}: needs a keyBy step before it"));
        }
        if self.per_window {
            match window {
                None => errors.push(format!(
                    "{at}.perWindow: needs a window step before it, whose results (window_start, window_end) it ranks"
                )),
                Some(w) if w.early_every.is_some() => errors.push(format!(
                    "{at}.perWindow: the window step before it has earlyEvery; ranking early rows is not supported, \
                     remove one of the two"
                )),
                Some(w) if w.allowed_lateness.is_some() => errors.push(format!(
                    "{at}.perWindow: the window step before it has allowedLateness; ranking a window's late updates \
                     is not supported, remove one of the two"
                )),
                Some(_) => {}
            }
        }
        if self.ranking != RankFunction::RowNumber && !self.per_window && self.window.is_none() {
            errors.push(format!(
                "{at}.ranking: {:?} needs perWindow: true or a window; a ranking updated per record gives ties \
                 ranks of their own (RowNumber)",
                self.ranking
            ));
        }
        if !(1..=1000).contains(&self.limit) {
            errors.push(format!("{at}.limit: expected 1 to 1000, got {}", self.limit));
        }
        if self.order_by.is_empty() {
            errors.push(format!("{at}.orderBy: required, got an empty name"));
        }
        if self.rank_field.as_deref().is_some_and(str::is_empty) {
            errors.push(format!("{at}.rankField: expected a field name, got an empty one"));
        }
        errors
    }

    /// What ranking records per window adds: `event_time`, whether the
    /// pipeline has one; `aggregated`, whether an aggregate or window step
    /// came before (whose rows carry no event time).
    pub(super) fn window_problems(&self, at: &str, event_time: bool, aggregated: bool) -> Vec<String> {
        let Some(w) = &self.window else { return Vec::new() };
        let mut errors = Vec::new();
        if self.per_window {
            errors.push(format!(
                "{at}.window: not with perWindow, which ranks the rows of a window step; window ranks the records \
                 themselves: set one of the two"
            ));
        }
        if !event_time {
            errors.push(format!("{at}.window: needs spec.pipeline.eventTime (which field holds the event time)"));
        }
        if aggregated {
            errors.push(format!(
                "{at}.window: must come before any aggregate or window step (event time is a field of the source's \
                 records)"
            ));
        }
        if w.size.millis() <= 0 {
            errors.push(format!("{at}.window.size: expected at least 1ms, got {}", w.size));
        } else if let Some(slide) = w.slide.filter(|s| s.millis() <= 0 || s.millis() > w.size.millis()) {
            errors.push(format!("{at}.window.slide: expected from 1ms up to size ({}), got {slide}", w.size));
        }
        errors
    }

    /// The field the rank is written to.
    pub fn rank_field(&self) -> &str {
        self.rank_field.as_deref().unwrap_or("rank")
    }
}
