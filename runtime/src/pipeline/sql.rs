//! `spec.pipeline.sql`: one streaming query, turned into the same steps a
//! manifest could list (filter, select, keyBy, aggregate, window).
//!
//! The statement is parsed by DataFusion's SQL parser; its clauses become
//! steps whose expressions are then planned and type-checked by DataFusion
//! like any step's. What maps:
//!
//! - `FROM source o JOIN s ON o.k = s.k AND s.ts BETWEEN o.ts - INTERVAL …
//!   AND o.ts + INTERVAL …` (`LEFT`, `RIGHT`, `FULL` too) -> `intervalJoin`
//!   with a stream of `spec.pipeline.streams`; `s.field` is then
//!   `s_field` (see [`join`])
//! - `FROM source o JOIN s ON o.k = s.k` without a time bound -> `join`,
//!   the WHERE conditions on one table alone applied before it
//! - `SELECT … FROM (SELECT …, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x
//!   DESC) AS rownum FROM source) WHERE rownum <= N` (Flink's Top-N) ->
//!   `keyBy` and `topN` (see [`top_n`])
//! - `WHERE c` -> `filter: c`
//! - `GROUP BY k` -> `keyBy` (a column, or an expression named by its
//!   alias in the select list, else `key`); no `GROUP BY` with aggregates
//!   -> one key for all records
//! - `GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)`, `HOP(ts, slide, size)`,
//!   `SESSION(ts, gap)` -> `window` (Flink's group-window syntax; `ts` must
//!   be `spec.pipeline.eventTime.field`); `window_start` / `window_end` or
//!   `TUMBLE_START(…)`, `TUMBLE_END(…)` (and `HOP_`, `SESSION_`) read the
//!   window's bounds
//! - `FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), size))`, `HOP` and
//!   `SESSION` (Flink's windowing table functions, see [`tvf`]) with
//!   `GROUP BY window_start, window_end [, k]` -> the same `window`;
//!   ranked per window by a Top-N subquery -> `topN` with a `window`;
//!   a JOIN of two such subqueries on the key and the bounds (Flink's
//!   window join) -> `windowJoin` (see [`window_join`])
//! - `COUNT(*)`, `SUM`, `MIN`, `MAX`, `AVG` of a column or an expression ->
//!   the aggregate step (expressions are computed by a select before it);
//!   `COUNT(x)` is the sum of `CASE WHEN x IS NULL THEN 0 ELSE 1 END`
//! - `HAVING c` -> a filter after the aggregate; the select list -> a
//!   final select
//!
//! `spec.pipeline.sqlOptions` sets how a window query emits, by Flink's
//! option names (see [`options`]).
//!
//! Anything else (other joins, subqueries, `ORDER BY`, `LIMIT`, `DISTINCT`,
//! several key expressions) is refused, naming it.

use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, BinaryOperator, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, Query, Select, SelectItem, SetExpr, Statement, Value,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;

use crate::manifest::{AggregateSpec, EventTimeSpec, KeyBySpec, StepSpec, StreamSpec, WindowSpec};
use tvf::TableWindow;
use window::{group_window, over_event_time, window_bound, window_function, Window};

/// A step made from the query, and the clause it came from (for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStep {
    pub step: StepSpec,
    pub clause: &'static str,
    /// The index in `spec.pipeline.streams` of the stream a JOIN step reads.
    pub stream: Option<usize>,
}

/// The table a query reads: the pipeline's source.
const SOURCE: &str = "source";

/// The fields of a window's rows that hold its bounds.
const BOUNDS: [&str; 2] = ["window_start", "window_end"];

/// The key field when the query has no `GROUP BY` key of its own name.
const KEY: &str = "key";

/// The steps `sql` means over the pipeline's source and `streams`, or what
/// in it is not supported (the caller prefixes `spec.pipeline.sql`).
pub fn translate(
    sql: &str,
    event_time: Option<&EventTimeSpec>,
    streams: &[StreamSpec],
) -> Result<Vec<SqlStep>, String> {
    let (sql, as_of) = join::system_time(sql)?;
    let (sql, partition) = tvf::table_arguments(&sql)?;
    let streams = Joinable { specs: streams, as_of: as_of.as_ref(), partition: partition.as_deref() };
    let mut statements = Parser::parse_sql(&GenericDialect {}, &sql).map_err(|e| e.to_string())?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => return Err("expected a SELECT statement, got nothing".into()),
        (Some(_), false) => return Err("expected one SELECT statement, got several".into()),
    };
    let Statement::Query(query) = statement else {
        return Err(format!("expected a SELECT statement, got `{}`", first_words(&statement.to_string())));
    };
    let mut select = plain_select(*query)?;
    if let Some(steps) = top_n::top_n(&mut select, event_time, streams)? {
        return Ok(steps);
    }
    Ok(select_steps(select, event_time, streams)?.0)
}

/// The steps of one query over the source (joined with a stream or not),
/// and whether it groups by a window.
fn select_steps(
    mut select: Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<(Vec<SqlStep>, bool), String> {
    let table = tvf::window_table(&mut select, streams.partition, event_time)?;
    let mut steps = join_steps(&mut select, event_time, streams)?;
    let grouping = Grouping::from_select(select, event_time, table)?;
    let windowed = grouping.window.is_some();
    steps.extend(grouping.steps()?);
    Ok((steps, windowed))
}

/// The steps of the query's FROM (taken out of `select`): none for the
/// source alone, else its join and what runs before it.
fn join_steps(
    select: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Vec<SqlStep>, String> {
    let mut steps = Vec::new();
    if let Some(j) = join::from_clause(select, event_time, streams)? {
        if let Some(before) = j.before {
            let step = StepSpec { filter: Some(before), ..StepSpec::default() };
            steps.push(SqlStep { step, clause: "WHERE", stream: None });
        }
        steps.push(SqlStep { step: j.step, clause: "JOIN", stream: Some(j.stream) });
    }
    Ok(steps)
}

/// The streams a query may join, and the one its `FOR SYSTEM_TIME AS OF`
/// reads as a versioned table; and the `PARTITION BY` of its `SESSION`
/// table function, which the parser does not see either.
#[derive(Clone, Copy)]
struct Joinable<'a> {
    specs: &'a [StreamSpec],
    as_of: Option<&'a join::AsOf>,
    partition: Option<&'a [String]>,
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The query's one `SELECT`, refusing the clauses not built.
fn plain_select(query: Query) -> Result<Select, String> {
    let refused = [
        (query.with.is_some(), "WITH"),
        (query.order_by.is_some(), "ORDER BY (a stream has no end to sort by)"),
        (query.limit_clause.is_some() || query.fetch.is_some(), "LIMIT"),
        (!query.locks.is_empty() || query.for_clause.is_some(), "FOR"),
        (query.settings.is_some() || query.format_clause.is_some() || !query.pipe_operators.is_empty(), "SETTINGS"),
    ];
    if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
        return Err(format!("{what} is not supported"));
    }
    let select = match *query.body {
        SetExpr::Select(select) => *select,
        SetExpr::SetOperation { op, .. } => return Err(format!("{op} of queries is not supported yet")),
        other => return Err(format!("expected SELECT … FROM source, got `{}`", first_words(&other.to_string()))),
    };
    let refused = [
        (select.distinct.is_some(), "SELECT DISTINCT (use a deduplicate step)"),
        (select.top.is_some(), "TOP"),
        (select.into.is_some(), "SELECT INTO"),
        (!select.lateral_views.is_empty(), "LATERAL VIEW"),
        (select.prewhere.is_some(), "PREWHERE"),
        (!select.connect_by.is_empty(), "CONNECT BY"),
        (!select.cluster_by.is_empty() || !select.distribute_by.is_empty(), "CLUSTER BY"),
        (!select.sort_by.is_empty(), "SORT BY"),
        (!select.named_window.is_empty() || select.qualify.is_some(), "WINDOW and QUALIFY (OVER windows)"),
    ];
    if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
        return Err(format!("{what} is not supported"));
    }
    Ok(select)
}

/// The aggregate functions `spec.pipeline.sql` plans.
const SUPPORTED: &str = "COUNT(*), COUNT(x), COUNT(DISTINCT field), SUM, MIN, MAX, AVG, FIRST_VALUE, LAST_VALUE";

/// An aggregate call of the select list or `HAVING`.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Count,
    Of(&'static str, Box<Expr>),
}

struct Grouping {
    select: Select,
    filter: Option<String>,
    /// The key expression and the field it is written to (None: all
    /// records under one key).
    key: Option<(Expr, String)>,
    window: Option<Window>,
    time_field: Option<String>,
    /// The window comes from a windowing table function (`FROM
    /// TABLE(TUMBLE(…))`), whose rows also have a `window_time`.
    table: bool,
}

impl Grouping {
    fn from_select(
        mut select: Select,
        event_time: Option<&EventTimeSpec>,
        table: Option<TableWindow>,
    ) -> Result<Grouping, String> {
        let filter = match select.selection.take() {
            Some(e) if aggregate_in(&e).is_some() => {
                return Err(format!(
                    "WHERE cannot use an aggregate (`{}`); use HAVING",
                    aggregate_in(&e).unwrap_or_default()
                ))
            }
            Some(e) => Some(e.to_string()),
            None => None,
        };
        let exprs = match std::mem::replace(&mut select.group_by, GroupByExpr::Expressions(Vec::new(), Vec::new())) {
            GroupByExpr::All(_) => return Err("GROUP BY ALL is not supported; name the key".into()),
            GroupByExpr::Expressions(_, modifiers) if !modifiers.is_empty() => {
                return Err("GROUP BY modifiers (ROLLUP, CUBE, …) are not supported".into())
            }
            GroupByExpr::Expressions(exprs, _) => exprs,
        };
        let mut keys = Vec::new();
        let (mut window, mut time_field, partition) = match table {
            Some(t) => (Some(t.window), Some(t.field), t.partition),
            None => (None, None, None),
        };
        let from_table = window.as_ref().map(|w| w.prefix);
        let mut bounds = Vec::new();
        for e in exprs {
            if let (Some(_), Expr::Identifier(id)) = (from_table, &e) {
                if BOUNDS.contains(&id.value.as_str()) {
                    bounds.push(id.value.clone());
                    continue;
                }
            }
            if let Some(prefix) = window_function(&e) {
                if let Some(table) = from_table {
                    return Err(format!(
                        "GROUP BY {e}: the rows of the {table} table are windowed already; GROUP BY window_start,                          window_end"
                    ));
                }
                if window.is_some() {
                    return Err("GROUP BY takes one window".into());
                }
                let (w, field) = group_window(prefix, &e)?;
                over_event_time(prefix, &field, event_time)?;
                window = Some(w);
                time_field = Some(field);
            } else if let Some(call) = aggregate_in(&e) {
                return Err(format!("GROUP BY cannot use an aggregate (`{call}`)"));
            } else {
                keys.push(e);
            }
        }
        if keys.len() > 1 {
            let list: Vec<String> = keys.iter().map(ToString::to_string).collect();
            return Err(format!(
                "GROUP BY takes one key expression besides the window, got {}; combine them, as concat_ws('|', {})",
                list.len(),
                list.join(", ")
            ));
        }
        let key = keys.pop().map(|e| {
            let field = match &e {
                Expr::Identifier(id) => id.value.clone(),
                _ => alias_of(&select, &e).unwrap_or_else(|| KEY.to_string()),
            };
            (e, field)
        });
        if let Some(table) = from_table {
            if bounds.len() < BOUNDS.len() {
                return Err(format!(
                    "the rows of the {table} table are grouped per window: GROUP BY window_start, window_end [, key]"
                ));
            }
            same_partition(partition.as_deref(), key.as_ref().map(|(e, _)| e))?;
            // `window_time` keeps its name when it becomes an expression.
            for item in &mut select.projection {
                if matches!(item, SelectItem::UnnamedExpr(Expr::Identifier(id)) if id.value == tvf::WINDOW_TIME) {
                    let expr = Expr::Identifier(Ident::new(tvf::WINDOW_TIME));
                    *item = SelectItem::ExprWithAlias { expr, alias: Ident::new(tvf::WINDOW_TIME) };
                }
            }
        }
        let table = from_table.is_some();
        Ok(Grouping { select, filter, key, window, time_field, table })
    }

    /// Every aggregate call of the select list and `HAVING`, once each.
    fn calls(&self) -> Result<Vec<Call>, String> {
        let mut calls: Vec<Call> = Vec::new();
        let mut exprs: Vec<&Expr> = self.select.projection.iter().filter_map(item_expr).collect();
        exprs.extend(&self.select.having);
        for e in exprs {
            let found = visit_expressions(e, |sub| match aggregate_call(sub) {
                Some(Err(why)) => ControlFlow::Break(why),
                Some(Ok(call)) => {
                    if !calls.contains(&call) {
                        calls.push(call);
                    }
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Continue(()),
            });
            if let ControlFlow::Break(why) = found {
                return Err(why);
            }
        }
        Ok(calls)
    }

    fn steps(mut self) -> Result<Vec<SqlStep>, String> {
        let mut steps = Vec::new();
        let step = |clause, step: StepSpec| SqlStep { step, clause, stream: None };
        if let Some(f) = self.filter.take() {
            steps.push(step("WHERE", StepSpec { filter: Some(f), ..StepSpec::default() }));
        }
        let calls = self.calls()?;
        if self.key.is_none() && self.window.is_none() && calls.is_empty() {
            if self.select.having.is_some() {
                return Err("HAVING needs GROUP BY or an aggregate".into());
            }
            let list = self.plain_select_list()?;
            if let Some(list) = list {
                steps.push(step("SELECT", StepSpec { select: Some(list), ..StepSpec::default() }));
            }
            return Ok(steps);
        }
        if calls.is_empty() {
            return Err(format!("GROUP BY needs an aggregate in the select list ({SUPPORTED})"));
        }
        for item in &self.select.projection {
            if let SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) = item {
                return Err("SELECT * cannot be grouped; list the key and the aggregates".into());
            }
        }
        // Aggregates read fields: an expression argument is computed first,
        // by a select that keeps the key and the event time.
        let mut aggregate = AggregateSpec::default();
        let mut computed: Vec<String> = Vec::new();
        let mut names: Vec<(Call, String)> = Vec::new();
        let needs_select = calls.iter().any(|c| matches!(c, Call::Of(_, e) if !matches!(**e, Expr::Identifier(_))));
        for (i, call) in calls.iter().enumerate() {
            let output = match call {
                Call::Count => {
                    aggregate.count = true;
                    "count".to_string()
                }
                Call::Of(kind, arg) => {
                    let field = match arg.as_ref() {
                        Expr::Identifier(id) => id.value.clone(),
                        _ => format!("arg{i}"),
                    };
                    if !matches!(arg.as_ref(), Expr::Identifier(_)) {
                        computed.push(format!("{arg} AS {field}"));
                    } else if needs_select && !computed.contains(&field) {
                        computed.push(field.clone());
                    }
                    let list = match *kind {
                        "sum" => &mut aggregate.sum,
                        "min" => &mut aggregate.min,
                        "max" => &mut aggregate.max,
                        "count_distinct" => &mut aggregate.count_distinct,
                        "first" => &mut aggregate.first,
                        "last" => &mut aggregate.last,
                        _ => &mut aggregate.avg,
                    };
                    if !list.contains(&field) {
                        list.push(field.clone());
                    }
                    format!("{kind}_{field}")
                }
            };
            names.push((call.clone(), output));
        }
        let (key_expr, key_field) = match self.key.clone() {
            Some((e, field)) => (e, field),
            None => (Expr::value(Value::SingleQuotedString("all".into())), KEY.to_string()),
        };
        let plain_key = matches!(key_expr, Expr::Identifier(_));
        let key_by = if needs_select {
            let mut list = vec![if plain_key { key_field.clone() } else { format!("{key_expr} AS {key_field}") }];
            list.extend(self.time_field.clone());
            for c in computed {
                if !list.contains(&c) {
                    list.push(c);
                }
            }
            steps.push(step("the aggregates' arguments", StepSpec { select: Some(list), ..StepSpec::default() }));
            KeyBySpec { field: key_field.clone(), expr: None }
        } else if plain_key {
            KeyBySpec { field: key_field.clone(), expr: None }
        } else {
            KeyBySpec { field: key_field.clone(), expr: Some(key_expr.to_string()) }
        };
        steps.push(step("GROUP BY", StepSpec { key_by: Some(key_by), ..StepSpec::default() }));
        let prefix = self.window.as_ref().map(|w| w.prefix);
        let from_table = self.table;
        match self.window.take() {
            Some(w) => {
                let spec = WindowSpec { aggregate, ..w.spec };
                steps.push(step("GROUP BY", StepSpec { window: Some(spec), ..StepSpec::default() }));
            }
            None => steps.push(step("the aggregates", StepSpec { aggregate: Some(aggregate), ..StepSpec::default() })),
        }
        // Aggregate calls (all supported: `calls` checked them), the key
        // expression and window bounds become the fields that hold them.
        let rewrite = |e: &Expr| -> Expr {
            let mut e = e.clone();
            let _ = visit_expressions_mut(&mut e, |sub| {
                let replace = if let Some(Ok(call)) = aggregate_call(sub) {
                    names.iter().find(|(c, _)| *c == call).map(|(_, n)| n.clone())
                } else if *sub == key_expr {
                    Some(key_field.clone())
                } else if from_table && matches!(sub, Expr::Identifier(id) if id.value == tvf::WINDOW_TIME) {
                    // The window's last instant, as Flink's window_time.
                    *sub = Expr::BinaryOp {
                        left: Box::new(Expr::Identifier(Ident::new("window_end"))),
                        op: BinaryOperator::Minus,
                        right: Box::new(Expr::value(Value::Number("1".into(), false))),
                    };
                    None
                } else {
                    window_bound(sub, prefix)
                };
                if let Some(name) = replace {
                    *sub = Expr::Identifier(Ident::new(name));
                }
                ControlFlow::<()>::Continue(())
            });
            e
        };
        if let Some(having) = &self.select.having {
            let condition = rewrite(having);
            steps.push(step("HAVING", StepSpec { filter: Some(condition.to_string()), ..StepSpec::default() }));
        }
        let mut list = Vec::new();
        for item in &self.select.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
                other => return Err(format!("`{other}` is not supported in the select list")),
            };
            let out = rewrite(expr);
            match (alias, &out) {
                (Some(a), Expr::Identifier(id)) if id.value == a.value => list.push(out.to_string()),
                (Some(a), _) => list.push(format!("{out} AS {a}")),
                // `SUM(price)` is named `sum_price`; `SUM(price * qty)` would
                // get a made-up name, so it needs one of its own.
                (None, Expr::Identifier(_)) if !matches!(aggregate_call(expr), Some(Ok(Call::Of(_, arg))) if !matches!(*arg, Expr::Identifier(_))) => {
                    list.push(out.to_string())
                }
                (None, _) => return Err(format!("`{expr}` needs a name: add `AS <name>`")),
            }
        }
        steps.push(step("SELECT", StepSpec { select: Some(list), ..StepSpec::default() }));
        Ok(steps)
    }

    /// The select list of an ungrouped query (None for `SELECT *`).
    fn plain_select_list(&self) -> Result<Option<Vec<String>>, String> {
        match self.select.projection.as_slice() {
            [SelectItem::Wildcard(_)] => Ok(None),
            items => select_list(items, "the select list").map(Some),
        }
    }
}

/// `items` as a select step's list; `which`: where they are written.
fn select_list(items: &[SelectItem], which: &str) -> Result<Vec<String>, String> {
    items
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Ok(e.to_string()),
            SelectItem::ExprWithAlias { expr, alias } => Ok(format!("{expr} AS {alias}")),
            other => Err(format!("`{other}` is not supported in {which}")),
        })
        .collect()
}

fn item_expr(item: &SelectItem) -> Option<&Expr> {
    match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

/// The alias the select list gives `e`, if any.
fn alias_of(select: &Select, e: &Expr) -> Option<String> {
    select.projection.iter().find_map(|item| match item {
        SelectItem::ExprWithAlias { expr, alias } if expr == e => Some(alias.value.clone()),
        _ => None,
    })
}

/// The name of a function call, lowercase.
fn function_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Function(f) => Some(f.name.to_string().to_ascii_lowercase()),
        _ => None,
    }
}

/// The plain arguments of a function call.
fn arguments(e: &Expr) -> Vec<&FunctionArgExpr> {
    match e {
        Expr::Function(f) => match &f.args {
            FunctionArguments::List(list) => list
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(a)
                    | FunctionArg::Named { arg: a, .. }
                    | FunctionArg::ExprNamed { arg: a, .. } => a,
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `e` as an aggregate call: None if it is none, an error if it is one
/// that is not supported.
fn aggregate_call(e: &Expr) -> Option<Result<Call, String>> {
    let name = function_name(e)?;
    let kind = match name.as_str() {
        "count" => "count",
        "sum" => "sum",
        "min" => "min",
        "max" => "max",
        "avg" => "avg",
        "first_value" => "first",
        "last_value" => "last",
        "count_distinct" | "stddev" | "variance" | "median" | "array_agg" | "string_agg" | "approx_distinct" => {
            return Some(Err(format!("the aggregate {name} is not supported yet ({SUPPORTED} are)")))
        }
        _ => return None,
    };
    let Expr::Function(f) = e else { return None };
    if f.over.is_some() {
        return Some(Err(format!("`{e}`: OVER windows are not supported; use GROUP BY with TUMBLE, HOP or SESSION")));
    }
    if f.filter.is_some() {
        return Some(Err(format!("`{e}`: FILTER on an aggregate is not supported yet")));
    }
    let mut kind = kind;
    if let FunctionArguments::List(list) = &f.args {
        match list.duplicate_treatment {
            Some(DuplicateTreatment::Distinct) if kind == "count" => kind = "count_distinct",
            Some(DuplicateTreatment::Distinct) => {
                return Some(Err(format!("`{e}`: DISTINCT is supported in COUNT(DISTINCT field) only")))
            }
            Some(DuplicateTreatment::All) | None => {}
        }
    }
    if matches!(&f.args, FunctionArguments::List(l) if !l.clauses.is_empty()) || !f.within_group.is_empty() {
        return Some(Err(format!("`{e}`: ORDER BY or other clauses in an aggregate are not supported")));
    }
    let args = arguments(e);
    Some(match (kind, args.as_slice()) {
        ("count_distinct", [FunctionArgExpr::Wildcard]) => {
            Err(format!("`{e}`: COUNT(DISTINCT *) is not supported; name a field"))
        }
        ("count", [FunctionArgExpr::Wildcard]) => Ok(Call::Count),
        ("count", [FunctionArgExpr::Expr(Expr::Value(v))]) if v.to_string() == "1" => Ok(Call::Count),
        ("count", [FunctionArgExpr::Expr(arg)]) => counted(arg).map(|c| Call::Of("sum", Box::new(c))),
        (kind, [FunctionArgExpr::Expr(arg)]) => Ok(Call::Of(kind, Box::new(arg.clone()))),
        (_, _) => Err(format!("`{e}`: expected one argument")),
    })
}

/// `COUNT(x)` as a sum: 1 for each record whose `x` is not null.
fn counted(arg: &Expr) -> Result<Expr, String> {
    let text = format!("CASE WHEN {arg} IS NULL THEN 0 ELSE 1 END");
    Parser::new(&GenericDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("COUNT({arg}): {e}"))
}

/// A `SESSION` table's partition must be the query's key: sessions are
/// kept per key.
fn same_partition(partition: Option<&[String]>, key: Option<&Expr>) -> Result<(), String> {
    let Some(partition) = partition else { return Ok(()) };
    match (partition, key) {
        ([field], Some(Expr::Identifier(k))) if *field == k.value => Ok(()),
        ([field], _) => Err(format!(
            "SESSION(TABLE source PARTITION BY {field}, …): GROUP BY window_start, window_end, {field} (sessions are \
             kept per key)"
        )),
        _ => Err(format!(
            "SESSION(TABLE source PARTITION BY ({}), …): partition by one field; combine them in the source, as \
             concat_ws('|', a, b)",
            partition.join(", ")
        )),
    }
}

/// The first aggregate call within `e`, as written.
fn aggregate_in(e: &Expr) -> Option<String> {
    let mut found = None;
    let _ = visit_expressions(e, |sub| {
        if found.is_none() && aggregate_call(sub).is_some() {
            found = Some(sub.to_string());
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

mod join;
pub mod options;
mod top_n;
mod tvf;
mod window;
mod window_join;

#[cfg(test)]
mod tests;
