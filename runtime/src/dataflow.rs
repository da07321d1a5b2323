//! The typed job API, in the spirit of Flink's DataStream API, and the job
//! graph it builds.
//!
//! A job is a sequence of stages separated by key-by shuffles. Within a
//! stage, operators are chained into one task per subtask (Flink's operator
//! chaining): records move between them as batches in plain function calls.
//! A `DataStream<T>` is an open stage whose chain so far ends in `T`; adding
//! an operator wraps the function that will build the rest of the chain,
//! so the record types between operators stay static and are erased only
//! at task boundaries.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connectors::{TwoPhaseCommitCollector, TwoPhaseCommitSink};
use crate::operators::event_time::processing_timers_uid;
use crate::operators::stateless::BatchFn;
use crate::operators::{EventTimeFunction, KeyedEventTime, KeyedProcess, KeyedProcessFunction};
use crate::task::input_task::InputTask;
use crate::task::router::{ByKey, Connect, Edge, Partition, RoundRobin, Router};
use crate::task::runnable::RunnableTask;
use crate::task::source_task::{Source, SourceTask};
use crate::task::{Collector, TaskContext, TaskError};

/// Builds the rest of a chain after a point whose records are `T`.
pub type ChainFactory<T> = Arc<dyn Fn(&TaskContext) -> Result<Box<dyn Collector<T>>, TaskError> + Send + Sync>;
/// Builds one subtask of a stage.
pub type TaskFactory = Arc<dyn Fn(TaskContext) -> Result<Box<dyn RunnableTask>, TaskError> + Send + Sync>;
type CloseStage<T> = Box<dyn FnOnce(ChainFactory<T>) -> TaskFactory>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the job has no sink: end every stream with sink()")]
    NoSink,
    #[error("stage {stage} has parallelism {parallelism}, above maxParallelism {max}")]
    ParallelismTooHigh { stage: String, parallelism: u32, max: u32 },
}

/// One stage: a source or a shuffle's receiving side, and its chain.
pub struct StageDef {
    pub name: String,
    pub parallelism: u32,
    pub is_source: bool,
    pub factory: TaskFactory,
}

/// A job ready to run: stages in topological order and the shuffles between them.
pub struct JobGraph {
    pub max_parallelism: u32,
    pub stages: Vec<StageDef>,
    pub edges: Vec<Arc<dyn Connect>>,
    /// The uids of every operator that may hold state: state in a
    /// checkpoint under any other uid would find no operator on restore.
    pub state_uids: Vec<String>,
}

#[derive(Default)]
struct GraphBuilder {
    /// The job's default parallelism.
    parallelism: u32,
    stages: Vec<StageDef>,
    edges: Vec<Arc<dyn Connect>>,
    sinks: usize,
    state_uids: Vec<String>,
}

/// How a source's subtasks take part in event time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceTiming {
    /// How long a subtask may read nothing before it is idle and stops
    /// holding back the job's watermark.
    pub idle_timeout: Option<Duration>,
    /// With watermark alignment: how often a subtask tells the coordinator
    /// its watermark.
    pub align_every: Option<Duration>,
}

/// Where a job is assembled.
pub struct StreamEnv {
    graph: Rc<RefCell<GraphBuilder>>,
    parallelism: u32,
    max_parallelism: u32,
}

impl StreamEnv {
    pub fn new(parallelism: u32, max_parallelism: u32) -> StreamEnv {
        let graph = GraphBuilder { parallelism, ..GraphBuilder::default() };
        StreamEnv { graph: Rc::new(RefCell::new(graph)), parallelism, max_parallelism }
    }

    /// Adds a source. `make` builds subtask `ctx`'s source from its share of
    /// the restored list state (`None` on a fresh start).
    pub fn source<T, F>(&self, uid: &str, make: F) -> DataStream<T>
    where
        T: Send + 'static,
        F: Fn(&TaskContext, Option<Vec<Vec<u8>>>) -> Result<Box<dyn Source<T>>, TaskError> + Send + Sync + 'static,
    {
        self.source_timed(uid, SourceTiming::default(), make)
    }

    /// A source whose subtasks are marked idle for event time after
    /// `timing.idle_timeout` without a record (Flink's `withIdleness`), and
    /// with `timing.align_every` take part in watermark alignment.
    pub fn source_timed<T, F>(&self, uid: &str, timing: SourceTiming, make: F) -> DataStream<T>
    where
        T: Send + 'static,
        F: Fn(&TaskContext, Option<Vec<Vec<u8>>>) -> Result<Box<dyn Source<T>>, TaskError> + Send + Sync + 'static,
    {
        let uid = uid.to_string();
        self.declare_state(&uid);
        let name = uid.clone();
        let make = Arc::new(make);
        let close: CloseStage<T> = Box::new(move |chain: ChainFactory<T>| -> TaskFactory {
            Arc::new(move |ctx: TaskContext| {
                let restored = ctx
                    .restored
                    .as_ref()
                    .filter(|r| r.has_state(&uid))
                    .map(|r| r.list_round_robin(&uid, ctx.subtask() as usize, ctx.parallelism() as usize));
                let source = make(&ctx, restored)?;
                let chain = chain(&ctx)?;
                let SourceTiming { idle_timeout, align_every } = timing;
                let task = SourceTask { ctx, uid: uid.clone(), source, chain, idle_timeout, align_every };
                Ok(Box::new(task) as Box<dyn RunnableTask>)
            })
        });
        DataStream {
            graph: self.graph.clone(),
            name,
            parallelism: self.parallelism,
            input: None,
            is_source: true,
            close,
        }
    }

    /// Says that an operator added with `transform` keeps state under `uid`.
    pub fn declare_state(&self, uid: &str) {
        self.graph.borrow_mut().state_uids.push(uid.to_string());
    }

    pub fn build(self) -> Result<JobGraph, BuildError> {
        let g = self.graph.take();
        if g.sinks == 0 {
            return Err(BuildError::NoSink);
        }
        for s in &g.stages {
            if s.parallelism > self.max_parallelism {
                return Err(BuildError::ParallelismTooHigh {
                    stage: s.name.clone(),
                    parallelism: s.parallelism,
                    max: self.max_parallelism,
                });
            }
        }
        Ok(JobGraph {
            max_parallelism: self.max_parallelism,
            stages: g.stages,
            edges: g.edges,
            state_uids: g.state_uids,
        })
    }
}

/// A stream of `T` inside an open stage.
pub struct DataStream<T> {
    graph: Rc<RefCell<GraphBuilder>>,
    name: String,
    parallelism: u32,
    /// The shuffle feeding this stage, told the stage's parallelism at close.
    input: Option<Arc<dyn Connect>>,
    is_source: bool,
    close: CloseStage<T>,
}

impl<T: Send + 'static> DataStream<T> {
    /// Sets the parallelism of the current stage (default: the job's).
    pub fn set_parallelism(mut self, parallelism: u32) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Appends an operator: `op` wraps the rest of the chain.
    pub fn transform<U, F>(self, op: F) -> DataStream<U>
    where
        U: Send + 'static,
        F: Fn(&TaskContext, Box<dyn Collector<U>>) -> Result<Box<dyn Collector<T>>, TaskError> + Send + Sync + 'static,
    {
        let close_t = self.close;
        let close: CloseStage<U> = Box::new(move |rest: ChainFactory<U>| {
            close_t(Arc::new(move |ctx: &TaskContext| {
                let next = rest(ctx)?;
                op(ctx, next)
            }))
        });
        DataStream {
            graph: self.graph,
            name: self.name,
            parallelism: self.parallelism,
            input: self.input,
            is_source: self.is_source,
            close,
        }
    }

    /// Appends a whole-batch function; map, filter and flat_map are this.
    pub fn map_batch<U, F>(self, f: F) -> DataStream<U>
    where
        U: Send + 'static,
        F: Fn(Vec<T>) -> Result<Vec<U>, TaskError> + Clone + Send + Sync + 'static,
    {
        self.transform(move |_, next| Ok(Box::new(BatchFn::new(f.clone(), next)) as Box<dyn Collector<T>>))
    }

    pub fn map<U, F>(self, f: F) -> DataStream<U>
    where
        U: Send + 'static,
        F: Fn(T) -> U + Clone + Send + Sync + 'static,
    {
        self.map_batch(move |batch: Vec<T>| Ok(batch.into_iter().map(&f).collect()))
    }

    pub fn filter<F>(self, f: F) -> DataStream<T>
    where
        F: Fn(&T) -> bool + Clone + Send + Sync + 'static,
    {
        self.map_batch(move |batch: Vec<T>| Ok(batch.into_iter().filter(|r| f(r)).collect()))
    }

    pub fn flat_map<U, I, F>(self, f: F) -> DataStream<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U>,
        F: Fn(T) -> I + Clone + Send + Sync + 'static,
    {
        self.map_batch(move |batch: Vec<T>| Ok(batch.into_iter().flat_map(&f).collect()))
    }

    fn close_stage(self, rest: ChainFactory<T>) {
        if let Some(edge) = &self.input {
            let index = self.graph.borrow().stages.len();
            edge.set_downstream(index, self.parallelism);
        }
        let factory = (self.close)(rest);
        self.graph.borrow_mut().stages.push(StageDef {
            name: self.name,
            parallelism: self.parallelism,
            is_source: self.is_source,
            factory,
        });
    }

    /// Repartitions by key: the records of one key go to one subtask.
    /// Records cross process boundaries here, so they must serialize.
    pub fn key_by<K, F>(self, key: F) -> KeyedStream<K, T>
    where
        T: Serialize + DeserializeOwned,
        K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> K + Clone + Send + Sync + 'static,
    {
        self.union(Vec::new()).key_by(key)
    }

    /// Spreads the records evenly over the next stage's subtasks, batch by
    /// batch (Flink's `rebalance`).
    pub fn rebalance(self) -> DataStream<T>
    where
        T: Serialize + DeserializeOwned,
    {
        self.union(Vec::new()).rebalance()
    }

    /// This stream and `others` as one: their records meet in the next
    /// shuffle (`key_by` or `rebalance`), whose subtasks read from every
    /// subtask of every one of them and align barriers and watermarks over
    /// all of them (Flink's `union`).
    pub fn union(self, others: Vec<DataStream<T>>) -> UnionStream<T> {
        let mut streams = vec![self];
        streams.extend(others);
        UnionStream { streams }
    }

    /// Ends the stream in a sink built per subtask.
    pub fn sink<F>(self, make: F)
    where
        F: Fn(&TaskContext) -> Result<Box<dyn Collector<T>>, TaskError> + Send + Sync + 'static,
    {
        let graph = self.graph.clone();
        self.close_stage(Arc::new(make));
        graph.borrow_mut().sinks += 1;
    }

    /// Ends the stream in a two-phase-commit sink.
    pub fn sink_two_phase<S, F>(self, uid: &str, make: F)
    where
        S: TwoPhaseCommitSink<T> + 'static,
        F: Fn(&TaskContext) -> Result<S, TaskError> + Send + Sync + 'static,
    {
        let uid = uid.to_string();
        self.graph.borrow_mut().state_uids.push(uid.clone());
        self.sink(move |ctx| {
            let sink = make(ctx)?;
            Ok(Box::new(TwoPhaseCommitCollector::new(uid.clone(), ctx.clone(), sink)) as Box<dyn Collector<T>>)
        });
    }
}

/// Streams of one record type that the next shuffle merges.
pub struct UnionStream<T> {
    /// Never empty: made from a stream and others.
    streams: Vec<DataStream<T>>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> UnionStream<T> {
    /// Ends every stream's stage in one shuffle, partitioned by what
    /// `partition` makes for each sending subtask.
    fn into_edge<P, M>(self, partition: M) -> (Rc<RefCell<GraphBuilder>>, Arc<Edge<T>>, u32)
    where
        P: Partition<T> + 'static,
        M: Fn(&TaskContext) -> P + Clone + Send + Sync + 'static,
    {
        let edge = Edge::<T>::new();
        let graph = match self.streams.first() {
            Some(s) => s.graph.clone(),
            None => Rc::new(RefCell::new(GraphBuilder::default())),
        };
        for stream in self.streams {
            let stage = graph.borrow().stages.len();
            edge.add_upstream(stage, stream.parallelism);
            let (edge, partition) = (edge.clone(), partition.clone());
            stream.close_stage(Arc::new(move |ctx: &TaskContext| {
                let senders = edge.take_senders(stage, ctx.subtask())?;
                let router = Router::new(partition(ctx), senders, ctx.batch_size, ctx.stage.clone());
                Ok(Box::new(router) as Box<dyn Collector<T>>)
            }));
        }
        graph.borrow_mut().edges.push(edge.clone());
        let parallelism = graph.borrow().parallelism;
        (graph, edge, parallelism)
    }

    /// Repartitions every stream's records by key into one keyed stream.
    pub fn key_by<K, F>(self, key: F) -> KeyedStream<K, T>
    where
        K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> K + Clone + Send + Sync + 'static,
    {
        let route = key.clone();
        let (graph, edge, parallelism) =
            self.into_edge(move |ctx: &TaskContext| ByKey::new(route.clone(), ctx.max_parallelism));
        KeyedStream { graph, edge, key: Arc::new(key), parallelism }
    }

    /// Every stream's records, spread evenly over a new stage.
    pub fn rebalance(self) -> DataStream<T> {
        let (graph, edge, parallelism) = self.into_edge(|ctx: &TaskContext| RoundRobin::new(ctx.subtask()));
        let inputs = edge.clone();
        let close: CloseStage<T> = Box::new(move |rest: ChainFactory<T>| -> TaskFactory {
            Arc::new(move |ctx: TaskContext| {
                let inputs = inputs.take_receivers(ctx.subtask())?;
                let chain = rest(&ctx)?;
                Ok(Box::new(InputTask { ctx, inputs, chain }) as Box<dyn RunnableTask>)
            })
        });
        let input: Arc<dyn Connect> = edge;
        DataStream { graph, name: "rebalance".into(), parallelism, input: Some(input), is_source: false, close }
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    graph: Rc<RefCell<GraphBuilder>>,
    edge: Arc<Edge<T>>,
    key: KeyFn<K, T>,
    parallelism: u32,
}

type KeyFn<K, T> = Arc<dyn Fn(&T) -> K + Send + Sync>;

impl<K, T> KeyedStream<K, T>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Runs `function` on every record with the state of its key.
    pub fn process<O, F>(self, uid: &str, function: F) -> DataStream<O>
    where
        O: Send + 'static,
        F: KeyedProcessFunction<K, T, O> + Sync,
    {
        self.keyed_stage(uid, move |uid, ctx, key, next| {
            let op = KeyedProcess::new(uid, ctx, move |r: &T| key(r), function.clone(), next)?;
            Ok(Box::new(op) as Box<dyn Collector<T>>)
        })
    }

    /// Runs `function` on every record with the state and the event-time
    /// and processing-time timers of its key.
    pub fn process_event_time<O, F>(self, uid: &str, function: F) -> DataStream<O>
    where
        K: Ord,
        O: Send + 'static,
        F: EventTimeFunction<K, T, O> + Sync,
    {
        self.graph.borrow_mut().state_uids.push(processing_timers_uid(uid));
        self.keyed_stage(uid, move |uid, ctx, key, next| {
            let op = KeyedEventTime::new(uid, ctx, move |r: &T| key(r), function.clone(), next)?;
            Ok(Box::new(op) as Box<dyn Collector<T>>)
        })
    }

    /// The stage after the shuffle, its chain starting with what `first` builds.
    fn keyed_stage<O, B>(self, uid: &str, first: B) -> DataStream<O>
    where
        O: Send + 'static,
        B: Fn(String, TaskContext, KeyFn<K, T>, Box<dyn Collector<O>>) -> Result<Box<dyn Collector<T>>, TaskError>
            + Send
            + Sync
            + 'static,
    {
        let name = uid.to_string();
        let uid = uid.to_string();
        self.graph.borrow_mut().state_uids.push(uid.clone());
        let edge = self.edge.clone();
        let key = self.key.clone();
        let close: CloseStage<O> = Box::new(move |rest: ChainFactory<O>| -> TaskFactory {
            Arc::new(move |ctx: TaskContext| {
                let inputs = edge.take_receivers(ctx.subtask())?;
                let next = rest(&ctx)?;
                let chain = first(uid.clone(), ctx.clone(), key.clone(), next)?;
                Ok(Box::new(InputTask { ctx, inputs, chain }) as Box<dyn RunnableTask>)
            })
        });
        DataStream {
            graph: self.graph,
            name,
            parallelism: self.parallelism,
            input: Some(self.edge as Arc<dyn Connect>),
            is_source: false,
            close,
        }
    }
}
