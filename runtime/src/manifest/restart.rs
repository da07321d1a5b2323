//! `spec.restartStrategy`: how often and how soon a failed job is restarted.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Flink's restart strategies; exactly one field is set (none set: the
/// default, `exponentialDelay` with Flink's defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.none) ? 1 : 0) + (has(self.fixedDelay) ? 1 : 0) + (has(self.failureRate) ? 1 : 0) + (has(self.exponentialDelay) ? 1 : 0) <= 1",
    "message": "at most one of none, fixedDelay, failureRate, exponentialDelay must be set in spec.restartStrategy"
}]))]
pub struct RestartStrategy {
    /// Never restart: the first failure fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoRestart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<FixedDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<ExponentialDelay>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoRestart {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixedDelay {
    /// Restarts allowed before the job fails.
    #[schemars(range(min = 0))]
    pub attempts: u32,
    #[serde(default = "default_restart_delay")]
    pub delay: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureRate {
    /// The number of failures within `interval` that fails the job, as in
    /// Flink: the job fails on the N-th failure inside any such interval.
    #[schemars(range(min = 1))]
    pub max_failures_per_interval: u32,
    #[serde(default = "default_failure_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_restart_delay")]
    pub delay: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExponentialDelay {
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0))]
    pub multiplier: f64,
    /// A job that ran this long without failing starts again from `initialBackoff`.
    #[serde(default = "default_reset_threshold")]
    pub reset_backoff_threshold: HumanDuration,
    /// Each delay is varied by up to this fraction, so jobs do not restart in lockstep.
    #[serde(default = "default_jitter")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: f64,
}

impl Default for ExponentialDelay {
    fn default() -> Self {
        ExponentialDelay {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            multiplier: default_multiplier(),
            reset_backoff_threshold: default_reset_threshold(),
            jitter: default_jitter(),
        }
    }
}

fn default_restart_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_failure_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_multiplier() -> f64 {
    1.5
}
fn default_reset_threshold() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_jitter() -> f64 {
    0.1
}

/// The strategy a [`RestartStrategy`] sets.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategyKind {
    None,
    FixedDelay(FixedDelay),
    FailureRate(FailureRate),
    ExponentialDelay(ExponentialDelay),
}

impl RestartStrategy {
    pub fn kind(&self) -> Result<RestartStrategyKind, String> {
        match (&self.none, &self.fixed_delay, &self.failure_rate, &self.exponential_delay) {
            (None, None, None, None) => Ok(RestartStrategyKind::ExponentialDelay(ExponentialDelay::default())),
            (Some(_), None, None, None) => Ok(RestartStrategyKind::None),
            (None, Some(f), None, None) => Ok(RestartStrategyKind::FixedDelay(f.clone())),
            (None, None, Some(f), None) => Ok(RestartStrategyKind::FailureRate(f.clone())),
            (None, None, None, Some(e)) => Ok(RestartStrategyKind::ExponentialDelay(e.clone())),
            _ => Err("expected at most one of none, fixedDelay, failureRate, exponentialDelay".into()),
        }
    }
}
