//! A job across processes: one coordinator and N workers.
//!
//! # Layout
//! - [`protocol`]: messages between coordinator and workers, and framing.
//! - [`network`]: shuffle channels between workers, with credit-based flow control.
//! - [`worker`]: the worker process: runs the subtasks it is assigned.
//! - [`coordinator`]: the coordinator process: scheduling, checkpoints, recovery.
//! - [`http`]: the coordinator's HTTP API and Prometheus metrics.
//! - [`health`]: a worker's liveness and readiness probes.
//! - [`tls`]: mutual TLS between a job's processes.
//! - [`triggers`]: savepoints taken in the background, polled by id.

pub mod coordinator;
pub mod health;
pub mod http;
pub mod network;
pub mod protocol;
pub mod tls;
pub mod triggers;
pub mod worker;
