//! The records' schema at each step of a declared pipeline, and the
//! expressions planned against it: what `weir run` and the operator check
//! before a job starts, and what the job graph is built from.
//!
//! A schema is known from the source (the generator's fixed fields, or
//! `spec.pipeline.schema` plus any Kafka metadata fields) and after any
//! aggregate or window step (the key, the aggregates and the window
//! bounds). Without a declared schema, a file or Kafka source's records
//! are untyped until the first aggregate, and expression steps there are
//! refused.

use arrow_schema::{DataType, Field, SchemaRef};

use super::expr::{arrow_type, compile, projection, schema_of, Compiled};
use crate::manifest::{
    names_problems, AggregateSpec, EventTimeSpec, FieldSpec, JoinedSource, LookupSpec, OnMissing, PipelineSpec,
    SourceKind, SourceSpec, StepKind, StepSpec, TemporalJoinType, WindowJoinSpec, WindowSpec,
};
use crate::record::FieldRule;

/// What an expression step does, planned.
#[derive(Debug, Clone)]
pub enum Planned {
    Filter(Compiled),
    /// The expressions and the names of the fields they make.
    Select(Vec<Compiled>, Vec<String>),
    /// The key expression and the field its value is written to.
    KeyByExpr(Compiled, String),
}

impl Planned {
    fn exprs(&self) -> Vec<&Compiled> {
        match self {
            Planned::Filter(c) | Planned::KeyByExpr(c, _) => vec![c],
            Planned::Select(exprs, _) => exprs.iter().collect(),
        }
    }

    /// The step planned again over only the fields it reads, and those
    /// fields: what its batches are decoded to.
    pub fn projected(&self, input: &SchemaRef) -> Result<(Planned, SchemaRef), String> {
        let fields = projection(self.exprs(), input);
        let again = |c: &Compiled| compile(&c.sql, &fields);
        let planned = match self {
            Planned::Filter(c) => Planned::Filter(again(c)?),
            Planned::KeyByExpr(c, field) => Planned::KeyByExpr(again(c)?, field.clone()),
            Planned::Select(exprs, names) => {
                Planned::Select(exprs.iter().map(again).collect::<Result<_, _>>()?, names.clone())
            }
        };
        Ok((planned, fields))
    }
}

/// `spec.pipeline.eventTime.expr` planned over the source's records (as
/// a step writing `eventTime.field`), with the fields it reads; `None`
/// without one. Its type must be a timestamp or an integer.
pub fn event_time_expr(pipeline: &PipelineSpec) -> Result<Option<(Planned, SchemaRef)>, String> {
    let at = "spec.pipeline.eventTime.expr";
    let Some(time) = &pipeline.event_time else { return Ok(None) };
    let Some(sql) = &time.expr else { return Ok(None) };
    let Some(schema) = source_schema(pipeline) else {
        return Err(format!("{at}: needs spec.pipeline.schema (the types of the source's fields) to check it"));
    };
    let compiled = compile(sql, &schema).map_err(|e| format!("{at}: {e}"))?;
    let ty = compiled.field.data_type();
    if !(matches!(ty, DataType::Timestamp(_, _)) || ty.is_integer()) {
        return Err(format!(
            "{at}: `{sql}` is {ty}, expected a timestamp or an integer of milliseconds since the epoch"
        ));
    }
    Planned::KeyByExpr(compiled, time.field.clone()).projected(&schema).map(Some).map_err(|e| format!("{at}: {e}"))
}

/// Each step's planned expression (for expression steps) and the schema
/// of the records it reads, or the errors that name each wrong step.
#[derive(Debug, Default)]
pub struct Typed {
    pub steps: Vec<(Option<SchemaRef>, Option<Planned>)>,
    /// `eventTime.expr` planned over the source's fields, and those fields.
    pub event_time: Option<(Planned, SchemaRef)>,
    pub errors: Vec<String>,
}

/// The fields the generator's records have.
fn generator_fields(timestamps: bool) -> Vec<Field> {
    let mut fields = vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
    ];
    if timestamps {
        fields.push(Field::new("ts", DataType::Int64, false));
    }
    fields
}

/// The fields of Nexmark records: `event_type` and the union of a person's,
/// an auction's and a bid's fields, each present only in its kind.
fn nexmark_fields() -> Vec<Field> {
    let mut fields = vec![
        Field::new("event_type", DataType::Int64, false),
        Field::new("dateTime", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ];
    let int = ["id", "initialBid", "reserve", "expires", "seller", "category", "auction", "bidder", "price"];
    let text = ["name", "emailAddress", "creditCard", "city", "state", "itemName", "description", "channel", "url"];
    fields.extend(int.iter().map(|f| Field::new(*f, DataType::Int64, true)));
    fields.extend(text.iter().map(|f| Field::new(*f, DataType::Utf8, true)));
    fields
}

/// The schema of the source's records, if known.
pub fn source_schema(pipeline: &PipelineSpec) -> Option<SchemaRef> {
    schema_of_source(&pipeline.source, pipeline.schema.as_deref())
}

/// The schema of `source`'s records, declared as `schema`, if known.
fn schema_of_source(source: &SourceSpec, schema: Option<&[FieldSpec]>) -> Option<SchemaRef> {
    let declared = |extra: Vec<Field>| {
        schema.map(|fields| {
            let mut all: Vec<Field> =
                fields.iter().map(|f| Field::new(f.name.clone(), arrow_type(f.ty), f.nullable)).collect();
            all.extend(extra);
            schema_of(all)
        })
    };
    match source.kind().ok()? {
        SourceKind::Generator(g) => Some(schema_of(generator_fields(g.timestamp_step.is_some()))),
        SourceKind::Nexmark(_) => Some(schema_of(nexmark_fields())),
        SourceKind::File(_) => declared(Vec::new()),
        SourceKind::Kafka(k) => declared(
            k.metadata
                .iter()
                .filter_map(|m| {
                    let ty = match m {
                        crate::manifest::KafkaMetadata::Topic | crate::manifest::KafkaMetadata::Key => DataType::Utf8,
                        crate::manifest::KafkaMetadata::Headers => return None,
                        _ => DataType::Int64,
                    };
                    Some(Field::new(m.field(), ty, true))
                })
                .collect(),
        ),
    }
}

/// `sql` planned over `schema` as a condition (at `at`, for errors).
fn condition(at: &str, sql: &str, schema: &SchemaRef) -> Result<Compiled, String> {
    match compile(sql, schema) {
        Ok(c) if c.field.data_type() == &DataType::Boolean || c.field.data_type() == &DataType::Null => Ok(c),
        Ok(c) => Err(format!("{at}: expected a boolean condition, got {} from `{sql}`", c.field.data_type())),
        Err(e) => Err(format!("{at}: {e}")),
    }
}

/// A join's `filter` planned over its other source's records (at `at`),
/// with the fields it reads; `None` without one.
pub fn joined_filter(at: &str, j: &dyn JoinedSource) -> Result<Option<(Planned, SchemaRef)>, String> {
    let Some(sql) = j.filter() else { return Ok(None) };
    let Some(schema) = schema_of_source(j.source(), j.schema().map(Vec::as_slice)) else {
        return Err(format!("{at}.filter: needs {at}.schema (the types of the other source's fields) to check it"));
    };
    let c = condition(&format!("{at}.filter"), sql, &schema)?;
    Planned::Filter(c).projected(&schema).map(Some).map_err(|e| format!("{at}.filter: {e}"))
}

/// `field` in `schema`, or an error that lists the fields there are.
fn find<'s>(schema: &'s SchemaRef, field: &str) -> Result<&'s Field, String> {
    schema.field_with_name(field).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        format!("no field `{field}` in the records here (their fields: {})", names.join(", "))
    })
}

/// The schema of an aggregate's rows, and errors for fields it cannot read.
fn aggregated(
    at: &str,
    input: Option<&SchemaRef>,
    key: &str,
    spec: &AggregateSpec,
    window: Option<&WindowSpec>,
) -> (SchemaRef, Vec<String>) {
    let mut errors = Vec::new();
    let mut fields = vec![Field::new(key, DataType::Utf8, false)];
    if let Some(w) = window {
        fields.push(Field::new("window_start", DataType::Int64, false));
        fields.push(Field::new("window_end", DataType::Int64, false));
        if w.early_every.is_some() {
            fields.push(Field::new("final", DataType::Boolean, false));
        }
    }
    if spec.count {
        fields.push(Field::new("count", DataType::Int64, false));
    }
    let typed = |kind: &str, name: &str, errors: &mut Vec<String>| -> DataType {
        let Some(schema) = input else { return DataType::Float64 };
        match find(schema, name) {
            Ok(f) if f.data_type().is_numeric() => f.data_type().clone(),
            Ok(f) => {
                errors.push(format!("{at}.{kind}: field `{name}` is {}, expected a number", f.data_type()));
                DataType::Float64
            }
            Err(e) => {
                errors.push(format!("{at}.{kind}: {e}"));
                DataType::Float64
            }
        }
    };
    for f in &spec.sum {
        let t = typed("sum", f, &mut errors);
        fields.push(Field::new(format!("sum_{f}"), t, false));
    }
    for f in &spec.avg {
        typed("avg", f, &mut errors);
        fields.push(Field::new(format!("avg_{f}"), DataType::Float64, true));
    }
    for f in &spec.min {
        let t = typed("min", f, &mut errors);
        fields.push(Field::new(format!("min_{f}"), t, true));
    }
    for f in &spec.max {
        let t = typed("max", f, &mut errors);
        fields.push(Field::new(format!("max_{f}"), t, true));
    }
    // Values of any type; without a schema, later steps read them as text.
    let mut any = |kind: &str, name: &str| -> DataType {
        match input.map(|schema| find(schema, name)) {
            None => DataType::Utf8,
            Some(Ok(f)) => f.data_type().clone(),
            Some(Err(e)) => {
                errors.push(format!("{at}.{kind}: {e}"));
                DataType::Utf8
            }
        }
    };
    for f in &spec.count_distinct {
        any("countDistinct", f);
        fields.push(Field::new(format!("count_distinct_{f}"), DataType::Int64, false));
    }
    for f in &spec.first {
        let t = any("first", f);
        fields.push(Field::new(format!("first_{f}"), t, true));
    }
    for f in &spec.last {
        let t = any("last", f);
        fields.push(Field::new(format!("last_{f}"), t, true));
    }
    (schema_of(fields), errors)
}

/// Follows the records' schema through `steps` (the pipeline's planned
/// steps), planning each expression; every error names its step
/// (`spec.pipeline.steps[2].filter`).
pub fn type_steps(pipeline: &PipelineSpec, steps: &[StepSpec]) -> Typed {
    let mut typed = Typed::default();
    match (&pipeline.schema, pipeline.source.kind()) {
        (Some(_), Ok(SourceKind::Generator(_))) => typed.errors.push(
            "spec.pipeline.schema: the generator's records have a fixed schema (seq, key, value, and ts with timestampStep); remove it"
                .into(),
        ),
        (Some(_), Ok(SourceKind::Nexmark(_))) => typed.errors.push(
            "spec.pipeline.schema: Nexmark records have a fixed schema (event_type and the person, auction and bid fields); remove it"
                .into(),
        ),
        _ => {}
    }
    if let Some(fields) = &pipeline.schema {
        typed.errors.extend(names_problems("spec.pipeline.schema", fields));
    }
    let mut current = source_schema(pipeline);
    match (&current, &pipeline.event_time) {
        (_, Some(EventTimeSpec { expr: Some(_), field, .. })) => match event_time_expr(pipeline) {
            Ok(Some(stamp)) => {
                let ty = stamp.0.exprs().first().map(|c| c.field.data_type().clone());
                if let (Some(schema), Some(ty)) = (&current, ty) {
                    let mut fields: Vec<Field> =
                        schema.fields().iter().filter(|f| f.name() != field).map(|f| f.as_ref().clone()).collect();
                    fields.push(Field::new(field.clone(), ty, false));
                    current = Some(schema_of(fields));
                }
                typed.event_time = Some(stamp);
            }
            Ok(None) => {}
            Err(e) => typed.errors.push(e),
        },
        (Some(schema), Some(time)) => {
            if let Err(e) = find(schema, &time.field) {
                typed.errors.push(format!("spec.pipeline.eventTime.field: {e}"));
            }
        }
        _ => {}
    }
    let mut key: Option<String> = None;
    for (i, step) in steps.iter().enumerate() {
        let input = current.clone();
        let mut planned = None;
        let needs_schema = |what: &str| {
            format!(
                "spec.pipeline.steps[{i}].{what}: needs spec.pipeline.schema (the types of the source's fields) to check its expression"
            )
        };
        match step.kind() {
            Err(_) => {}
            Ok(StepKind::KeyBy(k)) => {
                key = Some(k.field.clone());
                match (&k.expr, &current) {
                    (None, Some(schema)) => {
                        if let Err(e) = find(schema, &k.field) {
                            typed.errors.push(format!("spec.pipeline.steps[{i}].keyBy.field: {e}"));
                        }
                    }
                    (None, None) => {}
                    (Some(_), None) => typed.errors.push(needs_schema("keyBy.expr")),
                    (Some(sql), Some(schema)) => match compile(sql, schema) {
                        Ok(c) => {
                            let mut fields: Vec<Field> = schema
                                .fields()
                                .iter()
                                .filter(|f| f.name() != &k.field)
                                .map(|f| f.as_ref().clone())
                                .collect();
                            fields.push(Field::new(k.field.clone(), c.field.data_type().clone(), true));
                            current = Some(schema_of(fields));
                            planned = Some(Planned::KeyByExpr(c, k.field.clone()));
                        }
                        Err(e) => typed.errors.push(format!("spec.pipeline.steps[{i}].keyBy.expr: {e}")),
                    },
                }
            }
            Ok(StepKind::Aggregate(a)) => {
                let at = format!("spec.pipeline.steps[{i}].aggregate");
                let (out, errors) = aggregated(&at, current.as_ref(), key.as_deref().unwrap_or("key"), a, None);
                typed.errors.extend(errors);
                current = Some(out);
            }
            Ok(StepKind::Window(w)) => {
                let at = format!("spec.pipeline.steps[{i}].window.aggregate");
                let (out, errors) =
                    aggregated(&at, current.as_ref(), key.as_deref().unwrap_or("key"), &w.aggregate, Some(w));
                typed.errors.extend(errors);
                current = Some(out);
            }
            Ok(StepKind::Deduplicate(_)) => {}
            Ok(StepKind::TopN(t)) => {
                if let Some(schema) = &current {
                    match find(schema, &t.order_by) {
                        Ok(f) if f.data_type().is_numeric() => {}
                        Ok(f) => typed.errors.push(format!(
                            "spec.pipeline.steps[{i}].topN.orderBy: field `{}` is {}, expected a number",
                            t.order_by,
                            f.data_type()
                        )),
                        Err(e) => typed.errors.push(format!("spec.pipeline.steps[{i}].topN.orderBy: {e}")),
                    }
                    for bound in ["window_start", "window_end"].into_iter().filter(|_| t.per_window) {
                        match find(schema, bound) {
                            Ok(f) if f.data_type() == &DataType::Int64 => {}
                            Ok(f) => typed.errors.push(format!(
                                "spec.pipeline.steps[{i}].topN.perWindow: field `{bound}` is {}, expected the \
                                 window step's bound (milliseconds since the epoch)",
                                f.data_type()
                            )),
                            Err(e) => typed.errors.push(format!("spec.pipeline.steps[{i}].topN.perWindow: {e}")),
                        }
                    }
                    let rank = t.rank_field();
                    let mut added = vec![rank];
                    if t.window.is_some() {
                        added.extend(["window_start", "window_end"]);
                    }
                    let mut fields: Vec<Field> = schema
                        .fields()
                        .iter()
                        .filter(|f| !added.contains(&f.name().as_str()))
                        .map(|f| f.as_ref().clone())
                        .collect();
                    fields.extend(added.into_iter().map(|name| Field::new(name, DataType::Int64, false)));
                    current = Some(schema_of(fields));
                }
            }
            Ok(StepKind::Flatten(f)) => {
                if let Some(schema) = &current {
                    if let Ok(declared) = schema.field_with_name(&f.field) {
                        typed.errors.push(format!(
                            "spec.pipeline.steps[{i}].flatten.field: `{}` is {} here, not an array; leave an array field \
                             out of spec.pipeline.schema and give its elements' type as flatten.type",
                            f.field,
                            declared.data_type()
                        ));
                    } else if let Some(ty) = f.ty {
                        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                        fields.push(Field::new(f.field.clone(), arrow_type(ty), false));
                        current = Some(schema_of(fields));
                    }
                }
            }
            Ok(
                kind @ (StepKind::IntervalJoin(_)
                | StepKind::TemporalJoin(_)
                | StepKind::Join(_)
                | StepKind::WindowJoin(_)),
            ) => {
                if let Some(schema) = &current {
                    let time = pipeline.event_time.as_ref().map_or("", |t| t.field.as_str());
                    let at = kind.as_join().map(|(name, _)| format!("spec.pipeline.steps[{i}].{name}"));
                    let at = at.unwrap_or_default();
                    let (out, errors) = match kind {
                        StepKind::IntervalJoin(j) => {
                            let nulls = (j.join_type.keeps_other(), j.join_type.keeps_this());
                            joined(&at, schema, j, Some(time), nulls)
                        }
                        StepKind::TemporalJoin(j) => {
                            // By processing time the table has no event-time field.
                            let time = j.time.is_event_time().then_some(time);
                            joined(&at, schema, j, time, (false, j.join_type == TemporalJoinType::Left))
                        }
                        StepKind::Join(j) => {
                            let time = pipeline.event_time.as_ref().map(|t| t.field.as_str());
                            joined(&at, schema, j, time, (false, false))
                        }
                        StepKind::WindowJoin(j) => window_joined(&at, schema, j, time),
                        _ => (schema.clone(), Vec::new()),
                    };
                    typed.errors.extend(errors);
                    current = Some(out);
                }
            }
            Ok(StepKind::Lookup(l)) => {
                if let Some(schema) = &current {
                    let at = format!("spec.pipeline.steps[{i}].lookup");
                    let (out, errors) = looked_up(&at, schema, l);
                    typed.errors.extend(errors);
                    current = Some(out);
                }
            }
            Ok(StepKind::Filter(sql)) => match &current {
                None => typed.errors.push(needs_schema("filter")),
                Some(schema) => match condition(&format!("spec.pipeline.steps[{i}].filter"), sql, schema) {
                    Ok(c) => planned = Some(Planned::Filter(c)),
                    Err(e) => typed.errors.push(e),
                },
            },
            Ok(StepKind::Select(exprs)) => match &current {
                None => typed.errors.push(needs_schema("select")),
                Some(schema) => {
                    let (compiled, names) = select(i, exprs, schema, &mut typed.errors);
                    if compiled.len() == exprs.len() {
                        let fields = compiled.iter().zip(&names).map(|(c, n)| c.field.clone().with_name(n.clone()));
                        current = Some(schema_of(fields));
                        planned = Some(Planned::Select(compiled, names));
                    }
                }
            },
        }
        if !matches!(step.kind(), Ok(StepKind::KeyBy(_) | StepKind::Filter(_))) {
            key = None;
        }
        typed.steps.push((input, planned));
    }
    typed
}

/// The schema after a lookup into the table `l` from records of `schema`:
/// the table's fields other than its key added (nullable when a miss keeps
/// the record), and what does not fit.
fn looked_up(at: &str, schema: &SchemaRef, l: &LookupSpec) -> (SchemaRef, Vec<String>) {
    let mut errors = Vec::new();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    match (find(schema, l.field()), l.schema.iter().find(|f| f.name == l.key)) {
        (Err(e), _) => errors.push(format!("{at}.field: {e}")),
        (Ok(on), Some(key)) if on.data_type() != &arrow_type(key.ty) => errors.push(format!(
            "{at}.field: field `{}` is {}, but the table's key `{}` is {}; they must be of one type to match",
            l.field(),
            on.data_type(),
            l.key,
            arrow_type(key.ty)
        )),
        _ => {}
    }
    for f in l.schema.iter().filter(|f| f.name != l.key) {
        if schema.field_with_name(&f.name).is_ok() {
            errors.push(format!(
                "{at}.schema: the table's field `{}` is also a field of the records; rename one (a select step \
                 before the lookup can)",
                f.name
            ));
        } else {
            let nullable = f.nullable || l.on_missing == OnMissing::Keep;
            fields.push(Field::new(f.name.clone(), arrow_type(f.ty), nullable));
        }
    }
    (schema_of(fields), errors)
}

/// The records after a window join: as after an interval join for the
/// join types that pair records, this stream's alone for `semi` and
/// `anti`; then the window's bounds. The event-time field keeps its type
/// and holds the window's last instant (epoch milliseconds, which a
/// timestamp field reads as they are).
fn window_joined(at: &str, schema: &SchemaRef, j: &WindowJoinSpec, time: &str) -> (SchemaRef, Vec<String>) {
    let nulls = (j.join_type.keeps_other(), j.join_type.keeps_this() && j.join_type.pairs());
    let (paired, mut errors) = joined(at, schema, j, Some(time), nulls);
    let base = if j.join_type.pairs() { paired } else { schema.clone() };
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    for bound in ["window_start", "window_end"] {
        if base.field_with_name(bound).is_ok() {
            errors.push(format!(
                "{at}: adds `{bound}`, which is already a field of the records; select it under another name first"
            ));
        } else {
            fields.push(Field::new(bound, DataType::Int64, false));
        }
    }
    (schema_of(fields), errors)
}

/// The schema after an interval join of records of `schema` (event time
/// in `time`) with the other source's: the other's fields added under the
/// join's prefix, when its schema is known; and what does not fit.
/// The records after a join: this stream's fields, then the other's under
/// the prefix. `nulls`: whether this stream's fields (but the key and event
/// time) and the other's may be missing, in records without a match.
/// `time`: the pipeline's event-time field, which the other source must
/// have too (`None`: a join that needs no event time).
fn joined(
    at: &str,
    schema: &SchemaRef,
    j: &dyn JoinedSource,
    time: Option<&str>,
    nulls: (bool, bool),
) -> (SchemaRef, Vec<String>) {
    let mut errors = Vec::new();
    let key = find(schema, j.key()).map_err(|e| errors.push(format!("{at}.key: {e}"))).ok();
    let Some(other) = schema_of_source(j.source(), j.schema().map(Vec::as_slice)) else {
        if j.filter().is_some() {
            errors.push(format!("{at}.filter: needs {at}.schema (the types of the other source's fields) to check it"));
        }
        return (schema.clone(), errors);
    };
    match (key, find(&other, j.other_key())) {
        (_, Err(e)) => errors.push(format!("{at}.otherKey: {e}")),
        (Some(k), Ok(o)) if k.data_type() != o.data_type() => errors.push(format!(
            "{at}.otherKey: field `{}` is {}, but this stream's key `{}` is {}; they must be of one type to match",
            j.other_key(),
            o.data_type(),
            j.key(),
            k.data_type()
        )),
        _ => {}
    }
    if let Some(Err(e)) = time.map(|time| find(&other, j.event_time_field(time))) {
        errors.push(format!("{at}.eventTimeField: {e}"));
    }
    if let Some(Err(e)) = j.filter().map(|sql| condition(&format!("{at}.filter"), sql, &other)) {
        errors.push(e);
    }
    // In an outer join the side that may be missing has null fields, but
    // the key and event time are the other's then.
    let this_nullable = |f: &Field| nulls.0 && f.name() != j.key() && Some(f.name().as_str()) != time;
    let mut fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(f.is_nullable() || this_nullable(f))).collect();
    let prefix = j.prefix();
    for f in other.fields() {
        let name = format!("{prefix}{}", f.name());
        if schema.field_with_name(&name).is_ok() {
            errors.push(format!(
                "{at}.prefix: the other stream's field `{}` becomes `{name}`, which is already a field of the records; \
                 choose another prefix",
                f.name()
            ));
        } else {
            let nullable = f.is_nullable() || nulls.1;
            fields.push(f.as_ref().clone().with_name(name).with_nullable(nullable));
        }
    }
    (schema_of(fields), errors)
}

fn select(i: usize, exprs: &[String], schema: &SchemaRef, errors: &mut Vec<String>) -> (Vec<Compiled>, Vec<String>) {
    let mut compiled = Vec::new();
    let mut names: Vec<String> = Vec::new();
    if exprs.is_empty() {
        errors.push(format!("spec.pipeline.steps[{i}].select: expected at least one expression"));
    }
    for (j, sql) in exprs.iter().enumerate() {
        let at = format!("spec.pipeline.steps[{i}].select[{j}]");
        match compile(sql, schema) {
            Err(e) => errors.push(format!("{at}: {e}")),
            Ok(c) => match c.name.clone() {
                None => errors.push(format!("{at}: `{sql}` needs a name: add `AS <name>`")),
                Some(n) if names.contains(&n) => errors.push(format!("{at}: the name `{n}` is used twice")),
                Some(n) => {
                    names.push(n);
                    compiled.push(c);
                }
            },
        }
    }
    (compiled, names)
}

/// The declared fields' types, as the rules records are checked by where
/// they enter.
pub fn declared(pipeline: &PipelineSpec) -> Vec<FieldRule> {
    rules_of(pipeline.schema.as_deref().unwrap_or_default())
}

/// The rules records are checked by against the declared `fields`.
pub fn rules_of(fields: &[FieldSpec]) -> Vec<FieldRule> {
    fields.iter().map(|f| FieldRule::Typed(f.name.clone(), f.ty, f.nullable)).collect()
}

#[cfg(test)]
mod tests;
