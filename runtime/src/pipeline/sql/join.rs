//! The query's FROM: `source`, or `source o [LEFT|RIGHT|FULL] JOIN <stream>
//! s ON o.k = s.k AND s.ts BETWEEN o.ts - INTERVAL … AND o.ts + INTERVAL …`
//! (Flink SQL's interval join), read into an `intervalJoin` step, or
//! `source o [LEFT] JOIN <stream> FOR SYSTEM_TIME AS OF o.ts s ON o.k = s.k`
//! (its event-time temporal join) into a `temporalJoin`, or `source o
//! JOIN <stream> s ON o.k = s.k` (a regular join, by key alone) into a
//! `join`; and the tables' qualified field names (`o.total`, `s.carrier`)
//! turned into the names those fields have in the joined record (`total`,
//! `s_carrier`).

use std::ops::ControlFlow;
use std::time::Duration;

use datafusion_sql::sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, Expr, Ident, JoinConstraint, JoinOperator, Select, SelectItem, TableFactor,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::window::interval;
use super::{Joinable, SOURCE};
use crate::manifest::{
    EventTimeSpec, HumanDuration, IntervalJoinSpec, JoinType, RegularJoinSpec, StepSpec, StreamSpec, TemporalJoinSpec,
    TemporalJoinType, TimeDomain,
};

/// `JOIN <table> FOR SYSTEM_TIME AS OF <t>.<field>`, which the SQL dialect
/// does not parse: the table and the time, taken out of the query.
#[derive(Debug, Clone)]
pub(super) struct AsOf {
    table: String,
    time: Vec<String>,
}

/// `sql` without its `FOR SYSTEM_TIME AS OF …`, and what that said.
pub(super) fn system_time(sql: &str) -> Result<(String, Option<AsOf>), String> {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        // The parser names what is wrong.
        return Ok((sql.to_string(), None));
    };
    let words: Vec<usize> = (0..tokens.len()).filter(|&i| !matches!(tokens[i], Token::Whitespace(_))).collect();
    let keyword = |k: usize, want: Keyword| matches!(words.get(k).map(|&i| &tokens[i]), Some(Token::Word(w)) if w.keyword == want);
    let Some(at) = (0..words.len()).find(|&k| {
        keyword(k, Keyword::FOR)
            && keyword(k + 1, Keyword::SYSTEM_TIME)
            && keyword(k + 2, Keyword::AS)
            && keyword(k + 3, Keyword::OF)
    }) else {
        return Ok((sql.to_string(), None));
    };
    let table = match at.checked_sub(1).map(|k| &tokens[words[k]]) {
        Some(Token::Word(w)) => w.value.clone(),
        _ => return Err("FOR SYSTEM_TIME AS OF follows the name of the joined stream".into()),
    };
    // The time: a name, or names joined by dots.
    let mut time = Vec::new();
    let mut k = at + 4;
    loop {
        match words.get(k).map(|&i| &tokens[i]) {
            Some(Token::Word(w)) => time.push(w.value.clone()),
            _ => return Err("FOR SYSTEM_TIME AS OF: expected the source's event time, as o.ts".into()),
        }
        match words.get(k + 1).map(|&i| &tokens[i]) {
            Some(Token::Period) => {}
            // The processing-time join: there is no column for it to name.
            Some(Token::LParen)
                if time.len() == 1
                    && time[0].eq_ignore_ascii_case("proctime")
                    && matches!(words.get(k + 2).map(|&i| &tokens[i]), Some(Token::RParen)) =>
            {
                time = vec![PROCTIME.into()];
                k += 2;
                break;
            }
            Some(Token::LParen) => {
                return Err("FOR SYSTEM_TIME AS OF: expected the source's event time, as o.ts, or PROCTIME()".into())
            }
            _ => break,
        }
        k += 2;
    }
    let rest: String = tokens[..words[at]].iter().chain(&tokens[words[k] + 1..]).map(ToString::to_string).collect();
    if rest.to_ascii_uppercase().contains("SYSTEM_TIME") {
        return Err("FOR SYSTEM_TIME AS OF is taken once per query (one JOIN)".into());
    }
    Ok((rest, Some(AsOf { table, time })))
}

/// The join a query's FROM makes.
#[derive(Debug)]
pub(super) struct Joined {
    pub step: StepSpec,
    /// The stream's index in `spec.pipeline.streams`.
    pub stream: usize,
    /// A regular join's WHERE conditions on the source's fields alone, as
    /// a filter before the join.
    pub before: Option<String>,
}

/// The names the query gives its tables.
pub(super) struct Tables {
    pub this: String,
    /// The joined stream's name in the query, and the prefix its fields
    /// get in the joined record.
    pub other: Option<(String, String)>,
    /// Fields both tables have under one name in the joined record (a
    /// window join's bounds).
    pub shared: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Side {
    This,
    Other,
}

impl Tables {
    fn side(&self, table: &Ident) -> Result<Side, String> {
        if table.value.eq_ignore_ascii_case(&self.this) {
            return Ok(Side::This);
        }
        match &self.other {
            Some((name, _)) if table.value.eq_ignore_ascii_case(name) => Ok(Side::Other),
            Some((name, _)) => Err(format!("no table `{table}`; the query's tables are `{}` and `{name}`", self.this)),
            None => Err(format!("no table `{table}`; the query's table is `{}`", self.this)),
        }
    }

    /// The joined record's name for `table.field`.
    pub(super) fn field(&self, parts: &[Ident]) -> Result<(Side, Ident), String> {
        let [table, field] = parts else {
            let written: Vec<String> = parts.iter().map(ToString::to_string).collect();
            return Err(format!("`{}`: expected table.field", written.join(".")));
        };
        let side = self.side(table)?;
        let mut name = field.clone();
        if let (Side::Other, Some((_, prefix))) = (side, &self.other) {
            if !self.shared.contains(&field.value.as_str()) {
                name.value = format!("{prefix}{}", field.value);
            }
        }
        Ok((side, alone(name)))
    }
}

/// Reads the query's FROM (taking it out of `select`) and renames the
/// qualified fields in the rest; the join it makes, if any.
pub(super) fn from_clause(
    select: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Option<Joined>, String> {
    if let Some(joined) = super::window_join::window_join(select, event_time, streams)? {
        return Ok(Some(joined));
    }
    let mut from = std::mem::take(&mut select.from);
    let table = match (from.pop(), from.is_empty()) {
        (Some(t), true) => t,
        (None, _) => return Err("expected FROM source".into()),
        (Some(_), false) => {
            return Err(
                "expected one table, FROM source, and at most one JOIN (a comma between tables is not supported)"
                    .into(),
            )
        }
    };
    let (name, alias) = table_name(&table.relation)?;
    if !name.eq_ignore_ascii_case(SOURCE) {
        return Err(format!("expected FROM source (the pipeline's source), got FROM {name}"));
    }
    let this = alias.unwrap_or(name);
    let mut joins = table.joins;
    let join = match (joins.pop(), joins.is_empty()) {
        (None, _) if streams.as_of.is_some() => {
            return Err("FOR SYSTEM_TIME AS OF belongs to a JOIN of a stream: source o JOIN s FOR SYSTEM_TIME AS OF \
                        o.ts ON …"
                .into())
        }
        (None, _) => {
            rename(select, &Tables { this, other: None, shared: &[] })?;
            return Ok(None);
        }
        (Some(j), true) => j,
        (Some(_), false) => {
            return Err("one JOIN per query: joins of more than two streams are not supported yet".into())
        }
    };
    let written = join.to_string();
    let (name, alias) = table_name(&join.relation)?;
    let stream = stream_named(streams.specs, &name, &format!("JOIN {name}"))?;
    if let Some(as_of) = streams.as_of {
        if !as_of.table.eq_ignore_ascii_case(&name) {
            return Err(format!(
                "FOR SYSTEM_TIME AS OF follows {}, which is not the joined stream `{name}`",
                as_of.table
            ));
        }
        let spec = &streams.specs[stream];
        return temporal(select, this, join, alias.unwrap_or(name), as_of, (spec, stream), event_time);
    }
    let (join_type, constraint) = match join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinType::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinType::Left, c),
        JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (JoinType::Right, c),
        JoinOperator::FullOuter(c) => (JoinType::Full, c),
        _ => {
            return Err(format!(
                "`{}` is not supported: an interval join is [INNER | LEFT | RIGHT | FULL] JOIN … ON",
                written.trim()
            ))
        }
    };
    let JoinConstraint::On(on) = constraint else {
        return Err(
            "JOIN needs ON with the keys' equality and a time bound (USING and NATURAL are not supported)".into()
        );
    };
    let other = alias.unwrap_or(name);
    let prefix = format!("{other}_");
    let tables = Tables { this, other: Some((other, prefix.clone())), shared: &[] };
    let spec = &streams.specs[stream];
    let times = event_time.map(|t| (t.field.as_str(), spec.event_time_field.as_deref().unwrap_or(&t.field)));
    let on = On::read(on, &tables, times)?;
    let (key, other_key) = on.key.ok_or("ON needs the keys' equality (o.key = s.key)")?;
    if on.lower.is_none() && on.upper.is_none() {
        return regular(select, &tables, join_type, (key, other_key), (spec, stream));
    }
    let Some(time) = event_time else {
        return Err("JOIN needs spec.pipeline.eventTime: the time bound compares the streams' event times".into());
    };
    let (Some(lower), Some(upper)) = (on.lower, on.upper) else {
        return Err(format!(
            "ON needs a time bound with a lower and an upper end, as {o}.{} BETWEEN {t}.{} - INTERVAL '1' HOUR AND \
             {t}.{} + INTERVAL '1' HOUR (or none, for a join by key alone)",
            spec.event_time_field.as_deref().unwrap_or(&time.field),
            time.field,
            time.field,
            o = tables.other.as_ref().map(|(n, _)| n.as_str()).unwrap_or_default(),
            t = tables.this,
        ));
    };
    if lower > upper {
        return Err(format!("the time bound is empty: from {lower} ms to {upper} ms"));
    }
    if lower > 0 || upper < 0 {
        return Err(format!(
            "the time bound must hold the same instant (from {lower} ms to {upper} ms does not include 0); bounds \
             that exclude it are not supported yet"
        ));
    }
    let millis = |ms: i64| HumanDuration(Duration::from_millis(ms.unsigned_abs()));
    let join = IntervalJoinSpec {
        source: spec.source.clone(),
        schema: spec.schema.clone(),
        event_time_field: spec.event_time_field.clone(),
        other_key: (other_key != key).then_some(other_key),
        key,
        before: millis(lower),
        after: millis(upper),
        filter: None,
        prefix: Some(prefix),
        join_type,
    };
    rename(select, &tables)?;
    Ok(Some(Joined { step: StepSpec { interval_join: Some(join), ..StepSpec::default() }, stream, before: None }))
}

/// `JOIN <stream> s ON o.k = s.k`, without a time bound, as a `join` step.
/// The WHERE conditions on one table alone are taken out of the query and
/// applied before the join: the stream's as the step's `filter`, the
/// source's as a filter step, so that neither side keeps in state records
/// the query would drop (an inner join's result is the same).
fn regular(
    select: &mut Select,
    tables: &Tables,
    join_type: JoinType,
    (key, other_key): (String, String),
    (spec, stream): (&StreamSpec, usize),
) -> Result<Option<Joined>, String> {
    if join_type != JoinType::Inner {
        return Err(format!(
            "a {} JOIN without a time bound is not supported: a record emitted alone would have to be retracted when \
             its first match came; use [INNER] JOIN, or add a time bound on the event times",
            match join_type {
                JoinType::Left => "LEFT",
                JoinType::Right => "RIGHT",
                _ => "FULL",
            }
        ));
    }
    let (before, filter) = pushed_down(select, tables)?;
    let join = RegularJoinSpec {
        source: spec.source.clone(),
        schema: spec.schema.clone(),
        event_time_field: spec.event_time_field.clone(),
        other_key: (other_key != key).then_some(other_key),
        key,
        filter,
        prefix: tables.other.as_ref().map(|(_, prefix)| prefix.clone()),
        join_type,
        state_ttl: None,
    };
    rename(select, tables)?;
    Ok(Some(Joined { step: StepSpec { join: Some(join), ..StepSpec::default() }, stream, before }))
}

/// The WHERE conditions (ANDed) that name fields of one table only, each
/// with its table, taken out of `select`: those of the source and those
/// of the stream, in their own fields' names. A condition that names a
/// field alone stays: that name may be the joined record's.
fn pushed_down(select: &mut Select, tables: &Tables) -> Result<(Option<String>, Option<String>), String> {
    let Some(selection) = select.selection.take() else { return Ok((None, None)) };
    let mut parts = Vec::new();
    conjuncts(selection, &mut parts);
    let (mut this, mut other, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for mut part in parts {
        // What stays is put back as written: the fields are renamed later.
        let written = part.clone();
        let mut sides = Vec::new();
        let read = visit_expressions_mut(&mut part, |e| {
            match e {
                Expr::CompoundIdentifier(parts) => match (tables.field(parts), parts.last()) {
                    (Ok((side, _)), Some(own)) => {
                        sides.push(Some(side));
                        *e = Expr::Identifier(alone(own.clone()));
                    }
                    (Err(why), _) => return ControlFlow::Break(why),
                    (Ok(_), None) => {}
                },
                Expr::Identifier(_) => sides.push(None),
                _ => {}
            }
            ControlFlow::Continue(())
        });
        if let ControlFlow::Break(why) = read {
            return Err(why);
        }
        match sides.first() {
            Some(Some(side)) if sides.iter().all(|s| *s == Some(*side)) => {
                if *side == Side::This {
                    this.push(part)
                } else {
                    other.push(part)
                }
            }
            _ => kept.push(written),
        }
    }
    select.selection = kept.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    let joined = |parts: Vec<Expr>| {
        let written: Vec<String> = parts.iter().map(|p| format!("({p})")).collect();
        Some(written.join(" AND ")).filter(|w| !w.is_empty())
    };
    Ok((joined(this), joined(other)))
}

/// What `AS OF PROCTIME()` is read as.
const PROCTIME: &str = "PROCTIME()";

/// `JOIN <stream> FOR SYSTEM_TIME AS OF this.ts other ON this.k = other.k`
/// (or `AS OF PROCTIME()`) as a `temporalJoin` step.
fn temporal(
    select: &mut Select,
    this: String,
    join: datafusion_sql::sqlparser::ast::Join,
    other: String,
    as_of: &AsOf,
    (spec, stream): (&StreamSpec, usize),
    event_time: Option<&EventTimeSpec>,
) -> Result<Option<Joined>, String> {
    let written = join.to_string();
    let (join_type, constraint) = match join.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (TemporalJoinType::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (TemporalJoinType::Left, c),
        _ => {
            return Err(format!(
                "`{}` is not supported: a temporal join is [INNER] JOIN or LEFT JOIN … FOR SYSTEM_TIME AS OF … ON",
                written.trim()
            ))
        }
    };
    let by_processing_time = as_of.time == [PROCTIME];
    let time = match event_time {
        // Refused by the manifest's check, naming temporalJoin.time.
        _ if by_processing_time => None,
        Some(time) => Some(time),
        None => {
            return Err("FOR SYSTEM_TIME AS OF o.ts needs spec.pipeline.eventTime: versions are chosen by event \
                        time (or write AS OF PROCTIME())"
                .into())
        }
    };
    match (as_of.time.as_slice(), time) {
        (_, None) => {}
        ([t, field], Some(time)) if t.eq_ignore_ascii_case(&this) && *field == time.field => {}
        (_, Some(time)) => {
            return Err(format!(
                "FOR SYSTEM_TIME AS OF {}: only the source's event time, {this}.{}, or PROCTIME() is supported",
                as_of.time.join("."),
                time.field
            ))
        }
    }
    let JoinConstraint::On(on) = constraint else {
        return Err("a temporal join needs ON with the keys' equality (USING and NATURAL are not supported)".into());
    };
    let prefix = format!("{other}_");
    let tables = Tables { this, other: Some((other, prefix.clone())), shared: &[] };
    let this_time = time.map_or("", |t| t.field.as_str());
    let other_time = spec.event_time_field.as_deref().unwrap_or(this_time);
    let on = On::read(on, &tables, Some((this_time, other_time)))?;
    if on.lower.is_some() || on.upper.is_some() {
        return Err("a temporal join's ON takes the keys' equality only: the version is chosen by time already".into());
    }
    let (key, other_key) = on.key.ok_or("ON needs the keys' equality (o.key = s.key)")?;
    let join = TemporalJoinSpec {
        source: spec.source.clone(),
        schema: spec.schema.clone(),
        event_time_field: spec.event_time_field.clone(),
        other_key: (other_key != key).then_some(other_key),
        key,
        filter: None,
        prefix: Some(prefix),
        join_type,
        time: if by_processing_time { TimeDomain::ProcessingTime } else { TimeDomain::EventTime },
    };
    rename(select, &tables)?;
    Ok(Some(Joined { step: StepSpec { temporal_join: Some(join), ..StepSpec::default() }, stream, before: None }))
}

/// `name` as it can be written alone: a field named like a reserved word
/// (`o.order`) would not parse without its table, so it is quoted, as an
/// unquoted name is read (lowercase).
pub(super) fn alone(name: Ident) -> Ident {
    if name.quote_style.is_some() {
        return name;
    }
    let parsed = Parser::new(&GenericDialect {}).try_with_sql(&name.value).and_then(|mut p| p.parse_expr());
    match parsed {
        Ok(Expr::Identifier(id)) if id.value == name.value => name,
        _ => Ident::with_quote('"', name.value.to_ascii_lowercase()),
    }
}

/// The index in `specs` of the stream whose id is `name`, or an error that
/// starts with `written` and lists the ids there are.
pub(super) fn stream_named(specs: &[StreamSpec], name: &str, written: &str) -> Result<usize, String> {
    let ids: Vec<&str> = specs.iter().filter_map(|s| s.source.id.as_deref()).collect();
    ids.iter().position(|id| id.eq_ignore_ascii_case(name)).ok_or_else(|| {
        format!(
            "{written}: no stream of that id in spec.pipeline.streams{}",
            if ids.is_empty() { String::new() } else { format!(" (there are: {})", ids.join(", ")) }
        )
    })
}

/// A table's name and alias.
fn table_name(relation: &TableFactor) -> Result<(String, Option<String>), String> {
    match relation {
        TableFactor::Table { name, alias, args: None, .. } => match alias {
            Some(a) if !a.columns.is_empty() => Err(format!("`{a}`: column aliases of a table are not supported")),
            alias => Ok((name.to_string(), alias.as_ref().map(|a| a.name.value.clone()))),
        },
        other => Err(format!("expected a table's name (source or a stream's id), got `{other}`")),
    }
}

/// What an ON clause says: the key fields (this, other) and the bounds of
/// the other's event time minus this one's, in milliseconds.
#[derive(Default)]
struct On {
    key: Option<(String, String)>,
    lower: Option<i64>,
    upper: Option<i64>,
}

impl On {
    /// `times`: the event-time fields of the source and the stream, if
    /// the pipeline has event time.
    fn read(on: Expr, tables: &Tables, times: Option<(&str, &str)>) -> Result<On, String> {
        let mut parts = Vec::new();
        conjuncts(on, &mut parts);
        let mut read = On::default();
        for part in parts {
            match &part {
                Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                    let (l, r) = (column(left, tables)?, column(right, tables)?);
                    let ((ls, lf), (rs, rf)) = match (l, r) {
                        (Some(l), Some(r)) => (l, r),
                        _ => return Err(not_a_join_condition(&part)),
                    };
                    if ls == rs {
                        return Err(format!("`{part}` compares fields of one table; ON compares the keys of both"));
                    }
                    if read.key.is_some() {
                        return Err(format!("ON takes one key equality, got a second: `{part}`"));
                    }
                    read.key = Some(if ls == Side::This { (lf, rf) } else { (rf, lf) });
                }
                Expr::Between { expr, negated: false, low, high } => {
                    read.bound(&part, expr, &BinaryOperator::GtEq, low, tables, times)?;
                    read.bound(&part, expr, &BinaryOperator::LtEq, high, tables, times)?;
                }
                Expr::BinaryOp { left, op, right }
                    if matches!(
                        op,
                        BinaryOperator::Gt | BinaryOperator::GtEq | BinaryOperator::Lt | BinaryOperator::LtEq
                    ) =>
                {
                    read.bound(&part, left, op, right, tables, times)?
                }
                _ => return Err(not_a_join_condition(&part)),
            }
        }
        Ok(read)
    }

    /// Narrows the bounds by `left op right`, two event times each with an
    /// interval added or subtracted.
    fn bound(
        &mut self,
        part: &Expr,
        left: &Expr,
        op: &BinaryOperator,
        right: &Expr,
        tables: &Tables,
        times: Option<(&str, &str)>,
    ) -> Result<(), String> {
        let Some((this_time, other_time)) = times else {
            return Err(format!(
                "`{part}`: a time bound needs spec.pipeline.eventTime, as it compares the streams' event times"
            ));
        };
        let (l, r) = (time_term(left, tables)?, time_term(right, tables)?);
        if l.0 == r.0 {
            return Err(format!("`{part}` compares times of one table; the bound compares the two streams' times"));
        }
        for (side, field, _) in [&l, &r] {
            let want = if *side == Side::This { this_time } else { other_time };
            if field != want {
                return Err(format!(
                    "`{part}`: the time bound compares the streams' event times (`{this_time}` and the stream's \
                     `{other_time}`), not `{field}`"
                ));
            }
        }
        // As `other - this op c`: flip the operator when this side is left.
        let (c, op) = if l.0 == Side::Other { (r.2 - l.2, op.clone()) } else { (l.2 - r.2, flipped(op)) };
        match op {
            BinaryOperator::GtEq => self.lower = Some(self.lower.map_or(c, |b| b.max(c))),
            BinaryOperator::Gt => self.lower = Some(self.lower.map_or(c + 1, |b| b.max(c + 1))),
            BinaryOperator::LtEq => self.upper = Some(self.upper.map_or(c, |b| b.min(c))),
            _ => self.upper = Some(self.upper.map_or(c - 1, |b| b.min(c - 1))),
        }
        Ok(())
    }
}

/// The comparison `op` with its sides swapped (`a < b` is `b > a`).
pub(super) fn flipped(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        other => other.clone(),
    }
}

fn not_a_join_condition(part: &Expr) -> String {
    format!("`{part}`: ON takes the keys' equality and a time bound; put other conditions in WHERE")
}

/// The ANDed conditions of `e`.
pub(super) fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner) => conjuncts(*inner, out),
        other => out.push(other),
    }
}

/// `e` as a field of one of the tables (None: not a field).
fn column(e: &Expr, tables: &Tables) -> Result<Option<(Side, String)>, String> {
    match e {
        Expr::CompoundIdentifier(parts) => {
            let (side, _) = tables.field(parts)?;
            Ok(parts.last().map(|f| (side, f.value.clone())))
        }
        Expr::Identifier(f) => Err(format!("`{f}` in ON: name its table ({}.{f})", tables.this)),
        Expr::Nested(inner) => column(inner, tables),
        _ => Ok(None),
    }
}

/// `e` as a table's time field plus milliseconds (`o.ts - INTERVAL '5'
/// MINUTE`).
fn time_term(e: &Expr, tables: &Tables) -> Result<(Side, String, i64), String> {
    if let Some((side, field)) = column(e, tables)? {
        return Ok((side, field, 0));
    }
    match e {
        Expr::Nested(inner) => time_term(inner, tables),
        Expr::BinaryOp { left, op: op @ (BinaryOperator::Plus | BinaryOperator::Minus), right } => {
            let (side, field, base) = time_term(left, tables)?;
            let ms = i64::try_from(interval(right)?.get().as_millis()).map_err(|_| format!("`{right}` is too long"))?;
            Ok((side, field, if *op == BinaryOperator::Plus { base + ms } else { base - ms }))
        }
        _ => Err(format!("expected a stream's event time, or one plus or minus an INTERVAL, got `{e}`")),
    }
}

/// Names the fields written `table.field` as the joined record does, and
/// gives an unnamed `s.carrier` in the select list its own name.
pub(super) fn rename(select: &mut Select, tables: &Tables) -> Result<(), String> {
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                let (side, name) = tables.field(parts)?;
                *item = match (side, parts.last()) {
                    (Side::Other, Some(own)) => {
                        SelectItem::ExprWithAlias { expr: Expr::Identifier(name), alias: alone(own.clone()) }
                    }
                    _ => SelectItem::UnnamedExpr(Expr::Identifier(name)),
                };
            }
            SelectItem::QualifiedWildcard(..) => {
                return Err(format!("`{item}` is not supported; list the fields, or SELECT *"));
            }
            _ => {}
        }
    }
    let renamed = visit_expressions_mut(select, |e| {
        if let Expr::CompoundIdentifier(parts) = e {
            match tables.field(parts) {
                Ok((_, name)) => *e = Expr::Identifier(name),
                Err(why) => return ControlFlow::Break(why),
            }
        }
        ControlFlow::Continue(())
    });
    match renamed {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(()),
    }
}
