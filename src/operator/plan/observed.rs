//! What a reconcile observed of the job's pods and its coordinator, as
//! plain values the plan is decided from.

use super::Role;
use crate::crd::CheckpointRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A job pod as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: String,
    pub role: Role,
    pub phase: PodPhase,
    /// Its `weir.dev/spec-digest` label.
    pub digest: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The terminated container's message (see [`Failure::message`]).
    pub message: Option<String>,
    pub deleting: bool,
    /// Since when its node has not been Ready (ms since the epoch).
    pub node_not_ready_since_ms: Option<u64>,
    /// Why it is not running yet: its container's waiting reason and
    /// message (ImagePullBackOff, CreateContainerConfigError), or why it
    /// is not scheduled (Unschedulable).
    pub waiting: Option<String>,
}

/// What the coordinator's API said, if it answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinatorView {
    pub state: String,
    pub restored_from: Option<u64>,
    pub latest: Option<CheckpointRef>,
    pub history: Vec<CheckpointRef>,
    pub failed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub pods: Vec<PodView>,
    pub coordinator: Option<CoordinatorView>,
    /// What the coordinator says of `status.savepointInfo.trigger`, when
    /// there is one and the coordinator answered.
    pub trigger: Option<TriggerView>,
    /// The pod disposing of old savepoints, if it exists.
    pub disposal: Option<ChoreView>,
    pub now_ms: u64,
}

/// A savepoint trigger as `GET /v1/savepoint-triggers/<id>` tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerView {
    InProgress,
    Completed {
        path: String,
        checkpoint: u64,
    },
    Failed(String),
    /// The coordinator does not know the id (it restarted).
    Unknown(String),
}

/// A short-lived pod of the job (the savepoint disposal) as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoreView {
    pub phase: PodPhase,
    pub message: Option<String>,
}
