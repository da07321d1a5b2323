//! Checkpoints: when to take them, and where they are kept.
//!
//! # Layout
//! - [`coordinator`]: the trigger/ack/complete/abort state machine (pure).
//! - [`store`]: state files, `_metadata`, restore selection, retention.

pub mod coordinator;
pub mod store;

pub use coordinator::{CoordinatorOptions, PendingCheckpoints};
pub use store::{CheckpointError, CheckpointMetadata, CheckpointStore, RestoredCheckpoint};
