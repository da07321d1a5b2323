//! A manifest's sources as streams: where records come from, how each is
//! turned into a source record (JSON or Avro from Kafka, rows from
//! generators and files) and checked against the schema on the way in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow_schema::SchemaRef;
use serde_json::json;

use super::bad_records::FieldRules;
use super::event_time::EventTimeSource;
use super::schema::{self, Planned};
use super::{checked, PipelineError};
use crate::connectors::avro_values::AvroValues;
use crate::connectors::csv_records::CsvFormat;
use crate::connectors::file_source::{FileKind, FileSource};
use crate::connectors::generator::generated;
use crate::connectors::kafka::source::split_id;
use crate::connectors::kafka::{KafkaConfig, KafkaDecoder, KafkaRecord, KafkaSource};
use crate::connectors::nexmark::NexmarkConfig;
use crate::connectors::GeneratorSource;
use crate::dataflow::{DataStream, SourceTiming, StreamEnv};
use crate::manifest::{
    AlignmentSpec, ErrorPolicy, EventTimeSpec, FieldSpec, KafkaMetadata, KafkaSourceSpec, KafkaValueFormat,
    PipelineSpec, SourceFormat, SourceKind, SourceSpec, StepKind, StepSpec,
};
use crate::record::{parse_json_object, BadRecord, FieldRule, Row, SourceRecord};
use crate::task::source_task::Source;
use crate::task::TaskError;

/// Where a source's records come from and what they are: the manifest's
/// source at `at`, its state `uid`, its declared `schema` and, with the
/// pipeline's `event_time`, the field holding its records' event time.
pub(super) struct SourceAt<'a> {
    pub uid: &'a str,
    pub source: &'a SourceSpec,
    pub at: &'a str,
    pub schema: Option<&'a Vec<FieldSpec>>,
    pub event_time: Option<(&'a EventTimeSpec, &'a str)>,
    /// `eventTime.expr` planned, and the fields it reads: computes the
    /// event-time field before the watermark is taken.
    pub stamp: Option<(Planned, SchemaRef)>,
}

/// The records of a source, watermarked per split when the pipeline has
/// event time.
pub(super) fn source_stream(env: &StreamEnv, s: SourceAt<'_>) -> Result<DataStream<SourceRecord>, PipelineError> {
    let SourceAt { uid, source, at, schema, event_time, stamp } = s;
    let idle = event_time.and_then(|(t, _)| t.idle_timeout).map(|d| d.get());
    let alignment = event_time.and_then(|(t, _)| t.alignment.clone());
    let timing = SourceTiming { idle_timeout: idle, align_every: alignment.as_ref().map(AlignmentSpec::update_every) };
    let drift = alignment.map(|a| a.max_drift.millis());
    let event_time = event_time.map(|(t, f)| (f.to_string(), t.max_out_of_orderness));
    // With event time, each source watermarks its records per split, from
    // the time an expression computed if there is one.
    let timed = move |source: Box<dyn Source<SourceRecord>>| -> Result<Box<dyn Source<SourceRecord>>, TaskError> {
        let Some((field, bound)) = &event_time else { return Ok(source) };
        let timed = EventTimeSource::new(source, field, bound.millis(), idle).aligned(drift);
        Ok(match &stamp {
            Some((planned, fields)) => Box::new(timed.computing(planned.clone(), fields.clone())?),
            None => Box::new(timed),
        })
    };
    let uid_owned = uid.to_string();
    Ok(match source.kind().map_err(|e| PipelineError::Invalid(format!("{at}: {e}")))? {
        SourceKind::Generator(g) => {
            let g = g.clone();
            env.source_timed(uid, timing, move |ctx, restored| {
                let (keys, splits) = (g.keys, g.splits.max(1));
                let step = g.timestamp_step.map(|d| d.get().as_millis() as u64);
                let make = Arc::new(move |seq: u64| {
                    let (key, value) = generated(seq, keys);
                    let mut row = json!({"seq": seq, "key": format!("k{key}"), "value": value});
                    if let (Some(step), Some(fields)) = (step, row.as_object_mut()) {
                        fields.insert("ts".into(), json!(seq.saturating_mul(step)));
                    }
                    SourceRecord { origin: None, split: seq % u64::from(splits), row: Ok(row) }
                });
                let src = GeneratorSource::new(ctx, restored, g.splits, g.count, g.rate, make)?;
                timed(Box::new(src))
            })
        }
        SourceKind::Nexmark(n) => {
            let n = n.clone();
            env.source_timed(uid, timing, move |ctx, restored| {
                let config = NexmarkConfig { events_per_second: n.events_per_second };
                let splits = u64::from(n.splits.max(1));
                let make = Arc::new(move |seq: u64| SourceRecord {
                    origin: None,
                    split: seq % splits,
                    row: Ok(config.event(seq)),
                });
                let src = GeneratorSource::new(ctx, restored, n.splits, n.count, n.rate, make)?;
                timed(Box::new(src))
            })
        }
        SourceKind::File(f) => {
            let path = PathBuf::from(&f.path);
            let kind = match (f.format.columnar(), f.format, schema) {
                (Some(format), _, _) => FileKind::Columnar(format),
                (None, SourceFormat::Csv, Some(fields)) => FileKind::Csv(CsvFormat::new(fields, f.csv.as_ref())),
                _ => FileKind::JsonLines,
            };
            env.source_timed(uid, timing, move |ctx, restored| {
                timed(Box::new(FileSource::new(ctx, &uid_owned, restored, &path, kind.clone())?))
            })
        }
        SourceKind::Kafka(k) => {
            let (spec, at) = (k.clone(), format!("{at}.kafka"));
            env.source_timed(uid, timing, move |ctx, _restored| {
                // Every subtask sees every partition's position: partitions
                // are owned by a rule, not dealt out with the state.
                let config = KafkaConfig::from_source_spec(&spec, &at)?;
                let decode = kafka_decoder(&spec, &at)?;
                timed(Box::new(KafkaSource::new(ctx, &uid_owned, config, decode)?))
            })
        }
    })
}

/// Source records checked by `rules` into rows, those that fail going to
/// the error policy under state `uid` (dead letters named `prefix`).
pub(super) fn checked_source(
    env: &StreamEnv,
    source: DataStream<SourceRecord>,
    uid: &str,
    prefix: &str,
    rules: &[FieldRule],
    errors: &ErrorPolicy,
) -> DataStream<Row> {
    let rules = rules.to_vec();
    checked(env, source, uid, prefix, errors, move || Ok(FieldRules(rules.clone())))
}

/// Kafka records whose values are JSON objects or Avro records as `spec`
/// says, with the metadata fields asked for; anything else is a bad record
/// that names its partition and offset. One per subtask: the Avro decoder
/// keeps state between values.
fn kafka_decoder(spec: &KafkaSourceSpec, at: &str) -> Result<KafkaDecoder<SourceRecord>, TaskError> {
    let metadata = spec.metadata.clone();
    let avro = match (&spec.format, &spec.avro) {
        (KafkaValueFormat::Avro, Some(avro)) => Some(Mutex::new(
            AvroValues::new(avro).map_err(|e| TaskError::source(at, format!("{at}.avro.schema: {e}")))?,
        )),
        _ => None,
    };
    Ok(Arc::new(move |r: &KafkaRecord<'_>| {
        let origin = format!("{}/{}@{}", r.topic, r.partition, r.offset);
        let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
        let row = match (r.value, &avro) {
            (None, _) => {
                Err(BadRecord { origin: origin.clone(), raw: String::new(), reason: "no value (a tombstone)".into() })
            }
            (Some(value), Some(avro)) => {
                // Poisoned only if a decode panicked, which may have left
                // the decoder inside a record: this value fails, and the
                // decoder is built afresh for the next.
                let decoded = match avro.lock() {
                    Ok(mut avro) => avro.decode(value),
                    Err(poisoned) => {
                        let mut avro = poisoned.into_inner();
                        avro.reset().and(Err("the Avro decoder panicked on this value".into()))
                    }
                };
                decoded.map_err(|reason| BadRecord { origin: origin.clone(), raw: hex(value), reason })
            }
            (Some(value), None) => match std::str::from_utf8(value) {
                Err(e) => Err(BadRecord {
                    origin: origin.clone(),
                    raw: text(r.value).unwrap_or_default(),
                    reason: format!("not UTF-8 text: {e}"),
                }),
                Ok(value) => parse_json_object(value, origin.clone()),
            },
        };
        let row = row.map(|mut row| {
            if let Some(fields) = row.as_object_mut() {
                for m in &metadata {
                    let value = match m {
                        KafkaMetadata::Topic => json!(r.topic),
                        KafkaMetadata::Partition => json!(r.partition),
                        KafkaMetadata::Offset => json!(r.offset),
                        KafkaMetadata::Timestamp => json!(r.timestamp_ms),
                        KafkaMetadata::Key => json!(text(r.key)),
                        KafkaMetadata::Headers => {
                            r.headers.iter().map(|(k, v)| (k.to_string(), json!(text(*v)))).collect()
                        }
                    };
                    fields.insert(m.field().to_string(), value);
                }
            }
            row
        });
        SourceRecord { origin: Some(origin), split: split_id(r.topic, r.partition), row }
    }))
}

/// Bytes as lowercase hex, how a binary value that is a bad record is kept.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What records must carry for the steps up to the first aggregate; later
/// steps read the aggregate's own output, which always has its fields.
/// Checked where records enter, except what a keyBy or aggregate after a
/// filter, flatten or lookup needs: those are checked on the rows the filter passes (the
/// second list), so that a record the filter drops (a person among bids)
/// is not called bad for lacking a field the bids have.
pub(super) fn field_rules(pipeline: &PipelineSpec, steps: &[StepSpec]) -> (Vec<FieldRule>, Vec<FieldRule>) {
    let mut entry = schema::declared(pipeline);
    entry.extend(pipeline.event_time.iter().map(|t| FieldRule::EventTime(t.field.clone())));
    let mut after_filter = Vec::new();
    let mut filtered = false;
    for step in steps {
        let rules = if filtered { &mut after_filter } else { &mut entry };
        let aggregate = match step.kind() {
            Ok(StepKind::KeyBy(k)) if k.expr.is_some() => continue,
            Ok(StepKind::KeyBy(k)) => {
                rules.push(FieldRule::Key(k.field.clone()));
                continue;
            }
            // Rows after these are not the source's: what later steps
            // need is checked on them, before the keyed step.
            Ok(StepKind::Filter(_) | StepKind::Flatten(_) | StepKind::Lookup(_)) => {
                filtered = true;
                continue;
            }
            Ok(StepKind::Select(_)) => break,
            Ok(StepKind::Aggregate(a)) => a,
            Ok(StepKind::Window(w)) => &w.aggregate,
            Ok(StepKind::Deduplicate(_)) => continue,
            Ok(
                kind @ (StepKind::IntervalJoin(_)
                | StepKind::TemporalJoin(_)
                | StepKind::Join(_)
                | StepKind::WindowJoin(_)),
            ) => {
                if let Some((_, j)) = kind.as_join() {
                    rules.push(FieldRule::Key(j.key().to_string()));
                }
                break;
            }
            Ok(StepKind::TopN(t)) => {
                rules.push(FieldRule::Number(t.order_by.clone()));
                break;
            }
            Err(_) => break,
        };
        rules.extend(aggregate.numeric_fields().map(|f| FieldRule::Number(f.clone())));
        break;
    }
    (entry, after_filter)
}
