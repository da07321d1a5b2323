//! Flink SQL's window join: two windowing table functions of the same
//! windows, joined on the key and both bounds,
//!
//! ```sql
//! FROM (SELECT * FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE))) o
//! [LEFT | RIGHT | FULL] JOIN (SELECT * FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '1' MINUTE))) s
//! ON o.k = s.k AND o.window_start = s.window_start AND o.window_end = s.window_end
//! ```
//!
//! read into a `windowJoin` step with the stream `s`. A subquery's own
//! `WHERE` is applied before the join (the stream's as the step's
//! `filter`); the query's `WHERE` after it.

use datafusion_sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, JoinConstraint, JoinOperator, Select, SelectItem, TableFactor, TableWithJoins,
};

use super::join::{conjuncts, rename, Joined, Side, Tables};
use super::tvf::{read, TableWindow};
use super::window::over_event_time;
use super::{plain_select, Joinable, BOUNDS, SOURCE};
use crate::manifest::{EventTimeSpec, StepSpec, WindowJoinSpec, WindowJoinType};

/// One side of the join: its windowing function, name in the query and
/// own `WHERE`.
struct Windowed {
    table: TableWindow,
    name: String,
    filter: Option<String>,
}

/// The window join `select`'s FROM makes (taken out of it), or None when
/// its FROM is not a join of subqueries.
pub(super) fn window_join(
    select: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Option<Joined>, String> {
    let joined = matches!(
        select.from.as_slice(),
        [TableWithJoins { relation: TableFactor::Derived { .. }, joins }] if joins.len() == 1
    );
    if !joined {
        return Ok(None);
    }
    let mut from = std::mem::take(&mut select.from);
    let Some(TableWithJoins { relation, mut joins }) = from.pop() else { return Ok(None) };
    let Some(join) = joins.pop() else { return Ok(None) };
    let this = windowed(relation, streams.partition)?;
    let other = windowed(join.relation, streams.partition)?;
    let prefix = this.table.window.prefix;
    if !this.table.data.eq_ignore_ascii_case(SOURCE) {
        return Err(format!("a window join's first table windows the source: {prefix}(TABLE source, …)"));
    }
    let ids: Vec<&str> = streams.specs.iter().filter_map(|s| s.source.id.as_deref()).collect();
    let Some(stream) = ids.iter().position(|id| id.eq_ignore_ascii_case(&other.table.data)) else {
        return Err(format!("JOIN … TABLE {}: no stream of that id in spec.pipeline.streams", other.table.data));
    };
    let spec = &streams.specs[stream];
    over_event_time(prefix, &this.table.field, event_time)?;
    let other_time = spec.event_time_field.as_deref().or(event_time.map(|t| t.field.as_str()));
    if other_time != Some(other.table.field.as_str()) {
        return Err(format!(
            "{}(TABLE {}, DESCRIPTOR({}), …): the stream's event time is `{}` (its eventTimeField, else \
             spec.pipeline.eventTime.field)",
            other.table.window.prefix,
            other.table.data,
            other.table.field,
            other_time.unwrap_or_default()
        ));
    }
    let (a, b) = (&this.table.window.spec, &other.table.window.spec);
    if this.table.window.prefix != other.table.window.prefix || (a.size, a.slide) != (b.size, b.slide) {
        return Err("a window join joins the same windows on both sides: give both table functions the same \
                    function and sizes"
            .into());
    }
    let Some(size) = a.size else {
        return Err("SESSION windows in a window join are not supported yet; join TUMBLE or HOP windows".into());
    };
    let join_type = match join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (WindowJoinType::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (WindowJoinType::Left, c),
        JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (WindowJoinType::Right, c),
        JoinOperator::FullOuter(c) => (WindowJoinType::Full, c),
        _ => return Err("a window join is [INNER | LEFT | RIGHT | FULL] JOIN … ON".into()),
    };
    let (join_type, JoinConstraint::On(on)) = join_type else {
        return Err("a window join needs ON with the keys' and the windows' equality (USING and NATURAL are not \
                    supported)"
            .into());
    };
    let tables =
        Tables { this: this.name, other: Some((other.name.clone(), format!("{}_", other.name))), shared: &BOUNDS };
    let (key, other_key) = keys(on, &tables)?;
    let step = WindowJoinSpec {
        source: spec.source.clone(),
        schema: spec.schema.clone(),
        event_time_field: spec.event_time_field.clone(),
        other_key: (other_key != key).then_some(other_key),
        key,
        filter: other.filter,
        size,
        slide: a.slide,
        prefix: tables.other.as_ref().map(|(_, p)| p.clone()),
        join_type,
    };
    rename(select, &tables)?;
    Ok(Some(Joined { step: StepSpec { window_join: Some(step), ..StepSpec::default() }, stream, before: this.filter }))
}

/// A side of the join: `(SELECT * FROM TABLE(<windowing function>) [WHERE
/// c]) [AS] name`.
fn windowed(relation: TableFactor, partition: Option<&[String]>) -> Result<Windowed, String> {
    const EXPECTED: &str = "a JOIN of subqueries is Flink's window join: (SELECT * FROM TABLE(TUMBLE(TABLE source, \
                            …))) a JOIN (SELECT * FROM TABLE(TUMBLE(TABLE s, …))) b ON …";
    let TableFactor::Derived { subquery, alias, .. } = relation else {
        return Err(format!("{EXPECTED}; got `{relation}`"));
    };
    let mut inner = plain_select(*subquery)?;
    let grouped = !matches!(&inner.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || inner.having.is_some() || !matches!(inner.projection.as_slice(), [SelectItem::Wildcard(_)]) {
        return Err(format!("{EXPECTED}: each subquery is SELECT * FROM TABLE(…) [WHERE …]"));
    }
    let from = std::mem::take(&mut inner.from);
    let [TableWithJoins { relation: TableFactor::TableFunction { expr, .. }, joins }] = from.as_slice() else {
        return Err(format!("{EXPECTED}: each subquery reads a windowing table function"));
    };
    if !joins.is_empty() {
        return Err(format!("{EXPECTED}: a subquery of a window join joins nothing itself"));
    }
    let table = read(expr, partition)?;
    if table.window.spec.gap.is_some() {
        return Err("SESSION windows in a window join are not supported yet; join TUMBLE or HOP windows".into());
    }
    let name = alias.map_or_else(|| table.data.clone(), |a| a.name.value);
    Ok(Windowed { filter: inner.selection.map(|w| w.to_string()), name, table })
}

/// The key fields of an ON that equates the keys and both windows' bounds.
fn keys(on: Expr, tables: &Tables) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    conjuncts(on, &mut parts);
    let mut key = None;
    let mut bounds = Vec::new();
    for part in parts {
        let written = part.to_string();
        let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = part else {
            return Err(format!("`{written}` in ON: a window join's ON equates fields only (put the rest in WHERE)"));
        };
        let field = |e: &Expr| match e {
            Expr::CompoundIdentifier(parts) => {
                let (side, _) = tables.field(parts)?;
                Ok((side, parts.last().map(|f| f.value.clone()).unwrap_or_default()))
            }
            other => Err(format!("`{other}` in ON: name a table's field, as {}.k", tables.this)),
        };
        let (l, r) = (field(&left)?, field(&right)?);
        let (this, other) = match (l, r) {
            ((Side::This, a), (Side::Other, b)) | ((Side::Other, b), (Side::This, a)) => (a, b),
            _ => return Err(format!("`{written}` in ON: equate a field of each table")),
        };
        if BOUNDS.contains(&this.as_str()) || BOUNDS.contains(&other.as_str()) {
            if this != other {
                return Err(format!("`{written}` in ON: equate the windows' bounds with their like"));
            }
            bounds.push(this);
        } else if key.replace((this, other)).is_some() {
            return Err("a window join's ON equates one key; combine several in the sources' fields".into());
        }
    }
    if let Some(missing) = BOUNDS.iter().find(|b| !bounds.iter().any(|x| x == *b)) {
        return Err(format!("a window join's ON equates both windows' bounds: add a.{missing} = b.{missing}"));
    }
    key.ok_or_else(|| "a window join's ON needs the keys' equality (a.k = b.k)".into())
}
