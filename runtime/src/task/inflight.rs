//! Data channels between subtasks whose queued records are bounded by
//! time, not only by count: buffer debloating, after Flink's FLIP-183.
//!
//! Under backpressure a barrier waits behind every record queued in front
//! of the slow subtask. With queues sized in batches, that wait grows as
//! the subtask slows: 16 batches of 1024 records are half a second at 32k
//! records/s and 16 s at 1k. So each channel also carries an allowance in
//! records, which its receiver sets from the rate at which it gets through
//! records ([`Debloater`]), so that what waits in front of it is about
//! `target` of its own work whatever its speed. The batch-count bound of
//! the underlying queue stays as the ceiling.
//!
//! Across workers the allowance is mirrored: the receiving side reports
//! how many records its subtask took and its allowance with every credit
//! grant, and the sending side admits records against that mirror (see
//! `distributed::network`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, Receiver, Sender};
use tokio::sync::Notify;

use super::message::Message;

/// The fewest records a channel allows in flight, so that a very slow
/// subtask still gets batches worth sending.
pub const MIN_RECORDS: usize = 64;

/// The record allowance of one channel and what is queued against it.
#[derive(Debug)]
pub struct InFlight {
    /// Records admitted by the sender, ever.
    sent: AtomicU64,
    /// Records taken by the receiver, ever.
    taken: AtomicU64,
    limit: AtomicU64,
    changed: Notify,
}

impl InFlight {
    pub fn new(limit: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            sent: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            limit: AtomicU64::new(limit as u64),
            changed: Notify::new(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire) as usize
    }

    /// Records admitted and not yet taken.
    pub fn queued(&self) -> u64 {
        self.sent.load(Ordering::Acquire).saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// Waits until the allowance is not used up, then counts `n` records
    /// in. A batch is admitted while any of the allowance is left, so at
    /// most one batch overdraws it; senders keep batches within the limit.
    pub async fn admit(&self, n: usize) {
        loop {
            // Created before the check, so a change in between still wakes it.
            let changed = self.changed.notified();
            if self.queued() < self.limit.load(Ordering::Acquire) {
                self.sent.fetch_add(n as u64, Ordering::AcqRel);
                return;
            }
            changed.await;
        }
    }

    /// The receiver took `n` records off the queue.
    pub fn take(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub fn set_limit(&self, limit: usize) {
        if self.limit.swap(limit as u64, Ordering::AcqRel) != limit as u64 {
            self.changed.notify_waiters();
        }
    }

    /// What the receiver has taken and allows, to report to a remote sender.
    pub fn report(&self) -> (u64, u64) {
        (self.taken.load(Ordering::Acquire), self.limit.load(Ordering::Acquire))
    }

    /// Adopts a remote receiver's report.
    pub fn mirror(&self, taken: u64, limit: u64) {
        self.taken.fetch_max(taken, Ordering::AcqRel);
        self.limit.store(limit, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until the report differs from `last`.
    pub async fn report_changed(&self, last: (u64, u64)) -> (u64, u64) {
        loop {
            let changed = self.changed.notified();
            let now = self.report();
            if now != last {
                return now;
            }
            changed.await;
        }
    }
}

/// The sending end of a data channel.
pub struct DataSender<T> {
    pub tx: Sender<Message<T>>,
    pub inflight: Arc<InFlight>,
}

/// The receiving end of a data channel.
pub struct DataReceiver<T> {
    pub rx: Receiver<Message<T>>,
    pub inflight: Arc<InFlight>,
}

impl<T> DataReceiver<T> {
    /// The next message; a batch is taken off the allowance as it is received.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message<T>>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Message::Batch(b))) = &polled {
            self.inflight.take(b.len());
        }
        polled
    }

    pub async fn recv(&mut self) -> Option<Message<T>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// A channel of at most `slots` messages and, at first, `records` records.
pub fn data_channel<T>(slots: usize, records: usize) -> (DataSender<T>, DataReceiver<T>) {
    let (tx, rx) = mpsc::channel(slots.max(1));
    let inflight = InFlight::new(records.max(MIN_RECORDS));
    (DataSender { tx, inflight: inflight.clone() }, DataReceiver { rx, inflight })
}

/// Sets a subtask's per-input allowance from its throughput: records over
/// the time it spent processing them (waiting for input not counted, so an
/// idle subtask does not look slow), smoothed over windows of 100 ms.
#[derive(Debug)]
pub struct Debloater {
    target: Duration,
    inputs: usize,
    max: usize,
    window_started: Instant,
    window_records: u64,
    window_busy: Duration,
    /// Records per second, smoothed.
    rate: Option<f64>,
    limit: usize,
}

const WINDOW: Duration = Duration::from_millis(100);

impl Debloater {
    /// `max` is the allowance per input before anything is measured, and
    /// the most it ever grows to.
    pub fn new(target: Duration, inputs: usize, max: usize, now: Instant) -> Debloater {
        Debloater {
            target,
            inputs: inputs.max(1),
            max: max.max(MIN_RECORDS),
            window_started: now,
            window_records: 0,
            window_busy: Duration::ZERO,
            rate: None,
            limit: max.max(MIN_RECORDS),
        }
    }

    /// The subtask processed `records` in `busy`. Returns the new
    /// per-input allowance when it changed by more than a tenth.
    pub fn on_batch(&mut self, records: usize, busy: Duration, now: Instant) -> Option<usize> {
        self.window_records += records as u64;
        self.window_busy += busy;
        if now.saturating_duration_since(self.window_started) < WINDOW {
            return None;
        }
        let measured = self.window_records as f64 / self.window_busy.as_secs_f64().max(1e-6);
        let rate = match self.rate {
            Some(r) => 0.7 * r + 0.3 * measured,
            None => measured,
        };
        self.rate = Some(rate);
        self.window_started = now;
        self.window_records = 0;
        self.window_busy = Duration::ZERO;
        let wanted = (rate * self.target.as_secs_f64() / self.inputs as f64) as usize;
        let limit = wanted.clamp(MIN_RECORDS, self.max);
        let moved = limit.abs_diff(self.limit) * 10 > self.limit;
        if moved || (limit != self.limit && (limit == MIN_RECORDS || limit == self.max)) {
            self.limit = limit;
            return Some(limit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sender_waits_once_the_allowance_is_used_and_goes_on_when_the_receiver_takes() {
        let (tx, mut rx) = data_channel::<u32>(16, 100);
        tx.inflight.admit(80).await;
        tx.tx.send(Message::Batch(vec![0; 80])).await.unwrap();
        tx.inflight.admit(80).await; // 80 < 100: admitted, overdrawing by one batch
        tx.tx.send(Message::Batch(vec![0; 80])).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), tx.inflight.admit(80)).await;
        assert!(third.is_err(), "160 queued against 100 allowed: the sender must wait");
        assert!(matches!(rx.recv().await, Some(Message::Batch(b)) if b.len() == 80));
        assert_eq!(tx.inflight.queued(), 80);
        tokio::time::timeout(Duration::from_secs(1), tx.inflight.admit(80)).await.expect("room again");
    }

    #[tokio::test]
    async fn a_lowered_limit_holds_the_sender_and_a_raised_one_releases_it() {
        let (tx, _rx) = data_channel::<u32>(16, 1000);
        tx.inflight.admit(200).await;
        tx.inflight.set_limit(100);
        let waiting = tokio::spawn({
            let inflight = tx.inflight.clone();
            async move { inflight.admit(10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.inflight.set_limit(500);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("released").unwrap();
    }

    #[test]
    fn a_mirror_follows_the_remote_receivers_report() {
        let remote = InFlight::new(1000);
        let local = InFlight::new(1000);
        futures::executor::block_on(local.admit(300));
        remote.take(200);
        remote.set_limit(150);
        let (taken, limit) = remote.report();
        local.mirror(taken, limit);
        assert_eq!(local.queued(), 100);
        assert_eq!(local.limit(), 150);
    }

    #[test]
    fn the_allowance_follows_the_subtasks_throughput_and_target() {
        let start = Instant::now();
        let mut d = Debloater::new(Duration::from_millis(200), 2, 16 * 1024, start);
        // 10,000 records/s of work: 200 ms of it over two inputs is 1000 each.
        let mut limit = None;
        for i in 1..=10u32 {
            if let Some(l) = d.on_batch(1000, Duration::from_millis(100), start + WINDOW * i) {
                limit = Some(l);
            }
        }
        assert_eq!(limit, Some(1000));
        // Idle between batches does not count: the same work in less busy time is faster.
        let mut fast = None;
        for i in 11..=30u32 {
            if let Some(l) = d.on_batch(1000, Duration::from_millis(1), start + WINDOW * i) {
                fast = Some(l);
            }
        }
        assert_eq!(fast, Some(16 * 1024), "a fast subtask gets the whole queue");
    }

    #[test]
    fn a_very_slow_subtask_still_allows_the_minimum() {
        let start = Instant::now();
        let mut d = Debloater::new(Duration::from_millis(200), 1, 16 * 1024, start);
        let limit = d.on_batch(10, Duration::from_secs(1), start + WINDOW);
        assert_eq!(limit, Some(MIN_RECORDS));
    }
}
