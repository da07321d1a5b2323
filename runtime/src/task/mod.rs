//! Subtasks: the event loops that move batches, barriers and control
//! messages, and the pieces they are built from.
//!
//! # Layout
//! - [`message`]: what flows on data channels and control channels.
//! - [`aligner`]: barrier alignment across several inputs.
//! - [`inflight`]: data channels bounded by records in flight, sized by
//!   the receiver's throughput (buffer debloating).
//! - [`watermarks`]: the event time of a task with several inputs.
//! - [`collector`]: the chained-operator interface and task snapshots.
//! - [`router`]: the key-by shuffle at the end of a task's chain.
//! - [`source_task`]: the loop of a source subtask.
//! - [`input_task`]: the loop of a subtask fed by channels.
//! - [`error`]: what can make a task fail.

pub mod aligner;
pub mod collector;
pub mod error;
pub mod inflight;
pub mod input_task;
pub mod message;
pub mod router;
pub mod runnable;
pub mod source_task;
pub mod watermarks;

pub use collector::{Collector, TaskContext, TaskSnapshot};
pub use error::TaskError;
pub use message::{Barrier, Control, Event, Message, TaskId, Watermark};
