//! Operators that run inside a task's chain.
//!
//! # Layout
//! - [`stateless`]: map, filter, flat_map.
//! - [`keyed_process`]: a keyed process function with per-key state.
//! - [`event_time`]: the same with event-time timers (windows are built on it).

pub mod event_time;
pub mod keyed_process;
pub mod stateless;

pub use event_time::{EventTimeFunction, KeyedEventTime, Timers};
pub use keyed_process::{KeyedProcess, KeyedProcessFunction};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::KeyedStateBackend;
use crate::task::collector::OperatorSnapshot;
use crate::task::{TaskContext, TaskError};

/// This subtask's key groups of operator `uid`'s state from the restored
/// checkpoint, or empty state on a fresh start.
pub(crate) fn restore_keyed<K, S>(uid: &str, ctx: &TaskContext) -> Result<KeyedStateBackend<K, S>, TaskError>
where
    K: std::hash::Hash + Eq + Clone + Serialize + DeserializeOwned,
    S: Default + Clone + Serialize + DeserializeOwned,
{
    let mut state = KeyedStateBackend::new(ctx.key_groups, ctx.max_parallelism);
    if let Some(restored) = &ctx.restored {
        let blobs = restored.take_keyed(uid, ctx.key_groups);
        state.restore(blobs.iter().map(|(group, bytes)| (*group, bytes.as_slice())))?;
    }
    Ok(state)
}

/// Keyed state as of a barrier (frozen, not copied), encoded after the
/// task moved on. The task may read what the encoder reads: both `Sync`.
pub(crate) fn snapshot_keyed<K, S>(uid: &str, state: &mut KeyedStateBackend<K, S>) -> OperatorSnapshot
where
    K: std::hash::Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let copy = state.snapshot();
    OperatorSnapshot {
        uid: uid.to_string(),
        keyed: Some(Box::new(move || copy.encode())),
        list: Vec::new(),
        union: Vec::new(),
    }
}
