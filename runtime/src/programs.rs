//! Jobs written with the typed API and compiled in, chosen by a manifest's
//! `spec.program.entry` (Flink's entry class). A custom image registers its
//! own programs with [`register`] before running the `weir` CLI's commands.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::connectors::generator::generated;
use crate::connectors::print::DiscardSink;
use crate::connectors::{FileSink, GeneratorSource};
use crate::dataflow::{JobGraph, StreamEnv};
use crate::manifest::{ProgramSpec, StreamJobSpec};
use crate::operators::KeyedProcessFunction;
use crate::state::ValueState;
use crate::task::source_task::Source;
use crate::task::{Collector, TaskError};

/// Builds a program's job from the spec (parallelism, ...) and its arguments.
pub type Program = fn(&StreamJobSpec, &BTreeMap<String, String>) -> Result<JobGraph, String>;

fn registry() -> &'static Mutex<HashMap<String, Program>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Program>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut m: HashMap<String, Program> = HashMap::new();
        m.insert("keyed-sum".into(), keyed_sum);
        m.insert("keyed-ballast".into(), keyed_ballast);
        Mutex::new(m)
    })
}

/// Makes `entry` available to manifests.
pub fn register(entry: &str, program: Program) {
    if let Ok(mut r) = registry().lock() {
        r.insert(entry.to_string(), program);
    }
}

pub fn build(spec: &StreamJobSpec, program: &ProgramSpec) -> Result<JobGraph, String> {
    let found = registry().lock().ok().and_then(|r| r.get(&program.entry).copied());
    let Some(build) = found else {
        let known: Vec<String> = registry().lock().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        return Err(format!("entry `{}` is not registered; known entries: {}", program.entry, known.join(", ")));
    };
    build(spec, &program.args)
}

fn arg<T: FromStr>(args: &BTreeMap<String, String>, name: &str, default: T) -> Result<T, String> {
    match args.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("args.{name}: expected a number, got `{v}`")),
    }
}

/// The running sum of the benchmark, written as a Flink user would: a
/// `ValueState` per key, an update per record.
#[derive(Clone)]
pub struct RunningSum;

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SumState {
    sum: ValueState<i64>,
}

impl KeyedProcessFunction<u64, (u64, i64), (u64, i64)> for RunningSum {
    type State = SumState;
    fn process(
        &mut self,
        key: &u64,
        r: (u64, i64),
        s: &mut SumState,
        out: &mut Vec<(u64, i64)>,
    ) -> Result<(), TaskError> {
        let sum = s.sum.value().copied().unwrap_or(0) + r.1;
        s.sum.update(sum);
        out.push((*key, sum));
        Ok(())
    }
}

/// The running sum, plus `bytes` of ballast per key: big keyed state.
#[derive(Clone)]
pub struct RunningSumWithBallast {
    bytes: usize,
}

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct BallastState {
    sum: ValueState<i64>,
    /// A string, so the codec copies it whole rather than byte by byte.
    ballast: String,
}

impl KeyedProcessFunction<u64, (u64, i64), (u64, i64)> for RunningSumWithBallast {
    type State = BallastState;
    fn process(
        &mut self,
        key: &u64,
        r: (u64, i64),
        s: &mut BallastState,
        out: &mut Vec<(u64, i64)>,
    ) -> Result<(), TaskError> {
        if s.ballast.len() != self.bytes {
            let c = char::from(b'a' + (*key % 26) as u8);
            s.ballast = std::iter::repeat_n(c, self.bytes).collect();
        }
        let sum = s.sum.value().copied().unwrap_or(0) + r.1;
        s.sum.update(sum);
        out.push((*key, sum));
        Ok(())
    }
}

/// `keyed-ballast`: `keyed-sum` whose state also holds `stateBytes` (1000)
/// bytes per key, for restore tests and benchmarks of big keyed state
/// (`keys` x `stateBytes` in all). Same args as `keyed-sum` otherwise.
pub fn keyed_ballast(spec: &StreamJobSpec, args: &BTreeMap<String, String>) -> Result<JobGraph, String> {
    let bytes: usize = arg(args, "stateBytes", 1000)?;
    keyed_job(spec, args, RunningSumWithBallast { bytes })
}

/// `keyed-sum`: generated `(key, value)` records, a running sum per key.
/// Args: `keys` (100000), `count` (unbounded), `rate` (0 = unlimited),
/// `splits` (8), `output` (a directory for exactly-once part files; none:
/// records are counted and dropped).
pub fn keyed_sum(spec: &StreamJobSpec, args: &BTreeMap<String, String>) -> Result<JobGraph, String> {
    keyed_job(spec, args, RunningSum)
}

fn keyed_job<F>(spec: &StreamJobSpec, args: &BTreeMap<String, String>, function: F) -> Result<JobGraph, String>
where
    F: KeyedProcessFunction<u64, (u64, i64), (u64, i64)> + Clone + Send + Sync + 'static,
{
    let keys: u64 = arg(args, "keys", 100_000)?;
    let count: u64 = arg(args, "count", 0)?;
    let rate: u64 = arg(args, "rate", 0)?;
    let splits: u32 = arg(args, "splits", 8)?;
    if keys == 0 {
        return Err("args.keys: expected at least 1, got 0".into());
    }
    let env = StreamEnv::new(spec.parallelism, spec.max_parallelism);
    let sums = env
        .source("gen", move |ctx, restored| {
            let make = Arc::new(move |seq: u64| generated(seq, keys));
            let count = Some(count).filter(|c| *c > 0);
            Ok(Box::new(GeneratorSource::new(ctx, restored, splits, count, rate, make)?) as Box<dyn Source<(u64, i64)>>)
        })
        .key_by(|r: &(u64, i64)| r.0)
        .process("sum", function);
    match args.get("output") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            sums.sink_two_phase("out", move |ctx| Ok(FileSink::<(u64, i64)>::for_task(dir.clone(), "part", ctx)));
        }
        None => {
            sums.sink(|ctx| Ok(Box::new(DiscardSink::<(u64, i64)>::new(ctx.clone())) as Box<dyn Collector<(u64, i64)>>))
        }
    }
    env.build().map_err(|e| e.to_string())
}
