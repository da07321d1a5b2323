//! A keyed process function with event-time and processing-time timers,
//! in the spirit of Flink's `KeyedProcessFunction` with `TimerService`:
//! windows are one.
//!
//! Timers live in keyed state, so checkpoints and rescaling carry them
//! with the key; the operator's time-ordered queues of all timers are
//! rebuilt from the state on restore rather than stored twice. Event-time
//! timers are in each key's [`Timed`] state; processing-time timers are
//! keyed state of their own (under [`processing_timers_uid`]), so the
//! checkpoints of operators from before them restore unchanged. A
//! processing-time timer due while the job was down fires at the first
//! clock reading after the restore.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::faults::FaultPoint;
use crate::metrics::JobMetrics;
use crate::state::KeyedStateBackend;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot, Watermark};

/// User logic of a keyed operator that acts when event time passes a point.
pub trait EventTimeFunction<K, I, O>: Clone + Send + 'static {
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    fn process(
        &mut self,
        key: &K,
        record: I,
        state: &mut Self::State,
        timers: &mut Timers,
        out: &mut Vec<O>,
    ) -> Result<(), TaskError>;

    /// The watermark reached `time`, a timer of `key`. A function that sets
    /// no event-time timers keeps this default.
    fn on_timer(
        &mut self,
        _key: &K,
        _time: i64,
        _state: &mut Self::State,
        _timers: &mut Timers,
        _out: &mut Vec<O>,
    ) -> Result<(), TaskError> {
        Ok(())
    }

    /// The wall clock reached `time`, a processing-time timer of `key`.
    fn on_processing_timer(
        &mut self,
        _key: &K,
        _time: i64,
        _state: &mut Self::State,
        _timers: &mut Timers,
        _out: &mut Vec<O>,
    ) -> Result<(), TaskError> {
        Ok(())
    }

    /// Whether a key's state holds nothing, so that with no timers left the
    /// key is dropped instead of kept forever.
    fn is_empty(&self, _state: &Self::State) -> bool {
        false
    }

    /// How far behind its input's watermark the operator's output
    /// watermark stays: what it emits from a timer may carry an event time
    /// this much older than the timer, and must not be late for the
    /// operators after it (an outer join's unmatched records).
    fn watermark_delay(&self) -> i64 {
        0
    }
}

/// The timers of the current key, and the event time they fire against.
pub struct Timers<'a> {
    watermark: Option<i64>,
    set: &'a mut BTreeSet<i64>,
    added: &'a mut Vec<i64>,
    late: &'a mut u64,
    /// The wall clock as last read, milliseconds since the epoch.
    now: i64,
    /// Processing-time timers set (true) and deleted (false) in this call,
    /// applied to the key's after it.
    processing: &'a mut Vec<(i64, bool)>,
}

impl Timers<'_> {
    /// The operator's event time: `None` before any watermark arrived.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The operator's processing time: the wall clock (milliseconds since
    /// the epoch) at its task's last reading, at most [`PROCESSING_TICK`]
    /// ago.
    ///
    /// [`PROCESSING_TICK`]: crate::task::collector::PROCESSING_TICK
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Calls `on_processing_timer` once the wall clock reaches `time` (at
    /// the next reading if it already has). Registering a time twice fires
    /// once.
    pub fn register_processing_time(&mut self, time: i64) {
        self.processing.push((time, true));
    }

    pub fn delete_processing_time(&mut self, time: i64) {
        self.processing.push((time, false));
    }

    /// Calls `on_timer` once the watermark reaches `time` (at the next
    /// watermark if it already has). Registering a time twice fires once.
    pub fn register(&mut self, time: i64) {
        if self.set.insert(time) {
            self.added.push(time);
        }
    }

    /// Counts a record dropped because event time had passed it
    /// (`weir_late_records_dropped_total`).
    pub fn drop_late(&mut self) {
        *self.late += 1;
    }

    pub fn delete(&mut self, time: i64) {
        // The queue entry stays and is skipped when it comes due.
        self.set.remove(&time);
    }
}

#[cfg(test)]
impl<'a> Timers<'a> {
    /// Timers against `watermark` and the wall clock at `now`, outside an
    /// operator.
    pub(crate) fn for_test(
        (watermark, now): (Option<i64>, i64),
        set: &'a mut BTreeSet<i64>,
        added: &'a mut Vec<i64>,
        late: &'a mut u64,
        processing: &'a mut Vec<(i64, bool)>,
    ) -> Timers<'a> {
        Timers { watermark, set, added, late, now, processing }
    }
}

/// One key outside an operator: its state, its event-time and
/// processing-time timers, and the records it counted late.
#[cfg(test)]
struct TestKey<S> {
    state: S,
    set: BTreeSet<i64>,
    processing: BTreeSet<i64>,
    late: u64,
}

#[cfg(test)]
impl<S: Default> TestKey<S> {
    fn new() -> Self {
        TestKey { state: S::default(), set: BTreeSet::new(), processing: BTreeSet::new(), late: 0 }
    }

    /// Calls `call` with the key's state and timers at `watermark` and
    /// `now`, then applies the processing-time timers it set or deleted.
    fn call<R>(&mut self, at: (Option<i64>, i64), call: impl FnOnce(&mut S, &mut Timers) -> R) -> R {
        let (mut added, mut processing) = (Vec::new(), Vec::new());
        let mut timers = Timers::for_test(at, &mut self.set, &mut added, &mut self.late, &mut processing);
        let result = call(&mut self.state, &mut timers);
        for (time, set) in processing {
            if set {
                self.processing.insert(time);
            } else {
                self.processing.remove(&time);
            }
        }
        result
    }
}

/// Runs one key's `function` outside an operator: before each record the
/// watermark moves to the time given with it (firing due timers in time
/// order), and at the end to `end`. Returns the output, the records counted
/// late, and whether the key's state is empty.
#[cfg(test)]
pub(crate) fn drive<I, O, F: EventTimeFunction<String, I, O>>(
    function: &mut F,
    steps: Vec<(Option<i64>, I)>,
    end: Option<i64>,
) -> (Vec<O>, u64, bool) {
    fn advance<I, O, F: EventTimeFunction<String, I, O>>(
        f: &mut F,
        to: i64,
        k: &mut TestKey<F::State>,
        out: &mut Vec<O>,
    ) {
        while let Some(t) = k.set.first().copied().filter(|t| *t <= to) {
            k.set.remove(&t);
            k.call((Some(to), 0), |state, timers| f.on_timer(&"a".to_string(), t, state, timers, out)).unwrap();
        }
    }
    let mut k = TestKey::new();
    let (mut out, mut watermark) = (Vec::new(), None);
    for (w, record) in steps {
        if let Some(w) = w {
            watermark = Some(w);
            advance(function, w, &mut k, &mut out);
        }
        k.call((watermark, 0), |state, timers| function.process(&"a".to_string(), record, state, timers, &mut out))
            .unwrap();
    }
    if let Some(end) = end {
        advance(function, end, &mut k, &mut out);
    }
    let empty = k.set.is_empty() && function.is_empty(&k.state);
    (out, k.late, empty)
}

/// Runs one key's `function` outside an operator by the wall clock: at
/// each reading the processing-time timers due fire in time order, then
/// the record (if any) is processed. Returns the output and whether the
/// key holds nothing (no state, no timers).
#[cfg(test)]
pub(crate) fn drive_clock<I, O, F: EventTimeFunction<String, I, O>>(
    function: &mut F,
    steps: Vec<(i64, Option<I>)>,
) -> (Vec<O>, bool) {
    let mut k = TestKey::new();
    let mut out = Vec::new();
    for (now, record) in steps {
        while let Some(t) = k.processing.first().copied().filter(|t| *t <= now) {
            k.processing.remove(&t);
            k.call((None, now), |state, timers| {
                function.on_processing_timer(&"a".to_string(), t, state, timers, &mut out)
            })
            .unwrap();
        }
        if let Some(record) = record {
            k.call((None, now), |state, timers| function.process(&"a".to_string(), record, state, timers, &mut out))
                .unwrap();
        }
    }
    let empty = k.set.is_empty() && k.processing.is_empty() && function.is_empty(&k.state);
    (out, empty)
}

/// Every key's timers, by time.
fn queue_of<'a, K: Clone + 'a>(timers: impl Iterator<Item = (&'a K, &'a BTreeSet<i64>)>) -> BTreeMap<i64, Vec<K>> {
    let mut queue: BTreeMap<i64, Vec<K>> = BTreeMap::new();
    for (key, set) in timers {
        for t in set {
            queue.entry(*t).or_default().push(key.clone());
        }
    }
    queue
}

/// A key's state and its timers, as checkpointed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timed<S> {
    pub state: S,
    pub timers: BTreeSet<i64>,
}

/// Where an operator's processing-time timers are checkpointed.
pub fn processing_timers_uid(uid: &str) -> String {
    format!("{uid}.processing-timers")
}

pub struct KeyedEventTime<K, I, O, F: EventTimeFunction<K, I, O>, KF> {
    uid: String,
    ctx: TaskContext,
    key_of: KF,
    function: F,
    state: KeyedStateBackend<K, Timed<F::State>>,
    /// Every key's timers in time order.
    /// Keys by time rather than a set of (time, key): the many keys due at
    /// one window end would otherwise be ordered by comparing keys.
    queue: BTreeMap<i64, Vec<K>>,
    watermark: Option<i64>,
    next: Box<dyn Collector<O>>,
    added: Vec<i64>,
    late: u64,
    /// Each key's processing-time timers, and all of them in time order.
    processing: KeyedStateBackend<K, BTreeSet<i64>>,
    processing_queue: BTreeMap<i64, Vec<K>>,
    /// What the function just did to its key's processing-time timers.
    processing_changes: Vec<(i64, bool)>,
    /// The wall clock as last read.
    now: i64,
    _types: std::marker::PhantomData<fn(I)>,
}

impl<K, I, O, F, KF> KeyedEventTime<K, I, O, F, KF>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
    F: EventTimeFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    pub fn new(
        uid: String,
        ctx: TaskContext,
        key_of: KF,
        function: F,
        next: Box<dyn Collector<O>>,
    ) -> Result<Self, TaskError> {
        let state: KeyedStateBackend<K, Timed<F::State>> = super::restore_keyed(&uid, &ctx)?;
        let queue = queue_of(state.iter().map(|(key, timed)| (key, &timed.timers)));
        let processing: KeyedStateBackend<K, BTreeSet<i64>> = super::restore_keyed(&processing_timers_uid(&uid), &ctx)?;
        let processing_queue = queue_of(processing.iter());
        Ok(KeyedEventTime {
            uid,
            ctx,
            key_of,
            function,
            state,
            queue,
            watermark: None,
            next,
            added: Vec::new(),
            late: 0,
            processing,
            processing_queue,
            processing_changes: Vec::new(),
            now: crate::job::coordinate::wall_ms() as i64,
            _types: std::marker::PhantomData,
        })
    }

    fn process_all(&mut self, batch: impl Iterator<Item = I>, out: &mut Vec<O>) -> Result<(), TaskError> {
        for record in batch {
            let key = (self.key_of)(&record);
            let timed = self.state.get_mut(&key).ok_or(TaskError::Misrouted { subtask: self.ctx.subtask() })?;
            let mut timers = Timers {
                watermark: self.watermark,
                set: &mut timed.timers,
                added: &mut self.added,
                late: &mut self.late,
                now: self.now,
                processing: &mut self.processing_changes,
            };
            self.function.process(&key, record, &mut timed.state, &mut timers, out)?;
            let empty = timed.timers.is_empty() && self.function.is_empty(&timed.state);
            self.settle(key, empty);
        }
        Ok(())
    }

    /// Queues the timers the function just registered, or drops a key that
    /// holds nothing any more.
    fn settle(&mut self, key: K, empty: bool) {
        let waiting = self.settle_processing(&key);
        if empty && !waiting {
            self.state.remove(&key);
            self.added.clear();
            return;
        }
        for t in self.added.drain(..) {
            self.queue.entry(t).or_default().push(key.clone());
        }
    }

    /// Applies the function's processing-time timer changes to `key`'s;
    /// whether it has any left.
    fn settle_processing(&mut self, key: &K) -> bool {
        if self.processing_changes.is_empty() {
            // Most functions never set one: no lookup for them. The queue
            // holds every key's timers (and some deleted ones).
            return !self.processing_queue.is_empty() && self.processing.get(key).is_some_and(|set| !set.is_empty());
        }
        let Some(set) = self.processing.get_mut(key) else {
            self.processing_changes.clear();
            return false;
        };
        for (time, add) in self.processing_changes.drain(..) {
            if !add {
                set.remove(&time); // its queue entry is skipped when due
            } else if set.insert(time) {
                self.processing_queue.entry(time).or_default().push(key.clone());
            }
        }
        if set.is_empty() {
            self.processing.remove(key);
            return false;
        }
        true
    }

    /// Fires every processing-time timer at or before `now`, in time order.
    fn fire_processing(&mut self, now: i64, out: &mut Vec<O>) -> Result<(), TaskError> {
        self.now = now;
        while let Some((time, keys)) = self
            .processing_queue
            .first_key_value()
            .filter(|(t, _)| **t <= now)
            .map(|(t, _)| *t)
            .and_then(|t| self.processing_queue.remove_entry(&t))
        {
            for key in keys {
                let Some(set) = self.processing.get_existing_mut(&key) else { continue };
                if !set.remove(&time) {
                    continue; // deleted, or queued twice
                }
                if set.is_empty() {
                    self.processing.remove(&key);
                }
                let Some(timed) = self.state.get_mut(&key) else { continue };
                let mut timers = Timers {
                    watermark: self.watermark,
                    set: &mut timed.timers,
                    added: &mut self.added,
                    late: &mut self.late,
                    now,
                    processing: &mut self.processing_changes,
                };
                self.function.on_processing_timer(&key, time, &mut timed.state, &mut timers, out)?;
                let empty = timed.timers.is_empty() && self.function.is_empty(&timed.state);
                self.settle(key, empty);
            }
        }
        Ok(())
    }

    /// Fires every timer at or before `now`, in time order.
    fn fire(&mut self, now: i64, out: &mut Vec<O>) -> Result<(), TaskError> {
        // Timers set while firing go into the queue and fire in this loop
        // if they are due too.
        while let Some((time, keys)) = self
            .queue
            .first_key_value()
            .filter(|(t, _)| **t <= now)
            .map(|(t, _)| *t)
            .and_then(|t| self.queue.remove_entry(&t))
        {
            for key in keys {
                // A key dropped since its timer was queued has nothing to fire.
                let Some(timed) = self.state.get_existing_mut(&key) else { continue };
                if !timed.timers.remove(&time) {
                    continue; // deleted, or queued twice
                }
                let mut timers = Timers {
                    watermark: self.watermark,
                    set: &mut timed.timers,
                    added: &mut self.added,
                    late: &mut self.late,
                    now: self.now,
                    processing: &mut self.processing_changes,
                };
                self.function.on_timer(&key, time, &mut timed.state, &mut timers, out)?;
                let empty = timed.timers.is_empty() && self.function.is_empty(&timed.state);
                self.settle(key, empty);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<K, I, O, F, KF> Collector<I> for KeyedEventTime<K, I, O, F, KF>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    F: EventTimeFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    async fn open(&mut self) -> Result<(), TaskError> {
        self.next.open().await
    }

    async fn collect(&mut self, batch: Vec<I>) -> Result<(), TaskError> {
        let mut out = Vec::new();
        let half = batch.len() / 2;
        let mut records = batch.into_iter();
        self.process_all(records.by_ref().take(half), &mut out)?;
        self.ctx.faults.check(FaultPoint::MidBatch)?;
        self.process_all(records, &mut out)?;
        if self.late > 0 {
            JobMetrics::add(&self.ctx.metrics.late_records_dropped, std::mem::take(&mut self.late) as usize);
        }
        if out.is_empty() {
            return Ok(());
        }
        self.next.collect(out).await
    }

    async fn watermark(&mut self, watermark: Watermark) -> Result<(), TaskError> {
        if let Watermark::At(now) = watermark {
            self.watermark = Some(now);
            let mut out = Vec::new();
            self.fire(now, &mut out)?;
            if !out.is_empty() {
                self.next.collect(out).await?;
            }
            // The end of input stays the end: everything has fired.
            let delay = self.function.watermark_delay();
            if delay > 0 && now != i64::MAX {
                return self.next.watermark(Watermark::At(now.saturating_sub(delay))).await;
            }
        }
        self.next.watermark(watermark).await
    }

    async fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        let mut out = Vec::new();
        self.fire_processing(now, &mut out)?;
        if !out.is_empty() {
            self.next.collect(out).await?;
        }
        self.next.processing_time(now).await
    }

    async fn barrier(&mut self, barrier: Barrier, snapshot: &mut TaskSnapshot) -> Result<(), TaskError> {
        snapshot.add(super::snapshot_keyed(&self.uid, &mut self.state));
        snapshot.add(super::snapshot_keyed(&processing_timers_uid(&self.uid), &mut self.processing));
        self.next.barrier(barrier, snapshot).await
    }

    async fn checkpoint_complete(&mut self, id: u64) -> Result<(), TaskError> {
        self.next.checkpoint_complete(id).await
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.next.end_of_input().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Keeps what reaches it.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Collector<String> for Recorder {
        async fn open(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
        async fn collect(&mut self, batch: Vec<String>) -> Result<(), TaskError> {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
        async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
            Ok(())
        }
        async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
            Ok(())
        }
        async fn end_of_input(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
        async fn watermark(&mut self, w: Watermark) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(format!("{w:?}"));
            Ok(())
        }
    }

    /// Sums a key's values until its timer, set 10 after the first value;
    /// a negative value cancels the timer. Its output watermark stays its
    /// field behind its input's.
    #[derive(Clone)]
    struct SumUntil(i64);

    impl EventTimeFunction<String, (String, i64), String> for SumUntil {
        type State = Option<i64>;

        fn process(
            &mut self,
            _key: &String,
            (_, v): (String, i64),
            sum: &mut Option<i64>,
            timers: &mut Timers,
            _out: &mut Vec<String>,
        ) -> Result<(), TaskError> {
            if v < 0 {
                timers.delete(sum.unwrap_or(0) + 10);
                *sum = None;
                return Ok(());
            }
            if sum.is_none() {
                timers.register(v + 10);
            }
            *sum = Some(sum.unwrap_or(v) + if sum.is_some() { v } else { 0 });
            Ok(())
        }

        fn on_timer(
            &mut self,
            key: &String,
            time: i64,
            sum: &mut Option<i64>,
            _timers: &mut Timers,
            out: &mut Vec<String>,
        ) -> Result<(), TaskError> {
            out.push(format!("{key}@{time}={}", sum.take().unwrap_or(0)));
            Ok(())
        }

        fn is_empty(&self, sum: &Option<i64>) -> bool {
            sum.is_none()
        }

        fn watermark_delay(&self) -> i64 {
            self.0
        }
    }

    #[tokio::test]
    async fn timers_fire_in_time_order_when_the_watermark_reaches_them_and_done_keys_are_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = TaskContext::for_test("timers");
        let next = Box::new(Recorder(seen.clone()));
        let mut op = KeyedEventTime::new("t".into(), ctx, |r: &(String, i64)| r.0.clone(), SumUntil(0), next).unwrap();
        let rec = |k: &str, v: i64| (k.to_string(), v);
        op.collect(vec![rec("b", 5), rec("a", 1), rec("a", 2), rec("c", 3), rec("c", -1)]).await.unwrap();
        op.watermark(Watermark::At(11)).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["a@11=3".to_string(), "At(11)".into()]);
        assert_eq!(op.state.len(), 1, "a fired and c was cancelled: only b is kept");
        op.watermark(Watermark::Idle).await.unwrap();
        op.watermark(Watermark::At(20)).await.unwrap();
        assert_eq!(seen.lock().unwrap()[2..], ["Idle".to_string(), "b@15=5".into(), "At(20)".into()]);
        assert!(op.state.is_empty() && op.queue.is_empty());
    }

    /// Sums a key's values until a processing-time timer 10 ms after its
    /// first; a negative value cancels it.
    #[derive(Clone)]
    struct SumFor10Ms;

    impl EventTimeFunction<String, (String, i64), String> for SumFor10Ms {
        type State = Option<(i64, i64)>;

        fn process(
            &mut self,
            _key: &String,
            (_, v): (String, i64),
            sum: &mut Option<(i64, i64)>,
            timers: &mut Timers,
            _out: &mut Vec<String>,
        ) -> Result<(), TaskError> {
            match sum {
                Some((at, _)) if v < 0 => {
                    timers.delete_processing_time(*at);
                    *sum = None;
                }
                Some((_, total)) => *total += v,
                None => {
                    let at = timers.now() + 10;
                    timers.register_processing_time(at);
                    *sum = Some((at, v));
                }
            }
            Ok(())
        }

        fn on_timer(
            &mut self,
            _: &String,
            _: i64,
            _: &mut Option<(i64, i64)>,
            _: &mut Timers,
            _: &mut Vec<String>,
        ) -> Result<(), TaskError> {
            Ok(())
        }

        fn on_processing_timer(
            &mut self,
            key: &String,
            time: i64,
            sum: &mut Option<(i64, i64)>,
            _timers: &mut Timers,
            out: &mut Vec<String>,
        ) -> Result<(), TaskError> {
            out.push(format!("{key}~{time}={}", sum.take().map_or(0, |(_, total)| total)));
            Ok(())
        }

        fn is_empty(&self, sum: &Option<(i64, i64)>) -> bool {
            sum.is_none()
        }
    }

    #[tokio::test]
    async fn processing_time_timers_fire_when_the_clock_reaches_them_and_are_checkpointed_apart() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = TaskContext::for_test("clock");
        let next = Box::new(Recorder(seen.clone()));
        let mut op = KeyedEventTime::new("p".into(), ctx, |r: &(String, i64)| r.0.clone(), SumFor10Ms, next).unwrap();
        let rec = |k: &str, v: i64| (k.to_string(), v);
        op.processing_time(1_000).await.unwrap();
        op.collect(vec![rec("a", 1), rec("b", 5), rec("c", 3)]).await.unwrap();
        op.processing_time(1_004).await.unwrap();
        op.collect(vec![rec("a", 2), rec("c", -1)]).await.unwrap();
        assert!(op.state.get(&"c".to_string()).is_none(), "a key whose timer was deleted holds nothing");
        op.processing_time(1_009).await.unwrap();
        assert!(seen.lock().unwrap().is_empty(), "nothing is due before 1,010");
        assert_eq!(op.state.len(), 2, "keys waiting for a processing-time timer are kept");
        let mut snapshot = TaskSnapshot::default();
        op.barrier(Barrier { id: 1, timestamp_ms: 0 }, &mut snapshot).await.unwrap();
        let uids: Vec<&str> = snapshot.operators.iter().map(|o| o.uid.as_str()).collect();
        assert_eq!(uids, ["p", "p.processing-timers"]);
        // A watermark moves event time only.
        op.watermark(Watermark::At(5_000)).await.unwrap();
        op.processing_time(1_010).await.unwrap();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got, ["At(5000)", "a~1010=3", "b~1010=5"]);
        assert!(op.state.is_empty() && op.processing.is_empty(), "fired keys are dropped");
        op.processing_time(2_000).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3, "each timer fires once");
    }

    #[tokio::test]
    async fn a_delayed_operator_forwards_its_watermark_behind_its_timers_but_the_end_of_input_as_it_is() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = TaskContext::for_test("delayed");
        let next = Box::new(Recorder(seen.clone()));
        let mut op = KeyedEventTime::new("d".into(), ctx, |r: &(String, i64)| r.0.clone(), SumUntil(4), next).unwrap();
        op.collect(vec![("a".to_string(), 1), ("b".to_string(), 30)]).await.unwrap();
        op.watermark(Watermark::At(11)).await.unwrap();
        op.watermark(Watermark::END).await.unwrap();
        let expected = ["a@11=1", "At(7)", "b@40=30", &format!("{:?}", Watermark::END)];
        assert_eq!(*seen.lock().unwrap(), expected);
    }
}
