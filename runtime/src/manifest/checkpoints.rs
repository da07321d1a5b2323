//! `spec.checkpoints`: when and where checkpoints are taken, with Flink's
//! option names and defaults.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// Checkpointing, with Apache Flink's option names and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointOptions {
    /// Time between checkpoint triggers, at least `10ms` (Flink's minimum).
    /// Sinks commit only when a checkpoint completes, so this is also how
    /// late output becomes visible.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    #[serde(default)]
    pub mode: CheckpointMode,
    /// A checkpoint not completed within this time is aborted.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Least time between the end of one checkpoint and the next trigger.
    #[serde(default = "default_min_pause")]
    pub min_pause: HumanDuration,
    /// Checkpoints that may be in progress at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated before the job fails.
    #[serde(default)]
    pub tolerable_failures: u32,
    /// Completed checkpoints kept in storage. Two (Flink keeps one) so that a
    /// damaged newest checkpoint can fall back to the one before.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1))]
    pub retained: u32,
    /// Where checkpoints go: `file://PATH`, `s3://BUCKET/PREFIX` or
    /// `hdfs://NAMENODE/PATH`. Checkpoints of a job live under
    /// `<storage>/<namespace>/<name>/`.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// What a restore does when the newest checkpoint is damaged and it falls
    /// back to an older one while a sink already committed output of the
    /// newer one: `Refuse` (default: the job fails, naming both checkpoints;
    /// readers may have seen that output, so it is never retracted behind
    /// their back) or `Retract` (that output is deleted and written again).
    #[serde(default)]
    pub on_fallback_past_committed_output: FallbackPolicy,
    /// Records queued in front of each subtask are bounded to about this
    /// much of its own processing time, measured as it runs (buffer
    /// debloating, as Flink's `buffer-debloat.target`), so that under
    /// backpressure a barrier waits about this long per shuffle instead of
    /// behind whole queues. `0s` bounds queues by count only (16 batches
    /// per channel).
    // Left out when it is the default, so that the operator's digest of a
    // spec written before this field existed does not change (a changed
    // digest restarts the job).
    #[serde(default = "default_in_flight_target", skip_serializing_if = "is_default_in_flight_target")]
    pub in_flight_target: HumanDuration,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum FallbackPolicy {
    /// Fail the job rather than retract committed output.
    #[default]
    Refuse,
    /// Delete output committed after the restored checkpoint; it is written again.
    Retract,
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_min_pause() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
pub(super) fn default_one() -> u32 {
    1
}
fn default_in_flight_target() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn is_default_in_flight_target(t: &HumanDuration) -> bool {
    *t == default_in_flight_target()
}
fn default_retained() -> u32 {
    2
}
fn default_storage() -> String {
    "file://./weir-data".to_string()
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            interval: default_interval(),
            mode: CheckpointMode::default(),
            timeout: default_timeout(),
            min_pause: default_min_pause(),
            max_concurrent: 1,
            tolerable_failures: 0,
            retained: default_retained(),
            storage: default_storage(),
            on_fallback_past_committed_output: FallbackPolicy::default(),
            in_flight_target: default_in_flight_target(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Barriers are aligned: every record affects state and output once.
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned: nothing is lost, records after a failure
    /// may be counted twice.
    AtLeastOnce,
}
