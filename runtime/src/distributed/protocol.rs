//! What the coordinator and workers say to each other, and how it is framed.
//!
//! Frames are length-delimited (tokio-util's codec) and hold MessagePack
//! (rmp-serde): compact, and self-describing enough for JSON rows, which
//! postcard is not. Both are well-kept crates; a hand-written format would
//! buy nothing at a message rate of a few per checkpoint and batch.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::task::{Control, Event};

pub type Connection = Framed<TcpStream, LengthDelimitedCodec>;

/// Frames up to 256 MiB: a batch of large rows must fit.
pub fn framed(stream: TcpStream) -> Connection {
    let _ = stream.set_nodelay(true);
    Framed::new(stream, LengthDelimitedCodec::builder().max_frame_length(256 << 20).new_codec())
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ProtocolError> {
    Ok(Bytes::from(rmp_serde::to_vec(msg)?))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

pub async fn send<T: Serialize>(conn: &mut Connection, msg: &T) -> Result<(), ProtocolError> {
    conn.send(encode(msg)?).await?;
    Ok(())
}

/// The next message; `Ok(None)` when the peer closed the connection.
pub async fn recv<T: DeserializeOwned>(conn: &mut Connection) -> Result<Option<T>, ProtocolError> {
    match conn.next().await {
        Some(frame) => Ok(Some(decode(&frame?)?)),
        None => Ok(None),
    }
}

/// A subtask's address in the job graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    pub stage: usize,
    pub subtask: u32,
}

/// Which worker runs which subtask, and where workers take shuffle data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Placement {
    pub assignments: Vec<(TaskKey, usize)>,
    /// Data-plane address of each worker, by worker index.
    pub data_addrs: Vec<SocketAddr>,
}

impl Placement {
    pub fn worker_of(&self, key: TaskKey) -> Option<usize> {
        self.assignments.iter().find(|(k, _)| *k == key).map(|(_, w)| *w)
    }
}

/// Progress counters a worker reports with each heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerCounters {
    pub attempt: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub bad_records: u64,
    /// When a source of the current attempt emitted its first batch (ms since epoch).
    pub first_record_at_ms: Option<u64>,
    /// Per stage, over this worker's subtasks of the attempt.
    pub stages: Vec<crate::metrics::StageSample>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToCoordinator {
    Register {
        name: String,
        data_addr: SocketAddr,
    },
    Heartbeat(WorkerCounters),
    /// Every subtask of the attempt is built and opened.
    Opened {
        attempt: u64,
    },
    OpenFailed {
        attempt: u64,
        reason: String,
    },
    Event {
        attempt: u64,
        event: Event,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Build and open this worker's subtasks of the job in `manifest`,
    /// restoring checkpoint `restore` of it.
    Deploy {
        attempt: u64,
        manifest: String,
        restore: Option<u64>,
        placement: Placement,
        worker_index: usize,
    },
    /// Run what `Deploy` opened.
    Start {
        attempt: u64,
    },
    Control {
        attempt: u64,
        task: TaskKey,
        control: Control,
    },
    /// Stop and drop the attempt's subtasks.
    Cancel {
        attempt: u64,
    },
    /// The job is finished: exit.
    Shutdown,
}

/// First frame on a data connection: which shuffle channel it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelKey {
    pub attempt: u64,
    pub edge: usize,
    pub upstream: u32,
    pub downstream: u32,
}
