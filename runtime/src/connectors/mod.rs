//! Sources and sinks.
//!
//! # Layout
//! - [`two_phase`]: the two-phase-commit sink trait and the driver that
//!   ties its transactions to checkpoints.
//! - [`backoff`]: retrying sink operations with growing delays.
//! - [`file_sink`]: exactly-once JSON-lines part files in a local directory.
//! - [`object_sink`]: exactly-once JSON-lines, Parquet or Avro parts in object
//!   storage (any OpenDAL service), rolled by size and time.
//! - [`generator`]: a deterministic, replayable generator source.
//! - [`nexmark`]: the Nexmark benchmark's people, auctions and bids,
//!   generated as the generator's records are.
//! - [`file_source`]: JSON-lines, CSV, Parquet and Avro files, replayed by
//!   byte offset or record number.
//! - [`columnar_files`]: Parquet and Avro files read as records.
//! - [`csv_records`]: CSV records typed by the pipeline's schema.
//! - [`kafka`]: Kafka topics as a replayable source and a transactional sink.
//! - [`avro_values`]: Avro-encoded Kafka values, bare or Confluent-framed.
//! - [`postgres`]: PostgreSQL tables, by two-phase commit or upsert.
//! - [`redis`]: the latest record per key into Redis (idempotent).
//! - [`secret`]: connector passwords from the environment or a file.
//! - [`tls`]: verified TLS to databases.
//! - [`upsert`]: what idempotent sinks share.
//! - [`print`]: the stdout sink and a discarding sink for benchmarks.

pub mod avro_values;
pub mod backoff;
pub mod columnar_files;
pub mod csv_records;
pub mod file_sink;
pub mod file_source;
pub mod generator;
pub mod kafka;
pub mod nexmark;
pub mod object_sink;
pub mod postgres;
pub mod print;
pub mod redis;
pub mod secret;
pub mod tls;
pub mod two_phase;
pub mod upsert;

pub use file_sink::FileSink;
pub use generator::GeneratorSource;
pub use two_phase::{TwoPhaseCommitCollector, TwoPhaseCommitSink, TxnDriver};
