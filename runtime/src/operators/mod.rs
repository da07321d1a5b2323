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
