//! Checkpoints: when to take them, and where they are kept.
//!
//! # Layout
//! - [`coordinator`]: the trigger/ack/complete/abort state machine (pure).
//! - [`metadata`]: the `_metadata` schema and the names of checkpoint
//!   directories and state files.
//! - [`store`]: one job's checkpoint directory and its I/O (state files,
//!   atomic `_metadata`, listing).
//! - [`ledger`]: the append-only log of attempts and committed
//!   checkpoints that fences a superseded attempt.
//! - [`restore`]: verifying a checkpoint against `_metadata` and choosing
//!   the newest intact one to restore.
//! - [`retention`]: retention, pins, savepoint copies and purge.
//! - [`error`]: what can go wrong, and which failure kind each is.

pub mod coordinator;
pub mod error;
pub mod ledger;
pub mod metadata;
pub mod restore;
pub mod retention;
pub mod store;
#[cfg(test)]
mod testing;

pub use coordinator::{CoordinatorOptions, PendingCheckpoints};
pub use error::CheckpointError;
pub use ledger::{Committed, Ledger, LedgerSlot};
pub use metadata::{CheckpointMetadata, StateFileMetadata};
pub use restore::{Keep, Load, RestoredCheckpoint};
pub use retention::Pin;
pub use store::CheckpointStore;
