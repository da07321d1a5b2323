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

use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, BinaryOperator, Expr, GroupByExpr, JoinConstraint, JoinOperator, Query,
    Select, SelectItem, TableFactor, TableWithJoins, UnaryOperator,
};

use super::join::{alone, conjuncts, rename, stream_named, Joined, Side, Tables};
use super::tvf::{read, TableWindow};
use super::window::over_event_time;
use super::{plain_select, Joinable, BOUNDS, SOURCE};
use crate::manifest::{EventTimeSpec, StepSpec, StreamSpec, WindowJoinSpec, WindowJoinType};

/// One side of the join: its windowing function, name in the query and
/// own `WHERE`.
struct Windowed {
    table: TableWindow,
    name: String,
    filter: Option<String>,
}

/// The window join `select`'s FROM makes (taken out of it), or None when
/// its FROM is not a join of subqueries nor a semi or anti join's.
pub(super) fn window_join(
    select: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Option<Joined>, String> {
    if semi_joined(select) {
        return semi_join(select, event_time, streams).map(Some);
    }
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
    let pair = Pair::of(this, other, event_time, streams)?;
    let mut bounds = Vec::new();
    let mut key = None;
    let mut parts = Vec::new();
    conjuncts(on, &mut parts);
    for part in parts {
        let written = part.to_string();
        match equated(part, &pair.tables)? {
            Equated::Bound(b) => bounds.push(b),
            Equated::Key(k) if key.is_none() => key = Some(k),
            Equated::Key(_) => {
                return Err("a window join's ON equates one key; combine several in the sources' fields".into())
            }
            Equated::Other(_) => {
                return Err(format!(
                    "`{written}` in ON: a window join's ON equates fields only (put the rest in WHERE)"
                ))
            }
        }
    }
    both_bounds(&bounds, "ON")?;
    let key = key.ok_or("a window join's ON needs the keys' equality (a.k = b.k)")?;
    pair.joined(select, key, join_type, None).map(Some)
}

/// `EXISTS`, `IN` and their `NOT`s, Flink's window semi and anti join:
/// `FROM (<windowed source>) a WHERE a.k [NOT] IN (SELECT k FROM
/// (<windowed stream>) b WHERE a.window_start = b.window_start AND
/// a.window_end = b.window_end [AND …])`, or `[NOT] EXISTS (SELECT * FROM
/// (<windowed stream>) b WHERE a.k = b.k AND <both bounds> [AND …])`.
/// The stream's own conditions in the subquery become the step's filter;
/// the rest of the query's WHERE applies after the join.
fn semi_join(select: &mut Select, event_time: Option<&EventTimeSpec>, streams: Joinable<'_>) -> Result<Joined, String> {
    let mut parts = Vec::new();
    if let Some(w) = select.selection.take() {
        conjuncts(w, &mut parts);
    }
    let mut found = parts.iter().enumerate().filter(|(_, p)| membership(p).is_some()).map(|(i, _)| i);
    let (Some(at), None) = (found.next(), found.next()) else {
        return Err(
            "a window semi or anti join takes one IN or EXISTS subquery, ANDed with the rest of the WHERE".into()
        );
    };
    let part = parts.remove(at);
    select.selection = parts.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    let Some(Membership { key: this_key, subquery, negated }) = membership(&part) else {
        return Err(
            "a window semi or anti join takes one IN or EXISTS subquery, ANDed with the rest of the WHERE".into()
        );
    };
    let from = std::mem::take(&mut select.from);
    let Some(TableWithJoins { relation, .. }) = from.into_iter().next() else {
        return Err("expected FROM (SELECT * FROM TABLE(…)) a".into());
    };
    let this = windowed(relation, streams.partition)?;
    let mut inner = plain_select(subquery.clone())?;
    let refused = !matches!(&inner.group_by, GroupByExpr::Expressions(e, _) if e.is_empty()) || inner.having.is_some();
    let inner_from = std::mem::take(&mut inner.from);
    let other = match (refused, <[TableWithJoins; 1]>::try_from(inner_from)) {
        (false, Ok([TableWithJoins { relation: relation @ TableFactor::Derived { .. }, joins }]))
            if joins.is_empty() =>
        {
            windowed(relation, streams.partition)?
        }
        _ => {
            return Err("the IN or EXISTS subquery of a window semi join reads one subquery, (SELECT * FROM \
                        TABLE(TUMBLE(TABLE s, …))) b, and groups nothing"
                .into())
        }
    };
    let pair = Pair::of(this, other, event_time, streams)?;
    let mut key = match (this_key, inner.projection.as_slice()) {
        (Some(k), [SelectItem::UnnamedExpr(e)]) => {
            let this = field_of(k, &pair.tables, Side::This)?;
            Some((this, field_of(e, &pair.tables, Side::Other)?))
        }
        (Some(_), _) => return Err("the IN subquery of a window semi join selects the other stream's key".into()),
        (None, _) => None,
    };
    let mut bounds = Vec::new();
    let mut filters = Vec::new();
    let mut parts = Vec::new();
    if let Some(w) = inner.selection.take() {
        conjuncts(w, &mut parts);
    }
    for part in parts {
        match equated(part, &pair.tables)? {
            Equated::Bound(b) => bounds.push(b),
            Equated::Key(k) if key.is_none() => key = Some(k),
            Equated::Key(_) => {
                return Err("a window semi join's subquery equates one key (or IN names it), not more".into())
            }
            Equated::Other(condition) => filters.push(own_condition(*condition, &pair.tables)?),
        }
    }
    both_bounds(&bounds, "the subquery's WHERE")?;
    let key = key.ok_or("a window semi join's EXISTS subquery needs the keys' equality (a.k = b.k)")?;
    let join_type = if negated { WindowJoinType::Anti } else { WindowJoinType::Semi };
    pair.joined(select, key, join_type, (!filters.is_empty()).then(|| filters.join(" AND ")))
}

/// Whether `select` reads one subquery and its WHERE has an `IN` or
/// `EXISTS` subquery: a window semi or anti join.
pub(super) fn semi_joined(select: &Select) -> bool {
    let one = matches!(
        select.from.as_slice(),
        [TableWithJoins { relation: TableFactor::Derived { .. }, joins }] if joins.is_empty()
    );
    let found = select.selection.as_ref().map(|w| {
        visit_expressions(w, |e| match e {
            Expr::InSubquery { .. } | Expr::Exists { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
    });
    one && found == Some(ControlFlow::Break(()))
}

/// `a.k [NOT] IN (subquery)` or `[NOT] EXISTS (subquery)`.
struct Membership<'e> {
    key: Option<&'e Expr>,
    subquery: &'e Query,
    negated: bool,
}

fn membership(e: &Expr) -> Option<Membership<'_>> {
    match e {
        Expr::InSubquery { expr, subquery, negated } => {
            Some(Membership { key: Some(expr), subquery, negated: *negated })
        }
        Expr::Exists { subquery, negated } => Some(Membership { key: None, subquery, negated: *negated }),
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => {
            membership(expr).map(|m| Membership { negated: !m.negated, ..m })
        }
        Expr::Nested(inner) => membership(inner),
        _ => None,
    }
}

/// The two sides of a window join, checked to window alike.
struct Pair {
    this: Windowed,
    other: Windowed,
    tables: Tables,
    /// The stream's index in `spec.pipeline.streams`, and the stream.
    stream: (usize, StreamSpec),
}

impl Pair {
    fn of(
        this: Windowed,
        other: Windowed,
        event_time: Option<&EventTimeSpec>,
        streams: Joinable<'_>,
    ) -> Result<Pair, String> {
        let prefix = this.table.window.prefix;
        if !this.table.data.eq_ignore_ascii_case(SOURCE) {
            return Err(format!("a window join's first table windows the source: {prefix}(TABLE source, …)"));
        }
        let data = &other.table.data;
        let stream = stream_named(streams.specs, data, &format!("JOIN … TABLE {data}"))?;
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
        let tables = Tables {
            this: this.name.clone(),
            other: Some((other.name.clone(), format!("{}_", other.name))),
            shared: &BOUNDS,
        };
        Ok(Pair { this, other, tables, stream: (stream, spec.clone()) })
    }

    /// The step, the query's fields renamed to the joined record's.
    fn joined(
        self,
        select: &mut Select,
        (key, other_key): (String, String),
        join_type: WindowJoinType,
        filter: Option<String>,
    ) -> Result<Joined, String> {
        let window = &self.this.table.window.spec;
        let size =
            window.size.ok_or("SESSION windows in a window join are not supported yet; join TUMBLE or HOP windows")?;
        let filter = match (self.other.filter, filter) {
            (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
            (a, b) => a.or(b),
        };
        let (stream, spec) = self.stream;
        let step = WindowJoinSpec {
            source: spec.source,
            schema: spec.schema,
            event_time_field: spec.event_time_field,
            other_key: (other_key != key).then_some(other_key),
            key,
            filter,
            size,
            slide: window.slide,
            prefix: self.tables.other.as_ref().map(|(_, p)| p.clone()),
            join_type,
        };
        rename(select, &self.tables)?;
        let step = StepSpec { window_join: Some(step), ..StepSpec::default() };
        Ok(Joined { step, stream, before: self.this.filter })
    }
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

/// What a condition of a window join says.
enum Equated {
    /// The two tables' same bound are equal.
    Bound(String),
    /// This table's field equals the other's: the keys.
    Key((String, String)),
    /// Anything else.
    Other(Box<Expr>),
}

/// `part` as an equality of a field of each table, if it is one.
fn equated(part: Expr, tables: &Tables) -> Result<Equated, String> {
    let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = &part else {
        return Ok(Equated::Other(Box::new(part)));
    };
    let field = |e: &Expr| -> Result<Option<(Side, String)>, String> {
        match e {
            Expr::CompoundIdentifier(parts) => {
                let (side, _) = tables.field(parts)?;
                Ok(parts.last().map(|f| (side, f.value.clone())))
            }
            _ => Ok(None),
        }
    };
    let (this, other) = match (field(left)?, field(right)?) {
        (Some((Side::This, a)), Some((Side::Other, b))) | (Some((Side::Other, b)), Some((Side::This, a))) => (a, b),
        _ => return Ok(Equated::Other(Box::new(part))),
    };
    if !BOUNDS.contains(&this.as_str()) && !BOUNDS.contains(&other.as_str()) {
        return Ok(Equated::Key((this, other)));
    }
    if this != other {
        return Err(format!("`{part}`: equate the windows' bounds with their like"));
    }
    Ok(Equated::Bound(this))
}

/// Refuses a join whose conditions (`clause`) leave out a window bound.
fn both_bounds(bounds: &[String], clause: &str) -> Result<(), String> {
    match BOUNDS.iter().find(|b| !bounds.iter().any(|x| x == *b)) {
        Some(missing) => {
            Err(format!("a window join's {clause} equates both windows' bounds: add a.{missing} = b.{missing}"))
        }
        None => Ok(()),
    }
}

/// The name of `e`, a field of the table on `side`.
fn field_of(e: &Expr, tables: &Tables, side: Side) -> Result<String, String> {
    let found = match e {
        Expr::CompoundIdentifier(parts) => {
            let (at, _) = tables.field(parts)?;
            parts.last().filter(|_| at == side).map(|f| f.value.clone())
        }
        Expr::Identifier(id) if side == Side::Other => Some(id.value.clone()),
        _ => None,
    };
    let table = if side == Side::This { &tables.this } else { tables.other.as_ref().map_or(&tables.this, |(n, _)| n) };
    found.ok_or_else(|| format!("`{e}`: expected a field of `{table}`"))
}

/// A condition of the subquery on the other stream's fields alone, with
/// their names as that stream's records have them.
fn own_condition(mut condition: Expr, tables: &Tables) -> Result<String, String> {
    let written = condition.to_string();
    let renamed = visit_expressions_mut(&mut condition, |e| {
        if let Expr::CompoundIdentifier(parts) = e {
            match (tables.field(parts), parts.last()) {
                (Ok((Side::Other, _)), Some(own)) => *e = Expr::Identifier(alone(own.clone())),
                (Ok(_), _) => {
                    return ControlFlow::Break(format!(
                        "`{written}` in the subquery: a condition there reads the other stream's fields only (put \
                     this table's in the query's WHERE)"
                    ))
                }
                (Err(why), _) => return ControlFlow::Break(why),
            }
        }
        ControlFlow::Continue(())
    });
    match renamed {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(condition.to_string()),
    }
}
