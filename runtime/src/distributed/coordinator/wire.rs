//! The worker endpoint: accepting connections, registration with the job
//! token, one reader and one writer per worker, and the control plane that
//! sends an attempt's control messages to the worker of each subtask.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use super::super::protocol::{self, TaskKey, ToCoordinator, ToWorker, WorkerCounters};
use super::super::tls::{self, Io, JobTls};
use super::registry::{Shared, WorkerConn};
use crate::job::coordinate::{wall_ms, ControlPlane};
use crate::task::error::{FailureKind, TaskFailure};
use crate::task::{Control, Event, TaskId};

pub(super) async fn accept_workers(
    listener: TcpListener,
    shared: Arc<Shared>,
    registered: Arc<Notify>,
    tls: Option<Arc<JobTls>>,
) {
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        next_id += 1;
        let id = next_id;
        let shared = shared.clone();
        let (registered, tls) = (registered.clone(), tls.clone());
        tokio::spawn(async move {
            let stream = match tls::server(tls.as_deref(), stream).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%peer, "refused a worker connection: no TLS session: {e}");
                    return;
                }
            };
            let why = match serve_worker(id, stream, &shared, &registered).await {
                Err(e) => e,
                Ok(()) => "connection closed".into(),
            };
            shared.lose_worker(id, &why).await;
            let _ = peer;
        });
    }
}

async fn serve_worker(id: u64, stream: Box<dyn Io>, shared: &Shared, registered: &Notify) -> Result<(), String> {
    let mut conn = protocol::framed(stream);
    let Some(ToCoordinator::Register { name, data_addr, token }) =
        protocol::recv::<ToCoordinator>(&mut conn).await.map_err(|e| e.to_string())?
    else {
        return Err("first message was not a registration".into());
    };
    if !shared.token.admits(token.as_deref()) {
        let reason = format!("worker {name} at {data_addr} presented a wrong or no job token");
        warn!("refused a registration: {reason}");
        let _ = protocol::send(&mut conn, &ToWorker::Refused { reason: reason.clone() }).await;
        return Err(reason);
    }
    info!(worker = %name, %data_addr, "worker {name} registered");
    let (mut sink, mut stream) = conn.split();
    let (tx, mut rx) = mpsc::channel::<ToWorker>(256);
    if let Ok(mut w) = shared.workers.lock() {
        w.insert(
            id,
            WorkerConn {
                name,
                data_addr,
                tx,
                last_seen: Instant::now(),
                registered_at_ms: wall_ms(),
                counters: WorkerCounters::default(),
            },
        );
    }
    registered.notify_one();
    let writer = async {
        while let Some(msg) = rx.recv().await {
            let bytes = protocol::encode(&msg).map_err(|e| e.to_string())?;
            sink.send(bytes).await.map_err(|e| e.to_string())?;
        }
        // Dropped from the registry (heartbeat timeout): close the connection.
        Err::<(), String>("dropped by the coordinator".into())
    };
    let reader = async {
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let msg: ToCoordinator = protocol::decode(&frame).map_err(|e| e.to_string())?;
            shared.on_message(id, msg).await;
        }
        Ok::<(), String>(())
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

pub(super) struct RemotePlane {
    pub(super) epoch: u64,
    pub(super) tasks: Vec<(TaskId, bool)>,
    pub(super) keys: Vec<TaskKey>,
    pub(super) routes: Vec<mpsc::Sender<ToWorker>>,
    /// The attempt's events, where a worker too slow to take messages is reported.
    pub(super) events: mpsc::Sender<Event>,
    /// How long a send may wait for a worker's queue (the heartbeat timeout).
    pub(super) slow_peer_limit: Duration,
}

impl ControlPlane for RemotePlane {
    fn tasks(&self) -> &[(TaskId, bool)] {
        &self.tasks
    }
    async fn send(&self, task: usize, control: Control) {
        let msg = ToWorker::Control { epoch: self.epoch, task: self.keys[task], control };
        // A lost worker's failure reaches the loop as an event. A worker
        // whose queue stays full (it stopped reading) must not hold the
        // loop: past the limit it counts as lost.
        if let Err(tokio::time::error::Elapsed { .. }) =
            tokio::time::timeout(self.slow_peer_limit, self.routes[task].send(msg)).await
        {
            let why = format!(
                "the worker of {} took no message for {:?}: lost as too slow",
                self.tasks[task].0, self.slow_peer_limit
            );
            let failure = TaskFailure::new(FailureKind::WorkerLost, why);
            let _ = self.events.try_send(Event::Failed { task: self.tasks[task].0.clone(), failure });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Barrier;

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_stops_taking_messages_is_reported_lost_instead_of_holding_the_loop() {
        let task = TaskId { stage: 0, name: Arc::from("source"), subtask: 0, parallelism: 1 };
        // The worker's queue holds one message and nobody reads it.
        let (route, _unread) = mpsc::channel(1);
        let (events, mut reported) = mpsc::channel(4);
        let plane = RemotePlane {
            epoch: 7,
            tasks: vec![(task, true)],
            keys: vec![TaskKey { stage: 0, subtask: 0 }],
            routes: vec![route],
            events,
            slow_peer_limit: Duration::from_secs(2),
        };
        let started = tokio::time::Instant::now();
        plane.send(0, Control::Trigger(Barrier { id: 1, timestamp_ms: 0 })).await;
        plane.send(0, Control::Trigger(Barrier { id: 2, timestamp_ms: 0 })).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2), "the second send gave up at the limit");
        match reported.try_recv() {
            Ok(Event::Failed { failure, .. }) => {
                assert_eq!(failure.kind, FailureKind::WorkerLost);
                assert!(failure.message.contains("took no message"), "{}", failure.message);
            }
            other => panic!("expected a lost worker, got {other:?}"),
        }
    }
}
