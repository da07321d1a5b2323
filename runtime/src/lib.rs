//! The checkpointing runtime of Weir.
//!
//! # Layout
//! - [`manifest`]: the `StreamJob` manifest types, shared with the operator.
//! - [`dataflow`]: the typed job API (sources, map/filter, key_by, process,
//!   sinks) and the job graph it builds.
//! - [`task`]: one subtask's event loop, barrier alignment, the shuffle.
//! - [`operators`]: chained operators, including keyed process functions.
//! - [`state`]: keyed state by key group, operator state, snapshots.
//! - [`checkpoint`]: the coordinator's state machine and checkpoint storage.
//! - [`storage`]: storage URIs to OpenDAL operators.
//! - [`connectors`]: sources and sinks (two-phase commit).
//! - [`pipeline`]: declared pipelines (`spec.pipeline`) built on `dataflow`.
//! - [`programs`]: typed jobs compiled in, chosen by `spec.program.entry`.
//! - [`record`]: the JSON rows of declared pipelines and bad records.
//! - [`job`]: running a job in one process.
//! - [`verify`]: auditing the output of the generated keyed count/sum job.
//! - [`keygroup`]: key hashing and key-group ranges.
//! - [`faults`]: fault injection points for crash tests.
//! - [`metrics`]: job counters.

pub mod checkpoint;
pub mod connectors;
pub mod dataflow;
pub mod distributed;
pub mod faults;
pub mod job;
pub mod keygroup;
pub mod manifest;
pub mod metrics;
pub mod operators;
pub mod pipeline;
pub mod programs;
pub mod record;
pub mod state;
pub mod storage;
pub mod task;
pub mod verify;
