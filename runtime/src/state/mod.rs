//! State: keyed state partitioned by key group, operator list state, and
//! the on-disk form of one operator subtask's snapshot.
//!
//! # Layout
//! - [`keyed`]: per-key state in per-key-group maps, snapshotted by copy.
//! - [`primitives`]: Flink-style value, list and map state for a key.
//! - [`snapshot`]: the encoded form of one operator subtask's state.

pub mod keyed;
pub mod primitives;
pub mod snapshot;

pub use keyed::KeyedStateBackend;
pub use primitives::{ListState, MapState, ValueState};
pub use snapshot::OperatorSubtaskState;
