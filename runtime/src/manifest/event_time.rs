//! `spec.pipeline.eventTime`: where a record's event time comes from,
//! how far out of order records may arrive, and what becomes of late ones.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Event time: where a record's timestamp is, and how far out of order
/// records may arrive (Flink's bounded-out-of-orderness watermarks).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTimeSpec {
    /// The field holding the event time: a number of milliseconds since the
    /// epoch, or an RFC 3339 string (`2026-12-04T10:00:00Z`). A record
    /// without it goes to the error policy.
    pub field: String,
    /// An SQL expression over the source's fields whose value is the event
    /// time (`to_timestamp_seconds(epoch_s)`, `to_timestamp(created, '%d/%m/%Y %H:%M')`),
    /// written to `field` before the watermark is taken from it, as Flink's
    /// computed column `ts AS …` with a `WATERMARK FOR ts`. Its type must
    /// be a timestamp or an integer (milliseconds since the epoch); it
    /// needs the source's schema. A record it fails on, or that it gives
    /// null, goes to the error policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// How late a record may come after a later one and still count: the
    /// watermark trails the greatest timestamp seen by this much.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_out_of_orderness: HumanDuration,
    /// A source subtask that reads nothing for this long stops holding back
    /// the watermark (an empty partition would otherwise stall every window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// What becomes of a record that comes after every window it belongs
    /// to has fired (or, for `deduplicate`, after its bound has passed).
    #[serde(default, skip_serializing_if = "LateRecords::is_drop")]
    pub late_records: LateRecords,
    /// Watermark alignment (Flink's `withWatermarkAlignment`): a split or
    /// source subtask whose watermark runs more than `maxDrift` ahead of
    /// the least watermark of all the job's sources stops reading until
    /// the others catch up, so a partition or source that is behind (a
    /// backlog, a slow start) does not make every window and join hold
    /// the others' records in state meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignmentSpec>,
}

/// Watermark alignment across every split and source subtask of the job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlignmentSpec {
    /// How far a split's or subtask's watermark may run ahead of the least
    /// one before it is held back.
    pub max_drift: HumanDuration,
    /// How often each source subtask tells the coordinator its watermark
    /// and hears the least (default 1s, as Flink's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_interval: Option<HumanDuration>,
}

impl AlignmentSpec {
    pub fn update_every(&self) -> std::time::Duration {
        self.update_interval.map_or(std::time::Duration::from_secs(1), |d| d.get())
    }
}

/// What becomes of late records (Flink: dropped, or a side output).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum LateRecords {
    /// Dropped and counted (`weir_attempt_late_records`).
    #[default]
    Drop,
    /// Handed to `spec.errorPolicy` as bad records, so that with
    /// `onBadRecord: deadLetter` each is written to the dead letters once,
    /// naming the step and the watermark it came behind.
    ErrorPolicy,
}

impl LateRecords {
    fn is_drop(&self) -> bool {
        *self == LateRecords::Drop
    }
}

fn is_zero(d: &HumanDuration) -> bool {
    d.get().is_zero()
}
