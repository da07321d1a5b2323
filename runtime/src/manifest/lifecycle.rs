//! How a running job is upgraded, savepointed and deleted:
//! `spec.upgradeMode`, `spec.savepoints`, `spec.deletionPolicy`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum UpgradeMode {
    /// Stop the pods and resume from the newest completed checkpoint.
    #[default]
    LastState,
    /// Take a savepoint, stop, and resume from it.
    Savepoint,
    /// Stop and start again with empty state.
    Stateless,
}

/// Savepoints under the operator, as the Flink Kubernetes Operator keeps
/// them: triggered in the background, retried with backoff, listed in
/// `status.savepoints` and disposed of past the retention.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavepointOptions {
    /// Savepoints kept in `status.savepoints`; older ones are deleted from
    /// storage. `0` keeps every savepoint.
    #[serde(default = "default_savepoint_history")]
    pub max_history: u32,
    /// Savepoints older than this are deleted from storage (the newest one
    /// is always kept). Unset: no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// A savepoint not completed within this time counts as failed.
    #[serde(default = "default_savepoint_timeout")]
    pub timeout: HumanDuration,
    /// What a savepoint-mode upgrade or suspension does when the running
    /// job's savepoint fails: `Wait` (the job keeps running under its
    /// current spec, the savepoint is retried with backoff, status says
    /// why) or `LastState` (go on from the newest completed checkpoint).
    #[serde(default)]
    pub on_failure: SavepointFallback,
    /// What a savepoint-mode upgrade or suspension does when the job is not
    /// running (failed, or its pods failing), so that no savepoint can be
    /// taken: `LastState` (go on from the newest completed checkpoint, with
    /// a Warning event; Flink's last-state fallback) or `Wait` (until the
    /// job runs again).
    #[serde(default = "last_state")]
    pub when_not_running: SavepointFallback,
}

impl Default for SavepointOptions {
    fn default() -> Self {
        SavepointOptions {
            max_history: default_savepoint_history(),
            max_age: None,
            timeout: default_savepoint_timeout(),
            on_failure: SavepointFallback::default(),
            when_not_running: last_state(),
        }
    }
}

fn default_savepoint_history() -> u32 {
    10
}

fn default_savepoint_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn last_state() -> SavepointFallback {
    SavepointFallback::LastState
}

/// What happens instead of a savepoint that cannot be had.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SavepointFallback {
    /// Keep the job as it is and try again (with backoff).
    #[default]
    Wait,
    /// Upgrade or suspend from the newest completed checkpoint instead.
    LastState,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep checkpoints and savepoints.
    #[default]
    Retain,
    /// Take a savepoint first (best effort), then keep everything.
    Savepoint,
    /// Delete the job's checkpoints and savepoints.
    Purge,
}
