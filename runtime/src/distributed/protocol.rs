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
#[cfg(test)]
use tokio::net::TcpStream;

use super::tls::Io;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::job::fence::Fence;
use crate::task::error::TaskFailure;
use crate::task::{Control, Event};

/// A framed connection over plain TCP or TLS (`tls`).
pub type Connection = Framed<Box<dyn Io>, LengthDelimitedCodec>;

/// Frames up to 256 MiB: a batch of large rows must fit.
pub fn framed(stream: impl Io + 'static) -> Connection {
    let stream: Box<dyn Io> = Box::new(stream);
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
    #[error("the peer took no message for {0:?}")]
    Stalled(std::time::Duration),
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

/// Like [`send`], but a peer that does not take the message within
/// `limit` (frozen, or cut off without a reset) is an error, not a wait
/// that holds the caller for as long as TCP retries.
pub async fn send_within<T: Serialize>(
    conn: &mut Connection,
    msg: &T,
    limit: std::time::Duration,
) -> Result<(), ProtocolError> {
    tokio::time::timeout(limit, send(conn, msg)).await.map_err(|_| ProtocolError::Stalled(limit))?
}

/// The next message; `Ok(None)` when the peer closed the connection.
pub async fn recv<T: DeserializeOwned>(conn: &mut Connection) -> Result<Option<T>, ProtocolError> {
    match conn.next().await {
        Some(frame) => Ok(Some(decode(&frame?)?)),
        None => Ok(None),
    }
}

/// The per-job secret that every worker registration, every shuffle
/// connection and every mutating API call presents. Without one (`weir run`,
/// local tries) everything is admitted. It authenticates peers; it does not
/// encrypt traffic.
#[derive(Clone, Default)]
pub struct JobToken(Option<std::sync::Arc<str>>);

impl JobToken {
    /// An empty or missing value means no token.
    pub fn new(token: Option<String>) -> JobToken {
        JobToken(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).map(Into::into))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// What this side presents to its peers.
    pub fn presented(&self) -> Option<String> {
        self.0.as_deref().map(String::from)
    }

    /// Whether `presented` may pass. Compares in constant time, so the time
    /// a refusal takes tells nothing about how much of a guess was right.
    pub fn admits(&self, presented: Option<&str>) -> bool {
        let Some(expected) = self.0.as_deref() else { return true };
        let Some(given) = presented else { return false };
        let (a, b) = (expected.as_bytes(), given.as_bytes());
        let mut diff = (a.len() != b.len()) as u8;
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(!x);
        }
        diff == 0
    }
}

impl std::fmt::Debug for JobToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() { "JobToken(<redacted>)" } else { "JobToken(none)" })
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
    /// The epoch of the attempt counted (0: none).
    pub epoch: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub bad_records: u64,
    /// Sink operations retried after transient errors.
    pub sink_retries: u64,
    /// Transient source errors that the source's client retried.
    pub source_errors: u64,
    /// Records dropped because event time had passed every window they belong to.
    pub late_records: u64,
    /// When a source of the current attempt emitted its first batch (ms since epoch).
    pub first_record_at_ms: Option<u64>,
    /// Per stage, over this worker's subtasks of the attempt.
    pub stages: Vec<crate::metrics::StageSample>,
}

/// Messages name an attempt by its epoch, a random fencing token (see
/// `job::fence`): a message of any other epoch is ignored.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToCoordinator {
    Register {
        name: String,
        data_addr: SocketAddr,
        /// The job token, when the job has one.
        #[serde(default)]
        token: Option<String>,
    },
    /// `sent_at_us` is the worker's own clock (microseconds since it
    /// connected); the coordinator echoes it back.
    Heartbeat {
        sent_at_us: u64,
        counters: WorkerCounters,
    },
    /// Every subtask of the attempt is built and opened.
    Opened {
        epoch: u64,
    },
    OpenFailed {
        epoch: u64,
        failure: TaskFailure,
        /// The checkpoint to restore, when loading it showed it is damaged.
        #[serde(default)]
        damaged: Option<u64>,
    },
    Event {
        epoch: u64,
        event: Event,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Build and open this worker's subtasks of the job in `manifest`,
    /// restoring checkpoint `restore` of it.
    Deploy {
        fence: Fence,
        manifest: String,
        restore: Option<u64>,
        /// Where `restore` lives when it is not in the job's own directory
        /// (the initial savepoint).
        #[serde(default)]
        restore_from: Option<String>,
        placement: Placement,
        worker_index: usize,
        /// A worker that hears nothing from the coordinator for this long
        /// drops its subtasks on its own: it is fenced, not trusted.
        heartbeat_timeout_ms: u64,
    },
    /// Run what `Deploy` opened.
    Start {
        epoch: u64,
    },
    Control {
        epoch: u64,
        task: TaskKey,
        control: Control,
    },
    /// Stop and drop the attempt's subtasks.
    Cancel {
        epoch: u64,
    },
    /// The coordinator got the heartbeat sent at `sent_at_us` (the worker's
    /// clock). The worker holds a lease from the newest echoed send time:
    /// an echo that waited in a buffer while the worker was frozen does not
    /// renew it, so a frozen worker cannot mistake old news for a live
    /// coordinator.
    HeartbeatAck {
        sent_at_us: u64,
    },
    /// The job is finished: exit.
    Shutdown,
    /// The registration was refused (a wrong or missing job token): exit.
    Refused {
        reason: String,
    },
}

/// First frame on a data connection: the job token and the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataHello {
    pub token: Option<String>,
    pub channel: ChannelKey,
}

/// What the receiving side of a shuffle channel tells its sender: more
/// credits (one per free queue slot), and how many records its subtask has
/// taken off the queue so far and allows in flight (see `task::inflight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub credits: u32,
    pub taken: u64,
    pub limit: u64,
}

/// Which shuffle channel a data connection carries; the epoch keeps a
/// stale attempt's channel from ever being taken for the live one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelKey {
    pub epoch: u64,
    pub edge: usize,
    pub upstream: u32,
    pub downstream: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_send_to_a_peer_that_reads_nothing_gives_up_at_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = framed(TcpStream::connect(addr).await.unwrap());
        // Accepted and never read, like a frozen coordinator.
        let (_unread, _) = listener.accept().await.unwrap();
        // More than the socket buffers of both ends hold.
        let big = vec![7u8; 64 << 20];
        let limit = std::time::Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        match send_within(&mut conn, &serde_bytes::ByteBuf::from(big), limit).await {
            Err(ProtocolError::Stalled(d)) => assert_eq!(d, limit),
            other => panic!("expected a stall, got {other:?}"),
        }
        assert_eq!(started.elapsed(), limit);
    }

    #[test]
    fn a_job_token_admits_only_the_same_token() {
        let token = JobToken::new(Some("s3cret-token".into()));
        assert!(token.admits(Some("s3cret-token")));
        for wrong in [None, Some(""), Some("s3cret-toke"), Some("s3cret-token2"), Some("S3cret-token")] {
            assert!(!token.admits(wrong), "{wrong:?}");
        }
        assert!(JobToken::new(None).admits(None), "no token: everything is admitted");
        assert!(!JobToken::new(Some("  ".into())).is_set(), "a blank token is no token");
        assert_eq!(format!("{token:?}"), "JobToken(<redacted>)");
    }
}
