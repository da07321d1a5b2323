//! Declared pipelines (`spec.pipeline`) turned into jobs of the typed API.
//!
//! # Layout
//! - [`aggregate`]: running count/sum/min/max/avg, count distinct and
//!   first/last per key.
//! - [`bad_records`]: the error policy for records that cannot be processed.
//! - [`event_time`]: watermarks from the records' timestamps, computed
//!   by an expression or read from a field.
//! - [`flatten`]: one record per element of an array field.
//! - [`join`]: the interval join of two streams by key and event time,
//!   inner or outer.
//! - [`lookup`]: records enriched from a table in a file, by key.
//! - [`regular_join`]: the join of two streams by key alone, each record
//!   kept for its matches to come.
//! - [`expr`]: SQL expressions planned by DataFusion and evaluated over
//!   Arrow record batches.
//! - [`schema`]: the records' schema at each step, and the expressions
//!   type-checked against it before the job starts.
//! - [`sources`]: the manifest's sources as streams of checked rows.
//! - [`sql`]: `spec.pipeline.sql`, one query turned into steps.
//! - [`steps`]: the `filter`, `select` and `keyBy.expr` steps as a collector.
//! - [`temporal_join`]: each record with its key's table version at its
//!   event time, from a second stream.
//! - [`top_n`]: the first `limit` records per key by a numeric field, as
//!   updates, or per window once it is over.
//! - [`window`]: tumbling, sliding and session event-time windows per key.
//! - [`window_join`]: the records of two streams with equal keys in the
//!   same event-time window, inner, outer, semi or anti.
//!
//! Operator uids are `source`, `sink`, `bad-records`, `sink-rejected` and, for each
//! aggregate, the step's `id` or one derived from its content (its keyBy
//! field and aggregates), never from its position: inserting a step before
//! an aggregate leaves its state where it was. A union or join source
//! with id `x` keeps its position as `source-x` and its bad records as
//! `bad-records-x`; a join's `filter` keeps the records it fails on as
//! `source-x-filter`, and those without the key after it as
//! `source-x-keyed`.

pub mod aggregate;
pub mod bad_records;
pub mod event_time;
pub mod expr;
pub mod flatten;
pub mod join;
pub mod lookup;
pub mod regular_join;
pub mod schema;
pub mod sources;
pub mod sql;
pub mod steps;
pub mod temporal_join;
pub mod top_n;
pub mod window;
pub mod window_join;

use std::mem::take;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::connectors::kafka::{KafkaSink, KafkaSinkConfig};
use crate::connectors::object_sink::{ObjectSink, ObjectSinkConfig};
use crate::connectors::postgres::{PgTarget, PostgresSink, PostgresUpsertSink};
use crate::connectors::print::{DiscardSink, StdoutSink};
use crate::connectors::redis::{RedisSink, RedisTarget};
use crate::connectors::FileSink;
use crate::connectors::TwoPhaseCommitCollector;
use crate::dataflow::{BuildError, DataStream, JobGraph, KeyedStream, StreamEnv};
use crate::manifest::{
    AggregateSpec, BadRecordAction, ErrorPolicy, EventTimeSpec, IntervalJoinSpec, JoinedSource, LateRecords,
    PipelineSpec, PostgresSinkMode, RegularJoinSpec, SinkKind, StepKind, StreamJobSpec, TemporalJoinSpec, TimeDomain,
    WindowJoinSpec, WindowSpec,
};
use crate::operators::EventTimeFunction;
use crate::record::{key_of, FieldRule, Rejects, Row};
use crate::task::{Collector, TaskContext, TaskError};
use aggregate::{AggState, Aggregate, WithValues};
use bad_records::{BadRecordPolicy, Check, Checked, FieldRules, RejectingSink};
use flatten::Flatten;
use join::{IntervalJoin, JoinKeys, Sided};
use lookup::Lookup;
use regular_join::RegularJoin;
use schema::Planned;
use sources::{checked_source, source_stream, SourceAt};
use steps::ExprStep;
use temporal_join::{LatestJoin, TemporalJoin};
use top_n::{TopN, WindowTopN};
use window::{Deduplicate, LateTo, Routed, SplitLate, WindowAggregate};
use window_join::WindowJoin;

/// The state, and the dead letters' file prefix, of rows a sink refused.
const SINK_REJECTED: &str = "sink-rejected";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("spec.pipeline: {0}")]
    Invalid(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("spec.program: {0}")]
    Program(String),
}

/// The job a manifest declares: its `pipeline` or its `program`.
pub fn build(spec: &StreamJobSpec) -> Result<JobGraph, PipelineError> {
    match (&spec.pipeline, &spec.program) {
        (Some(pipeline), None) => build_pipeline(spec, pipeline),
        (None, Some(program)) => crate::programs::build(spec, program).map_err(PipelineError::Program),
        _ => Err(PipelineError::Invalid("expected exactly one of pipeline, program".into())),
    }
}

fn build_pipeline(spec: &StreamJobSpec, pipeline: &PipelineSpec) -> Result<JobGraph, PipelineError> {
    let env = StreamEnv::new(spec.parallelism, spec.max_parallelism);
    let time = pipeline.event_time.as_ref().map(|t| (t, t.field.as_str()));
    let (schema, at) = (pipeline.schema.as_ref(), "spec.pipeline.source");
    let steps = pipeline.planned_steps().map_err(PipelineError::Invalid)?;
    let mut typed = schema::type_steps(pipeline, &steps);
    if !typed.errors.is_empty() {
        return Err(PipelineError::Invalid(steps.relabeled(typed.errors).join("; ")));
    }
    // Planned once, with the steps: the sources stamp records with it.
    let stamp = typed.event_time.take();
    let main = SourceAt { uid: "source", source: &pipeline.source, at, schema, event_time: time, stamp: stamp.clone() };
    let source = source_stream(&env, main)?;

    let (rules, after_filter) = sources::field_rules(pipeline, &steps);
    let after_filter = Some(after_filter).filter(|r| !r.is_empty());
    let mut stream = checked_source(&env, source, "bad-records", "dead-letter", &rules, &spec.error_policy);
    // The union's sources, until they meet the main one: at the first
    // keyed step's shuffle when no step comes before it, else in a
    // rebalance before the first step that changes records.
    let mut others = Vec::new();
    for (i, other) in pipeline.union.iter().enumerate() {
        let (uid, at) = (other.uid(), format!("spec.pipeline.union[{i}]"));
        let at = SourceAt { uid: &uid, source: other, at: &at, schema, event_time: time, stamp: stamp.clone() };
        let source = source_stream(&env, at)?;
        let bad = format!("bad-records-{}", other.id.as_deref().unwrap_or_default());
        others.push(checked_source(&env, source, &bad, &bad, &rules, &spec.error_policy));
    }

    let mut pending = Pending { others, after_filter };
    let mut key_field: Option<String> = None;
    for (i, (step, (input, planned))) in steps.iter().zip(typed.steps).enumerate() {
        let keyed_next = matches!(step.kind(), Ok(StepKind::KeyBy(k)) if k.expr.is_none())
            || matches!(
                step.kind(),
                Ok(StepKind::Aggregate(_)
                    | StepKind::Window(_)
                    | StepKind::TopN(_)
                    | StepKind::Deduplicate(_)
                    | StepKind::IntervalJoin(_)
                    | StepKind::TemporalJoin(_)
                    | StepKind::Join(_)
                    | StepKind::WindowJoin(_))
            );
        if !keyed_next {
            stream = pending.merged(stream);
        }
        if let (Some(planned), Some(input)) = (planned, &input) {
            let (kind, content) = match &planned {
                Planned::Filter(c) => ("filter", json!({"filter": c.sql})),
                Planned::Select(exprs, _) => {
                    ("select", json!({"select": exprs.iter().map(|c| &c.sql).collect::<Vec<_>>()}))
                }
                Planned::KeyByExpr(c, field) => ("key-by", json!({"keyBy": field, "expr": c.sql})),
            };
            let uid = step.id.clone().unwrap_or_else(|| content_id(kind, &content));
            let (planned, input) = planned.projected(input).map_err(PipelineError::Invalid)?;
            let at = steps.path(i);
            stream = checked(&env, stream, &uid, &uid, &spec.error_policy, move || {
                let batcher = expr::Batcher::new(input.clone())
                    .map_err(|reason| TaskError::User { function: at.clone(), reason })?;
                Ok(ExprStep::new(at.clone(), planned.clone(), batcher))
            });
        }
        match step.kind().map_err(PipelineError::Invalid)? {
            StepKind::Filter(_) | StepKind::Select(_) => {}
            StepKind::Flatten(f) => {
                let uid = step.id.clone().unwrap_or_else(|| content_id("flatten", &json!({"flatten": f})));
                let (at, f) = (steps.path(i), f.clone());
                stream = checked(&env, stream, &uid, &uid, &spec.error_policy, move || {
                    Ok(Flatten::new(at.clone(), &f.field, f.ty))
                });
            }
            StepKind::Lookup(l) => {
                let uid = step.id.clone().unwrap_or_else(|| content_id("lookup", &json!({"lookup": l})));
                let (at, l) = (steps.path(i), l.clone());
                stream = checked(&env, stream, &uid, &uid, &spec.error_policy, move || Lookup::new(&l, at.clone()));
            }
            StepKind::KeyBy(k) => key_field = Some(k.field.clone()),
            StepKind::Aggregate(a) => {
                let Some(field) = key_field.take() else { continue };
                let keyed = pending.keyed(&env, stream, &field, &spec.error_policy);
                let id = step.id.clone().unwrap_or_else(|| aggregate_id(&field, a));
                stream = if a.by_value() {
                    keyed.process(&id, Aggregate::<WithValues>::new(&field, a))
                } else {
                    keyed.process(&id, Aggregate::<AggState>::new(&field, a))
                };
            }
            StepKind::Window(w) => {
                let (Some(field), Some(time)) = (key_field.take(), &pipeline.event_time) else { continue };
                let keyed = pending.keyed(&env, stream, &field, &spec.error_policy);
                let id = step.id.clone().unwrap_or_else(|| window_id(&field, &time.field, w));
                let (at, errors) = (steps.path(i), &spec.error_policy);
                stream = if w.aggregate.by_value() {
                    event_time_step(&env, keyed, &id, at, time, errors, |late| {
                        WindowAggregate::<WithValues>::new(&field, &time.field, w, late)
                    })
                } else {
                    event_time_step(&env, keyed, &id, at, time, errors, |late| {
                        WindowAggregate::<AggState>::new(&field, &time.field, w, late)
                    })
                };
            }
            kind @ (StepKind::IntervalJoin(_)
            | StepKind::TemporalJoin(_)
            | StepKind::Join(_)
            | StepKind::WindowJoin(_)) => {
                let (j, joining): (&dyn JoinedSource, _) = match (kind, &pipeline.event_time) {
                    (StepKind::TemporalJoin(t), _) if t.time == TimeDomain::ProcessingTime => (t, Joining::Latest(t)),
                    (StepKind::Join(r), time) => (r, Joining::Regular(r, time.as_ref())),
                    (StepKind::IntervalJoin(j), Some(time)) => (j, Joining::Timed(Join::Interval(j), time)),
                    (StepKind::TemporalJoin(t), Some(time)) => (t, Joining::Timed(Join::Temporal(t), time)),
                    (StepKind::WindowJoin(w), Some(time)) => (w, Joining::Timed(Join::Window(w), time)),
                    _ => continue,
                };
                // The pipeline's event time and the other source's field of it.
                let times = match joining {
                    Joining::Latest(_) | Joining::Regular(_, None) => None,
                    Joining::Timed(_, time) | Joining::Regular(_, Some(time)) => {
                        Some((time, j.event_time_field(&time.field)))
                    }
                };
                let at = steps.path(i);
                let (uid, source_at) = (j.source().uid(), format!("{at}.source"));
                let other = SourceAt {
                    uid: &uid,
                    source: j.source(),
                    at: &source_at,
                    schema: j.schema(),
                    event_time: times,
                    stamp: None,
                };
                let other = source_stream(&env, other)?;
                let mut rules = schema::rules_of(j.schema().map(Vec::as_slice).unwrap_or_default());
                rules.extend(times.map(|(_, field)| FieldRule::EventTime(field.into())));
                let bad = format!("bad-records-{}", j.source().id.as_deref().unwrap_or_default());
                let key_rule = FieldRule::Key(j.other_key().into());
                let other = match schema::joined_filter(&at, j).map_err(PipelineError::Invalid)? {
                    None => {
                        rules.push(key_rule);
                        checked_source(&env, other, &bad, &bad, &rules, &spec.error_policy)
                    }
                    // Filtered first: a record it drops (a bid among
                    // persons) is not bad for lacking the key.
                    Some((planned, input)) => {
                        let other = checked_source(&env, other, &bad, &bad, &rules, &spec.error_policy);
                        let uid = format!("{}-filter", j.source().uid());
                        let filter_at = format!("{at}.filter");
                        let filtered = checked(&env, other, &uid, &uid, &spec.error_policy, move || {
                            let batcher = expr::Batcher::new(input.clone())
                                .map_err(|reason| TaskError::User { function: filter_at.clone(), reason })?;
                            Ok(ExprStep::new(filter_at.clone(), planned.clone(), batcher))
                        });
                        let uid = format!("{}-keyed", j.source().uid());
                        checked(&env, filtered, &uid, &uid, &spec.error_policy, move || {
                            Ok(FieldRules(vec![key_rule.clone()]))
                        })
                    }
                }
                .map(Sided::Other);
                let this = checked_after_filter(&env, stream, pending.after_filter.take(), j.key(), &spec.error_policy)
                    .map(Sided::This);
                let keys = JoinKeys { this: j.key().into(), other: j.other_key().into() };
                let mut inputs: Vec<DataStream<Sided>> =
                    take(&mut pending.others).into_iter().map(|o| o.map(Sided::This)).collect();
                inputs.push(other);
                let keyed = this.union(inputs).key_by(move |r: &Sided| keys.of(r));
                stream = match joining {
                    Joining::Regular(r, time) => {
                        // The TTL changes how long records stay, not what
                        // they are: a job given one keeps its state.
                        let content = json!({"join": {"source": r.source.id, "key": r.key,
                            "otherKey": r.other_key(), "eventTime": time.map(|t| &t.field)}});
                        let id = step.id.clone().unwrap_or_else(|| content_id("join", &content));
                        keyed.process_event_time(&id, RegularJoin::new(r, time.map(|t| t.field.as_str())))
                    }
                    Joining::Latest(t) => {
                        let content = json!({"temporalJoin": {"source": t.source.id, "key": t.key,
                            "otherKey": t.other_key(), "type": t.join_type, "time": t.time}});
                        let id = step.id.clone().unwrap_or_else(|| content_id("temporal-join", &content));
                        keyed.process_event_time(&id, LatestJoin::new(t))
                    }
                    Joining::Timed(Join::Temporal(t), time) => {
                        let content = json!({"temporalJoin": {"source": t.source.id, "key": t.key,
                            "otherKey": t.other_key(), "type": t.join_type}});
                        let id = step.id.clone().unwrap_or_else(|| content_id("temporal-join", &content));
                        event_time_step(&env, keyed, &id, at, time, &spec.error_policy, |late| {
                            TemporalJoin::new(t, &time.field, late)
                        })
                    }
                    Joining::Timed(Join::Interval(j), time) => {
                        let fields = input.iter().flat_map(|s| s.fields().iter().map(|f| f.name().clone())).collect();
                        // The type is in the id: the waiting records' state changed
                        // with outer joins, and old state is refused by name.
                        let content = json!({"intervalJoin": {"source": j.source.id, "key": j.key, "otherKey": j.other_key(),
                            "before": j.before, "after": j.after, "type": j.join_type}});
                        let id = step.id.clone().unwrap_or_else(|| content_id("interval-join", &content));
                        event_time_step(&env, keyed, &id, at, time, &spec.error_policy, |late| {
                            IntervalJoin::new(j, &time.field, fields, late)
                        })
                    }
                    Joining::Timed(Join::Window(w), time) => {
                        let fields = input.iter().flat_map(|s| s.fields().iter().map(|f| f.name().clone())).collect();
                        let content = json!({"windowJoin": {"source": w.source.id, "key": w.key, "otherKey": w.other_key(),
                            "eventTime": time.field, "otherEventTime": w.event_time_field(&time.field),
                            "size": w.size, "slide": w.slide}});
                        let id = step.id.clone().unwrap_or_else(|| content_id("window-join", &content));
                        event_time_step(&env, keyed, &id, at, time, &spec.error_policy, |late| {
                            WindowJoin::new(w, &time.field, fields, late)
                        })
                    }
                };
            }
            StepKind::TopN(t) => {
                let Some(field) = key_field.take() else { continue };
                let keyed = pending.keyed(&env, stream, &field, &spec.error_policy);
                let id = step.id.clone().unwrap_or_else(|| content_id("top-n", &json!({"keyBy": field, "topN": t})));
                stream = match &pipeline.event_time {
                    Some(time) if t.per_window || t.window.is_some() => {
                        event_time_step(&env, keyed, &id, steps.path(i), time, &spec.error_policy, |late| {
                            WindowTopN::new(t, &time.field, late)
                        })
                    }
                    _ => keyed.process(&id, TopN::new(t)),
                };
            }
            StepKind::Deduplicate(d) => {
                let (Some(field), Some(time)) = (key_field.take(), &pipeline.event_time) else { continue };
                let keyed = pending.keyed(&env, stream, &field, &spec.error_policy);
                let content = json!({"keyBy": field, "eventTime": time.field, "deduplicate": d});
                let id = step.id.clone().unwrap_or_else(|| content_id("deduplicate", &content));
                stream = event_time_step(&env, keyed, &id, steps.path(i), time, &spec.error_policy, |late| {
                    Deduplicate::new(&time.field, d, late)
                });
            }
        }
    }
    let stream = pending.merged(stream);
    match pipeline.sink.kind().map_err(PipelineError::Invalid)? {
        SinkKind::File(f) if f.is_object_store() => {
            let sink_spec = f.clone();
            env.declare_state("sink");
            sink_with_rejects(&env, stream, &spec.error_policy, move |ctx, rejects| {
                let config = ObjectSinkConfig::from_spec(&sink_spec, "spec.pipeline.sink.file")?;
                let sink = ObjectSink::for_manifest(config, ctx).rejecting(rejects);
                Ok(Box::new(TwoPhaseCommitCollector::new("sink".into(), ctx.clone(), sink)))
            });
        }
        SinkKind::File(f) => {
            let dir = PathBuf::from(&f.path);
            stream.sink_two_phase("sink", move |ctx| Ok(FileSink::<Row>::for_task(dir.clone(), "part", ctx)));
        }
        SinkKind::Postgres(p) => {
            // The password is read where the sink runs (a worker), not
            // wherever the job graph is built.
            let sink_spec = p.clone();
            if p.mode == PostgresSinkMode::TwoPhaseCommit {
                env.declare_state("sink");
            }
            sink_with_rejects(&env, stream, &spec.error_policy, move |ctx, rejects| {
                let target = PgTarget::from_spec(&sink_spec)?;
                Ok(match sink_spec.mode {
                    PostgresSinkMode::TwoPhaseCommit => {
                        let sink = PostgresSink::<Row>::for_task(target, ctx).rejecting(rejects);
                        Box::new(TwoPhaseCommitCollector::new("sink".into(), ctx.clone(), sink))
                    }
                    PostgresSinkMode::Upsert => {
                        Box::new(PostgresUpsertSink::<Row>::new(target, ctx.clone()).rejecting(rejects))
                    }
                })
            });
        }
        SinkKind::Redis(r) => {
            let spec = r.clone();
            stream.sink(move |ctx| {
                let target = RedisTarget::from_spec(&spec)?;
                Ok(Box::new(RedisSink::<Row>::new(target, ctx.clone())) as Box<dyn Collector<Row>>)
            });
        }
        SinkKind::Kafka(k) => {
            let spec = k.clone();
            stream.sink_two_phase("sink", move |ctx| {
                let config = KafkaSinkConfig::from_spec(&spec, "spec.pipeline.sink.kafka")?;
                Ok(KafkaSink::<Row>::new(config, ctx))
            });
        }
        SinkKind::Stdout(_) => {
            stream.sink(|ctx| Ok(Box::new(StdoutSink::<Row>::new(ctx.clone())) as Box<dyn Collector<Row>>));
        }
        SinkKind::Discard => {
            stream.sink(|ctx| Ok(Box::new(DiscardSink::<Row>::new(ctx.clone())) as Box<dyn Collector<Row>>));
        }
    }
    Ok(env.build()?)
}

/// An event-time step (`window`, `deduplicate`) after `keyed`, built by
/// `make` with where its late records go: with `lateRecords: ErrorPolicy`
/// to the error policy (with the step at `at` as their origin; the dead
/// letters are the state of `<id>-late`), else dropped and counted.
fn event_time_step<I, F>(
    env: &StreamEnv,
    keyed: KeyedStream<String, I>,
    id: &str,
    at: String,
    time: &EventTimeSpec,
    errors: &ErrorPolicy,
    make: impl FnOnce(LateTo) -> F,
) -> DataStream<Row>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    F: EventTimeFunction<String, I, Routed> + Sync,
{
    if time.late_records == LateRecords::Drop {
        return keyed.process_event_time(id, make(LateTo(None))).flat_map(|r: Routed| r.ok());
    }
    let routed = keyed.process_event_time(id, make(LateTo(Some(at))));
    let uid = format!("{id}-late");
    checked(env, routed, &uid, &uid, errors, || Ok(SplitLate))
}

/// A join step and the time it joins by: event time, or, for a temporal
/// join by processing time, the latest row on arrival.
#[derive(Clone, Copy)]
enum Joining<'a> {
    Latest(&'a TemporalJoinSpec),
    Timed(Join<'a>, &'a EventTimeSpec),
    /// By key alone; the pair's event time with the pipeline's.
    Regular(&'a RegularJoinSpec, Option<&'a EventTimeSpec>),
}

/// A step that joins a second source.
#[derive(Clone, Copy)]
enum Join<'a> {
    Interval(&'a IntervalJoinSpec),
    Temporal(&'a TemporalJoinSpec),
    Window(&'a WindowJoinSpec),
}

/// `stream` through the check `make` builds in each subtask, into rows;
/// the records it refuses go to the error policy under the state `uid`
/// (dead letters named `prefix`). Used for a source's field rules, a step
/// that passes, changes or refuses records (an expression, flatten,
/// lookup) and an event-time step's late records.
fn checked<T, C, F>(
    env: &StreamEnv,
    stream: DataStream<T>,
    uid: &str,
    prefix: &str,
    errors: &ErrorPolicy,
    make: F,
) -> DataStream<Row>
where
    T: Send + 'static,
    C: Check<T> + 'static,
    F: Fn() -> Result<C, TaskError> + Send + Sync + 'static,
{
    env.declare_state(uid);
    let (uid, prefix, errors) = (uid.to_string(), prefix.to_string(), errors.clone());
    stream.transform(move |ctx, next| {
        let policy = BadRecordPolicy::new(&uid, &prefix, ctx.clone(), &errors);
        Ok(Box::new(Checked::new(make()?, policy, next)) as Box<dyn Collector<T>>)
    })
}

/// Ends `stream` in the sink `make` builds, handing it a list for the rows
/// it refuses (a type mismatch, a violated constraint), which then go to
/// the error policy; unless the policy fails the job anyway, when the
/// sink's own error does.
fn sink_with_rejects<F>(env: &StreamEnv, stream: DataStream<Row>, errors: &ErrorPolicy, make: F)
where
    F: Fn(&TaskContext, Option<Rejects>) -> Result<Box<dyn Collector<Row>>, TaskError> + Send + Sync + 'static,
{
    let rejecting = errors.on_bad_record != BadRecordAction::Fail;
    if rejecting {
        env.declare_state(SINK_REJECTED);
    }
    let errors = errors.clone();
    stream.sink(move |ctx| {
        let rejects: Option<Rejects> = rejecting.then(Rejects::default);
        let sink = make(ctx, rejects.clone())?;
        Ok(match rejects {
            Some(rejects) => {
                let policy = BadRecordPolicy::new(SINK_REJECTED, SINK_REJECTED, ctx.clone(), &errors);
                Box::new(RejectingSink::new(policy, rejects, sink))
            }
            None => sink,
        })
    });
}

/// The id of an aggregate without one of its own: a digest of what it
/// computes (its key field and aggregates), so it stays the same when other
/// steps come and go, and changes when the state would mean something else.
fn aggregate_id(key_field: &str, spec: &AggregateSpec) -> String {
    content_id("aggregate", &json!({"keyBy": key_field, "aggregate": spec}))
}

/// `<kind>-<digest of what the step computes>`.
fn content_id(kind: &str, content: &serde_json::Value) -> String {
    format!("{kind}-{:08x}", crc32fast::hash(content.to_string().as_bytes()))
}

/// The id of a window step without one of its own, made as [`aggregate_id`]'s.
fn window_id(key_field: &str, time_field: &str, spec: &WindowSpec) -> String {
    // Lateness changes how long windows are kept, not what they hold: a
    // job given allowedLateness keeps the windows of its checkpoints.
    let spec = WindowSpec { allowed_lateness: None, ..spec.clone() };
    content_id("window", &json!({"keyBy": key_field, "eventTime": time_field, "window": spec}))
}

/// What the first keyed step takes over: the union's sources not yet
/// merged with the main one, and the rules to check on rows a filter
/// passed (see [`sources::field_rules`]).
struct Pending {
    others: Vec<DataStream<Row>>,
    after_filter: Option<Vec<FieldRule>>,
}

impl Pending {
    /// `stream` with the union's sources merged into it, spread round robin.
    fn merged(&mut self, stream: DataStream<Row>) -> DataStream<Row> {
        if self.others.is_empty() {
            return stream;
        }
        stream.union(take(&mut self.others)).rebalance()
    }

    /// `stream` (and the union's sources) keyed by `key_field`.
    fn keyed(
        &mut self,
        env: &StreamEnv,
        stream: DataStream<Row>,
        key_field: &str,
        errors: &ErrorPolicy,
    ) -> KeyedStream<String, Row> {
        let field = key_field.to_string();
        checked_after_filter(env, stream, self.after_filter.take(), key_field, errors)
            .union(take(&mut self.others))
            .key_by(move |row: &Row| key_of(row, &field).unwrap_or_default())
    }
}

/// `stream`, its rows first checked by `rules` when a filter came before
/// the first keyed step (see [`sources::field_rules`]), which keys by `key_field`.
fn checked_after_filter(
    env: &StreamEnv,
    stream: DataStream<Row>,
    rules: Option<Vec<FieldRule>>,
    key_field: &str,
    errors: &ErrorPolicy,
) -> DataStream<Row> {
    let Some(rules) = rules else { return stream };
    let uid = content_id("checked", &json!({"keyBy": key_field}));
    checked(env, stream, &uid, &uid, errors, move || Ok(FieldRules(rules.clone())))
}

/// The error a failing aggregate reports for a non-numeric field.
pub(crate) fn not_a_number(field: &str, key: &str) -> TaskError {
    TaskError::BadRecord { record: format!("with key `{key}`"), reason: format!("field `{field}` is not a number") }
}

/// A record kept in keyed state as JSON text (postcard cannot read a
/// `serde_json::Value` back), read back by the step `function`; `what`
/// names it in the error.
pub(crate) fn read_back(text: &str, function: &str, what: &str) -> Result<Row, TaskError> {
    serde_json::from_str(text).map_err(|e| TaskError::User {
        function: function.into(),
        reason: format!("{what} in keyed state does not read back as JSON: {e}"),
    })
}
