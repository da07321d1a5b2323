//! The data plane: shuffle channels between subtasks on different workers.
//!
//! Each channel (upstream subtask -> downstream subtask of one shuffle) is
//! its own TCP connection with credit-based flow control: the receiving
//! side grants one credit per free slot in the bounded queue in front of
//! its subtask, and the sender sends a batch only against a credit. A slow
//! consumer so stops its producers without any unbounded buffer; on
//! loopback, one connection per channel costs less than multiplexing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::protocol::{self, ChannelKey, Connection, DataHello, JobToken, ProtocolError};
use super::tls::{self, JobTls};
use crate::task::Message;

enum Slot {
    /// A subtask waits for the connection of this channel.
    Waiting(oneshot::Sender<Connection>),
    /// The connection came first.
    Arrived(Connection),
}

/// A worker's listener for incoming shuffle channels.
pub struct DataPlane {
    addr: SocketAddr,
    token: JobToken,
    /// Mutual TLS with the job's other workers, when the job has it.
    tls: Option<Arc<JobTls>>,
    slots: Mutex<HashMap<ChannelKey, Slot>>,
}

impl DataPlane {
    /// Listens on `addr`; connections that do not present `token` are dropped.
    pub async fn bind(addr: SocketAddr, token: JobToken, tls: Option<Arc<JobTls>>) -> std::io::Result<Arc<DataPlane>> {
        let listener = TcpListener::bind(addr).await?;
        let plane = Arc::new(DataPlane { addr: listener.local_addr()?, token, tls, slots: Mutex::default() });
        let accepting = plane.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let plane = accepting.clone();
                        tokio::spawn(async move {
                            match plane.accept(stream).await {
                                Ok(true) => {}
                                Ok(false) => warn!("refused a data connection without the job's token"),
                                Err(e) => debug!("dropping a data connection: {e}"),
                            }
                        });
                    }
                    Err(e) => warn!("data plane cannot accept: {e}"),
                }
            }
        });
        Ok(plane)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token this worker presents on its own outbound channels.
    pub fn token(&self) -> &JobToken {
        &self.token
    }

    /// The job's TLS identity, which outbound channels use too.
    pub fn tls(&self) -> Option<Arc<JobTls>> {
        self.tls.clone()
    }

    /// Takes a connection's channel; `false` if it was refused.
    async fn accept(&self, stream: TcpStream) -> Result<bool, ProtocolError> {
        let mut conn = protocol::framed(tls::server(self.tls.as_deref(), stream).await?);
        let Some(hello) = protocol::recv::<DataHello>(&mut conn).await? else { return Ok(true) };
        if !self.token.admits(hello.token.as_deref()) {
            return Ok(false);
        }
        let key = hello.channel;
        let Ok(mut slots) = self.slots.lock() else { return Ok(true) };
        match slots.remove(&key) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(conn);
            }
            _ => {
                slots.insert(key, Slot::Arrived(conn));
            }
        }
        Ok(true)
    }

    /// The connection for `key`, whenever it arrives.
    fn expect(&self, key: ChannelKey) -> oneshot::Receiver<Connection> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut slots) = self.slots.lock() {
            match slots.remove(&key) {
                Some(Slot::Arrived(conn)) => {
                    let _ = tx.send(conn);
                }
                _ => {
                    slots.insert(key, Slot::Waiting(tx));
                }
            }
        }
        rx
    }

    /// Forgets channels of every attempt but the one of `epoch`.
    pub fn forget_all_but(&self, epoch: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|k, _| k.epoch == epoch);
        }
    }
}

/// Called when a channel breaks; the worker turns it into a failure.
pub type OnBroken = Arc<dyn Fn(String) + Send + Sync>;

/// Sends what a local upstream subtask puts into `rx` to a remote subtask.
pub fn spawn_outbound<T: Serialize + Send + 'static>(
    tasks: &mut JoinSet<()>,
    token: &JobToken,
    tls: Option<Arc<JobTls>>,
    key: ChannelKey,
    to: SocketAddr,
    mut rx: mpsc::Receiver<Message<T>>,
    on_broken: OnBroken,
) {
    let hello = DataHello { token: token.presented(), channel: key };
    tasks.spawn(async move {
        let result: Result<(), ProtocolError> = async {
            let mut conn = connect(to, tls.as_deref()).await?;
            protocol::send(&mut conn, &hello).await?;
            let mut credits: u64 = 0;
            loop {
                if credits == 0 {
                    match protocol::recv::<u32>(&mut conn).await? {
                        Some(n) => credits += n as u64,
                        None => return Err(ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into())),
                    }
                    continue;
                }
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { return Ok(()) };
                        let end = matches!(msg, Message::End);
                        conn.send(protocol::encode(&msg)?).await?;
                        credits -= 1;
                        if end {
                            // Wait for the peer to close, so the End is not lost in flight.
                            while conn.next().await.is_some() {}
                            return Ok(());
                        }
                    }
                    grant = conn.next() => match grant {
                        Some(frame) => credits += protocol::decode::<u32>(&frame?)? as u64,
                        None => return Err(ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into())),
                    },
                }
            }
        }
        .await;
        if let Err(e) = result {
            on_broken(format!("shuffle channel {key:?} to {to} broke: {e}"));
        }
    });
}

/// Feeds a local downstream subtask from a remote upstream subtask.
pub fn spawn_inbound<T: DeserializeOwned + Send + 'static>(
    tasks: &mut JoinSet<()>,
    plane: &DataPlane,
    key: ChannelKey,
    tx: mpsc::Sender<Message<T>>,
    on_broken: OnBroken,
) {
    let arrival = plane.expect(key);
    tasks.spawn(async move {
        let result: Result<(), ProtocolError> = async {
            let Ok(mut conn) = arrival.await else { return Ok(()) };
            loop {
                // One credit per free slot: the sender can never overrun us.
                let Ok(permit) = tx.reserve().await else { return Ok(()) };
                protocol::send(&mut conn, &1u32).await?;
                let Some(frame) = conn.next().await else {
                    return Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                };
                let msg: Message<T> = protocol::decode(&frame?)?;
                let end = matches!(msg, Message::End);
                permit.send(msg);
                if end {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            on_broken(format!("shuffle channel {key:?} broke: {e}"));
        }
    });
}

async fn connect(to: SocketAddr, tls: Option<&JobTls>) -> Result<Connection, ProtocolError> {
    let mut delay = Duration::from_millis(10);
    let mut last = None;
    for _ in 0..40 {
        match TcpStream::connect(to).await {
            // A refused handshake is not retried: the peer is not of this job.
            Ok(s) => return Ok(protocol::framed(tls::client(tls, s).await?)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    Err(ProtocolError::Io(last.unwrap_or_else(|| std::io::ErrorKind::TimedOut.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hello(plane: &DataPlane, token: Option<&str>, channel: ChannelKey) -> Connection {
        let mut conn = protocol::framed(TcpStream::connect(plane.addr()).await.unwrap());
        protocol::send(&mut conn, &DataHello { token: token.map(String::from), channel }).await.unwrap();
        conn
    }

    #[tokio::test]
    async fn a_shuffle_connection_without_the_job_token_is_dropped_before_it_reaches_a_subtask() {
        let token = JobToken::new(Some("job-secret".into()));
        let plane = DataPlane::bind("127.0.0.1:0".parse().unwrap(), token, None).await.unwrap();
        let key = ChannelKey { epoch: 1, edge: 0, upstream: 0, downstream: 0 };
        let mut arrival = plane.expect(key);

        let mut wrong = hello(&plane, Some("guess"), key).await;
        assert!(wrong.next().await.is_none(), "the plane closes a connection with a wrong token");
        let mut none = hello(&plane, None, key).await;
        assert!(none.next().await.is_none(), "and one without a token");
        assert!(arrival.try_recv().is_err(), "no subtask got either");

        let _right = hello(&plane, Some("job-secret"), key).await;
        let conn = tokio::time::timeout(Duration::from_secs(5), arrival).await;
        assert!(matches!(conn, Ok(Ok(_))), "the connection with the token reaches the waiting subtask");
    }
}
