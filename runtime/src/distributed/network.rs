//! The data plane: shuffle channels between subtasks on different workers.
//!
//! Each channel (upstream subtask -> downstream subtask of one shuffle) is
//! its own TCP connection with credit-based flow control: the receiving
//! side holds a permit for every free slot in the bounded queue in front of
//! its subtask and grants the sender one credit per permit, all it can up
//! front and the rest as the subtask drains the queue; the sender sends a
//! batch only against a credit. A slow consumer so stops its producers
//! without any unbounded buffer, and a fast one never waits a round trip
//! per batch. Grants also carry the receiver's record allowance and how
//! many records its subtask took, which the sending side mirrors so that
//! in-flight data stays bounded by time across workers too
//! (`task::inflight`). The sender writes every batch it has credit for before it
//! flushes, so a burst costs one write, not one per batch. On loopback, one
//! connection per channel costs less than multiplexing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::protocol::{self, ChannelKey, Connection, DataHello, Grant, JobToken, ProtocolError};
use super::tls::{self, JobTls};
use crate::task::inflight::{DataReceiver, DataSender, InFlight};
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
    from: DataReceiver<T>,
    on_broken: OnBroken,
) {
    // The local queue is drained as fast as credit allows; the allowance
    // that bounds it is the remote subtask's, mirrored from its grants.
    let DataReceiver { mut rx, inflight } = from;
    let hello = DataHello { token: token.presented(), channel: key };
    tasks.spawn(async move {
        let result: Result<(), ProtocolError> = async {
            let mut conn = connect(to, tls.as_deref()).await?;
            protocol::send(&mut conn, &hello).await?;
            let mut credits: u64 = 0;
            loop {
                if credits == 0 {
                    credits = wait_for_credit(&mut conn, &inflight).await?;
                }
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(mut msg) = msg else { return Ok(()) };
                        // Everything already queued that there is credit for
                        // goes out in one write.
                        loop {
                            let end = matches!(msg, Message::End);
                            conn.feed(protocol::encode(&msg)?).await?;
                            credits -= 1;
                            if end {
                                flush(&mut conn).await?;
                                // Wait for the peer to close, so the End is not lost in flight.
                                while conn.next().await.is_some() {}
                                return Ok(());
                            }
                            match rx.try_recv() {
                                Ok(next) if credits > 0 => msg = next,
                                Ok(next) => {
                                    flush(&mut conn).await?;
                                    credits = wait_for_credit(&mut conn, &inflight).await?;
                                    msg = next;
                                }
                                Err(_) => break,
                            }
                        }
                        flush(&mut conn).await?;
                    }
                    grant = conn.next() => match grant {
                        Some(frame) => credits += adopt(protocol::decode::<Grant>(&frame?)?, &inflight),
                        None => return Err(reset()),
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

async fn flush(conn: &mut Connection) -> Result<(), ProtocolError> {
    SinkExt::<bytes::Bytes>::flush(conn).await?;
    Ok(())
}

fn reset() -> ProtocolError {
    ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into())
}

/// Waits for grants until one carries credit; returns it. A grant may
/// carry only the subtask's report (no credit): sending on that would
/// overrun the receiver's queue.
async fn wait_for_credit(conn: &mut Connection, inflight: &InFlight) -> Result<u64, ProtocolError> {
    loop {
        match protocol::recv::<Grant>(conn).await? {
            Some(grant) => match adopt(grant, inflight) {
                0 => continue,
                credits => return Ok(credits),
            },
            None => return Err(reset()),
        }
    }
}

/// Mirrors the remote allowance; returns the grant's credits.
fn adopt(grant: Grant, inflight: &InFlight) -> u64 {
    inflight.mirror(grant.taken, grant.limit);
    grant.credits as u64
}

/// Feeds a local downstream subtask from a remote upstream subtask.
pub fn spawn_inbound<T: DeserializeOwned + Send + 'static>(
    tasks: &mut JoinSet<()>,
    plane: &DataPlane,
    key: ChannelKey,
    to: DataSender<T>,
    on_broken: OnBroken,
) {
    let DataSender { tx, inflight } = to;
    let arrival = plane.expect(key);
    tasks.spawn(async move {
        let result: Result<(), ProtocolError> = async {
            let Ok(mut conn) = arrival.await else { return Ok(()) };
            // One permit per credit granted: the sender can never overrun the queue.
            let mut held: VecDeque<OwnedPermit<Message<T>>> = VecDeque::new();
            let mut reported = (0, 0);
            loop {
                tokio::select! {
                    permit = tx.clone().reserve_owned() => {
                        let Ok(permit) = permit else { return Ok(()) };
                        held.push_back(permit);
                        reported = grant(&mut conn, &tx, &mut held, 1, &inflight).await?;
                    }
                    _ = inflight.report_changed(reported) => {
                        reported = grant(&mut conn, &tx, &mut held, 0, &inflight).await?;
                    }
                    frame = conn.next() => {
                        let Some(frame) = frame else {
                            return Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                        };
                        let msg: Message<T> = protocol::decode(&frame?)?;
                        let Some(permit) = held.pop_front() else {
                            return Err(ProtocolError::Io(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "the sender sent a batch without credit",
                            )));
                        };
                        let end = matches!(msg, Message::End);
                        permit.send(msg);
                        if end {
                            return Ok(());
                        }
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            on_broken(format!("shuffle channel {key:?} broke: {e}"));
        }
    });
}

/// Grants the sender `reserved` credits plus one per queue slot free now,
/// with the subtask's current report, in one frame (a take frees a slot
/// and changes the report at once); returns the report sent.
async fn grant<T>(
    conn: &mut Connection,
    tx: &mpsc::Sender<Message<T>>,
    held: &mut VecDeque<OwnedPermit<Message<T>>>,
    reserved: u32,
    inflight: &InFlight,
) -> Result<(u64, u64), ProtocolError> {
    let mut credits = reserved;
    while let Ok(permit) = tx.clone().try_reserve_owned() {
        held.push_back(permit);
        credits += 1;
    }
    let (taken, limit) = inflight.report();
    protocol::send(conn, &Grant { credits, taken, limit }).await?;
    Ok((taken, limit))
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
    use crate::task::inflight::data_channel;

    /// Every record the subtask receives until `End`.
    async fn drain(subtask: &mut DataReceiver<u64>) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), subtask.recv()).await.unwrap() {
            match msg {
                Message::Batch(b) => seen.extend(b),
                Message::End => break,
                _ => {}
            }
        }
        seen
    }

    async fn hello(plane: &DataPlane, token: Option<&str>, channel: ChannelKey) -> Connection {
        let mut conn = protocol::framed(TcpStream::connect(plane.addr()).await.unwrap());
        protocol::send(&mut conn, &DataHello { token: token.map(String::from), channel }).await.unwrap();
        conn
    }

    #[tokio::test]
    async fn a_receiver_grants_its_free_queue_up_front_and_is_never_overrun() {
        let token = JobToken::new(None);
        let plane = DataPlane::bind("127.0.0.1:0".parse().unwrap(), token.clone(), None).await.unwrap();
        let key = ChannelKey { epoch: 1, edge: 0, upstream: 0, downstream: 0 };
        let broken = Arc::new(Mutex::new(Vec::<String>::new()));
        let on_broken: OnBroken = {
            let broken = broken.clone();
            Arc::new(move |e| broken.lock().unwrap().push(e))
        };
        let mut pumps = JoinSet::new();
        let (to_subtask, mut subtask) = data_channel::<u64>(3, 1000);
        spawn_inbound(&mut pumps, &plane, key, to_subtask, on_broken.clone());
        let (upstream, from_upstream) = data_channel::<u64>(16, 1000);
        spawn_outbound(&mut pumps, &token, None, key, plane.addr(), from_upstream, on_broken);
        for i in 0..10 {
            upstream.tx.send(Message::Batch(vec![i])).await.unwrap();
        }
        upstream.tx.send(Message::End).await.unwrap();

        // The subtask reads nothing yet: its whole queue fills, and no more.
        let full = tokio::time::timeout(Duration::from_secs(5), async {
            while subtask.rx.len() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(full.is_ok(), "the sender filled the receiving queue without waiting for it to drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(subtask.rx.len(), 3, "nothing beyond the queue's capacity was taken in");

        let seen = drain(&mut subtask).await;
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "every batch arrives once, in order");
        assert!(broken.lock().unwrap().is_empty(), "{:?}", broken.lock().unwrap());
    }

    #[tokio::test]
    async fn a_grant_that_only_reports_the_subtasks_progress_lets_no_batch_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = ChannelKey { epoch: 1, edge: 0, upstream: 0, downstream: 0 };
        let on_broken: OnBroken = Arc::new(|e| panic!("{e}"));
        let mut pumps = JoinSet::new();
        let (upstream, from_upstream) = data_channel::<u64>(16, 1000);
        for i in 0..3 {
            upstream.tx.send(Message::Batch(vec![i])).await.unwrap();
        }
        let token = JobToken::new(None);
        spawn_outbound(&mut pumps, &token, None, key, listener.local_addr().unwrap(), from_upstream, on_broken);
        let mut receiver = protocol::framed(listener.accept().await.unwrap().0);
        let _hello: Option<DataHello> = protocol::recv(&mut receiver).await.unwrap();
        let grant = |credits| Grant { credits, taken: 0, limit: 1000 };
        protocol::send(&mut receiver, &grant(1)).await.unwrap();
        protocol::send(&mut receiver, &grant(0)).await.unwrap();
        let first: Option<Message<u64>> = protocol::recv(&mut receiver).await.unwrap();
        assert!(matches!(first, Some(Message::Batch(b)) if b == [0]));
        let early = tokio::time::timeout(Duration::from_millis(200), receiver.next()).await;
        assert!(early.is_err(), "a batch was sent on a grant of no credit: {early:?}");
        protocol::send(&mut receiver, &grant(1)).await.unwrap();
        let second: Option<Message<u64>> = protocol::recv(&mut receiver).await.unwrap();
        assert!(matches!(second, Some(Message::Batch(b)) if b == [1]), "the next credit lets the next batch go");
    }

    #[tokio::test]
    async fn a_sender_across_workers_keeps_to_the_remote_subtasks_record_allowance() {
        let token = JobToken::new(None);
        let plane = DataPlane::bind("127.0.0.1:0".parse().unwrap(), token.clone(), None).await.unwrap();
        let key = ChannelKey { epoch: 1, edge: 0, upstream: 0, downstream: 0 };
        let on_broken: OnBroken = Arc::new(|e| panic!("{e}"));
        let mut pumps = JoinSet::new();
        // Room for 16 batches, but the subtask allows 5 records in flight.
        let (to_subtask, mut subtask) = data_channel::<u64>(16, 1000);
        to_subtask.inflight.set_limit(5);
        spawn_inbound(&mut pumps, &plane, key, to_subtask, on_broken.clone());
        let (upstream, from_upstream) = data_channel::<u64>(16, 1000);
        spawn_outbound(&mut pumps, &token, None, key, plane.addr(), from_upstream, on_broken);
        let sender = upstream.inflight.clone();
        let mirrored = tokio::time::timeout(Duration::from_secs(5), async {
            while sender.limit() != 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(mirrored.is_ok(), "the first grant carries the subtask's allowance");
        let sending = tokio::spawn(async move {
            for i in 0..8 {
                upstream.inflight.admit(1).await;
                upstream.tx.send(Message::Batch(vec![i])).await.unwrap();
            }
            upstream.tx.send(Message::End).await.unwrap();
        });
        let held = tokio::time::timeout(Duration::from_secs(5), async {
            while sender.queued() < 5 || subtask.rx.len() < 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(held.is_ok(), "five records went across");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sender.queued(), 5, "the sender waits for the remote subtask's allowance");
        assert_eq!(subtask.rx.len(), 5, "and nothing more is in its queue");

        let seen = drain(&mut subtask).await;
        assert_eq!(seen, (0..8).collect::<Vec<_>>(), "the rest follows as the subtask takes records");
        sending.await.unwrap();
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
