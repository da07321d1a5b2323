//! Operators that run inside a task's chain.
//!
//! # Layout
//! - [`stateless`]: map, filter, flat_map.
//! - [`keyed_process`]: a keyed process function with per-key state.

pub mod keyed_process;
pub mod stateless;

pub use keyed_process::{KeyedProcess, KeyedProcessFunction};
