//! `spec.pipeline.sql`: one streaming query, turned into the same steps a
//! manifest could list (filter, select, keyBy, aggregate, window).
//!
//! The statement is parsed by DataFusion's SQL parser; its clauses become
//! steps whose expressions are then planned and type-checked by DataFusion
//! like any step's. What maps:
//!
//! - `WHERE c` -> `filter: c`
//! - `GROUP BY k` -> `keyBy` (a column, or an expression named by its
//!   alias in the select list, else `key`); no `GROUP BY` with aggregates
//!   -> one key for all records
//! - `GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)`, `HOP(ts, slide, size)`,
//!   `SESSION(ts, gap)` -> `window` (Flink's group-window syntax; `ts` must
//!   be `spec.pipeline.eventTime.field`); `window_start` / `window_end` or
//!   `TUMBLE_START(…)`, `TUMBLE_END(…)` (and `HOP_`, `SESSION_`) read the
//!   window's bounds
//! - `COUNT(*)`, `SUM`, `MIN`, `MAX`, `AVG` of a column or an expression ->
//!   the aggregate step (expressions are computed by a select before it)
//! - `HAVING c` -> a filter after the aggregate; the select list -> a
//!   final select
//!
//! Anything else (joins, subqueries, `ORDER BY`, `LIMIT`, `DISTINCT`,
//! `COUNT(DISTINCT …)`, several key expressions) is refused, naming it.

use std::ops::ControlFlow;
use std::time::Duration;

use datafusion_sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, Query, Select, SelectItem, SetExpr, Statement, TableFactor, Value,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;

use crate::manifest::{AggregateSpec, EventTimeSpec, HumanDuration, KeyBySpec, StepSpec, WindowSpec};

/// A step made from the query, and the clause it came from (for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStep {
    pub step: StepSpec,
    pub clause: &'static str,
}

/// The table a query reads: the pipeline's source.
const SOURCE: &str = "source";

/// The key field when the query has no `GROUP BY` key of its own name.
const KEY: &str = "key";

/// The steps `sql` means over the pipeline's source, or what in it is not
/// supported (the caller prefixes `spec.pipeline.sql`).
pub fn translate(sql: &str, event_time: Option<&EventTimeSpec>) -> Result<Vec<SqlStep>, String> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| e.to_string())?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => return Err("expected a SELECT statement, got nothing".into()),
        (Some(_), false) => return Err("expected one SELECT statement, got several".into()),
    };
    let Statement::Query(query) = statement else {
        return Err(format!("expected a SELECT statement, got `{}`", first_words(&statement.to_string())));
    };
    let select = plain_select(*query)?;
    Grouping::from_select(select, event_time)?.steps()
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The query's one `SELECT … FROM source`, refusing the clauses not built.
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
    match select.from.as_slice() {
        [one] if !one.joins.is_empty() => Err("joins are not supported yet".into()),
        [one] => match &one.relation {
            TableFactor::Table { name, alias: None, args: None, .. }
                if name.to_string().eq_ignore_ascii_case(SOURCE) =>
            {
                Ok(select)
            }
            TableFactor::Table { alias: Some(a), .. } => {
                Err(format!("FROM source takes no alias (`{a}`); name fields without a table"))
            }
            other => Err(format!("expected FROM source (the pipeline's source), got FROM {other}")),
        },
        [] => Err("expected FROM source".into()),
        _ => Err("expected one table, FROM source; joins are not supported yet".into()),
    }
}

/// An aggregate call of the select list or `HAVING`.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Count,
    Of(&'static str, Box<Expr>),
}

/// A `TUMBLE`, `HOP` or `SESSION` group window.
struct Window {
    spec: WindowSpec,
    prefix: &'static str,
}

struct Grouping {
    select: Select,
    filter: Option<String>,
    /// The key expression and the field it is written to (None: all
    /// records under one key).
    key: Option<(Expr, String)>,
    window: Option<Window>,
    time_field: Option<String>,
}

impl Grouping {
    fn from_select(mut select: Select, event_time: Option<&EventTimeSpec>) -> Result<Grouping, String> {
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
        let mut window = None;
        let mut time_field = None;
        for e in exprs {
            if let Some(prefix) = window_function(&e) {
                if window.is_some() {
                    return Err("GROUP BY takes one window".into());
                }
                let (w, field) = group_window(prefix, &e)?;
                match event_time {
                    Some(t) if t.field == field => {}
                    Some(t) => {
                        return Err(format!(
                            "{prefix}({field}, …): windows are over the event time, spec.pipeline.eventTime.field `{}`",
                            t.field
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{prefix}({field}, …) needs spec.pipeline.eventTime with field `{field}` (and its watermark's maxOutOfOrderness)"
                        ))
                    }
                }
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
        Ok(Grouping { select, filter, key, window, time_field })
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
        let step = |clause, step: StepSpec| SqlStep { step, clause };
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
            return Err("GROUP BY needs an aggregate in the select list (COUNT(*), SUM, MIN, MAX, AVG)".into());
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
            items => items
                .iter()
                .map(|item| match item {
                    SelectItem::UnnamedExpr(e) => Ok(e.to_string()),
                    SelectItem::ExprWithAlias { expr, alias } => Ok(format!("{expr} AS {alias}")),
                    other => Err(format!("`{other}` is not supported in the select list")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    }
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
        "count_distinct" | "first_value" | "last_value" | "stddev" | "variance" | "median" | "array_agg"
        | "string_agg" | "approx_distinct" => {
            return Some(Err(format!("the aggregate {name} is not supported yet (COUNT(*), SUM, MIN, MAX, AVG are)")))
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
    if let FunctionArguments::List(list) = &f.args {
        if list.duplicate_treatment.is_some() {
            return Some(Err(format!("`{e}`: DISTINCT in an aggregate is not supported yet")));
        }
    }
    let args = arguments(e);
    Some(match (kind, args.as_slice()) {
        ("count", [FunctionArgExpr::Wildcard]) => Ok(Call::Count),
        ("count", [FunctionArgExpr::Expr(Expr::Value(v))]) if v.to_string() == "1" => Ok(Call::Count),
        ("count", _) => Err(format!("`{e}`: COUNT(*) is supported, COUNT of a field not yet")),
        (kind, [FunctionArgExpr::Expr(arg)]) => Ok(Call::Of(kind, Box::new(arg.clone()))),
        (_, _) => Err(format!("`{e}`: expected one argument")),
    })
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

/// `TUMBLE`, `HOP` or `SESSION` if `e` calls one.
fn window_function(e: &Expr) -> Option<&'static str> {
    match function_name(e)?.as_str() {
        "tumble" => Some("TUMBLE"),
        "hop" => Some("HOP"),
        "session" => Some("SESSION"),
        _ => None,
    }
}

/// `window_start` or `window_end` for `TUMBLE_START(…)` and its kin.
fn window_bound(e: &Expr, prefix: Option<&str>) -> Option<String> {
    let name = function_name(e)?;
    let (kind, bound) = name.rsplit_once('_')?;
    let bound = match bound {
        "start" => "window_start",
        "end" => "window_end",
        _ => return None,
    };
    prefix.filter(|p| p.eq_ignore_ascii_case(kind)).map(|_| bound.to_string())
}

/// The window a `TUMBLE(ts, size)`, `HOP(ts, slide, size)` or
/// `SESSION(ts, gap)` call asks for, and its time field.
fn group_window(prefix: &'static str, e: &Expr) -> Result<(Window, String), String> {
    let args = arguments(e);
    let (field, durations) = match args.split_first() {
        Some((FunctionArgExpr::Expr(Expr::Identifier(id)), rest)) => (id.value.clone(), rest),
        _ => return Err(format!("`{e}`: expected the event-time field first, as {prefix}(ts, INTERVAL '1' MINUTE)")),
    };
    let durations: Vec<HumanDuration> = durations
        .iter()
        .map(|a| match a {
            FunctionArgExpr::Expr(x) => interval(x).map_err(|why| format!("`{e}`: {why}")),
            other => Err(format!("`{e}`: expected an interval, got `{other}`")),
        })
        .collect::<Result<_, _>>()?;
    let empty = WindowSpec { size: None, slide: None, gap: None, aggregate: AggregateSpec::default() };
    let spec = match (prefix, durations.as_slice()) {
        ("TUMBLE", [size]) => WindowSpec { size: Some(*size), ..empty },
        ("HOP", [slide, size]) => WindowSpec { size: Some(*size), slide: Some(*slide), ..empty },
        ("SESSION", [gap]) => WindowSpec { gap: Some(*gap), ..empty },
        ("TUMBLE", _) => return Err(format!("`{e}`: expected TUMBLE(ts, size)")),
        ("HOP", _) => return Err(format!("`{e}`: expected HOP(ts, slide, size)")),
        _ => return Err(format!("`{e}`: expected SESSION(ts, gap)")),
    };
    Ok((Window { spec, prefix }, field))
}

/// An `INTERVAL '5' MINUTE` or `INTERVAL '5 minutes'` as a duration.
fn interval(e: &Expr) -> Result<HumanDuration, String> {
    let Expr::Interval(i) = e else {
        return Err(format!("expected an interval such as INTERVAL '1' MINUTE, got `{e}`"));
    };
    let text = match i.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let (number, unit) = match &i.leading_field {
        Some(field) => (text.trim().to_string(), field.to_string()),
        None => {
            let mut words = text.split_whitespace();
            (words.next().unwrap_or_default().to_string(), words.next().unwrap_or("second").to_string())
        }
    };
    let unit = unit.to_ascii_lowercase();
    let millis: u64 = match unit.trim_end_matches('s') {
        "millisecond" => 1,
        "second" => 1_000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        _ => return Err(format!("expected an interval in milliseconds, seconds, minutes, hours or days, got {unit}")),
    };
    let n: u64 = number.parse().map_err(|_| format!("expected a whole number of {unit}, got `{number}`"))?;
    Ok(HumanDuration(Duration::from_millis(n.saturating_mul(millis))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(sql: &str, time: Option<&str>) -> Result<Vec<(String, &'static str)>, String> {
        let time = time.map(|f| EventTimeSpec {
            field: f.into(),
            max_out_of_orderness: Default::default(),
            idle_timeout: None,
        });
        let steps = translate(sql, time.as_ref())?;
        Ok(steps.into_iter().map(|s| (serde_json::to_string(&s.step).unwrap_or_default(), s.clause)).collect())
    }

    fn json(steps: &[(String, &str)]) -> Vec<String> {
        steps.iter().map(|(s, _)| s.clone()).collect()
    }

    #[test]
    fn where_and_a_select_list_become_a_filter_and_a_select() {
        let s = steps("SELECT item, price * qty AS total FROM source WHERE price > 10", None).unwrap();
        assert_eq!(json(&s), [r#"{"filter":"price > 10"}"#, r#"{"select":["item","price * qty AS total"]}"#]);
        assert_eq!(s[0].1, "WHERE");
        let s = steps("select * from SOURCE where region <> 'eu'", None).unwrap();
        assert_eq!(json(&s), [r#"{"filter":"region <> 'eu'"}"#]);
    }

    #[test]
    fn group_by_a_column_becomes_keyby_aggregate_having_and_select() {
        let sql = "SELECT item, COUNT(*) AS n, SUM(qty) AS units FROM source GROUP BY item HAVING SUM(qty) > 5";
        assert_eq!(
            json(&steps(sql, None).unwrap()),
            [
                r#"{"keyBy":{"field":"item"}}"#,
                r#"{"aggregate":{"count":true,"sum":["qty"],"min":[],"max":[]}}"#,
                r#"{"filter":"sum_qty > 5"}"#,
                r#"{"select":["item","count AS n","sum_qty AS units"]}"#,
            ]
        );
    }

    #[test]
    fn aggregates_of_expressions_are_computed_by_a_select_before_the_key() {
        let sql = "SELECT lower(region) AS r, SUM(price * qty) AS revenue, MAX(price) AS top FROM source GROUP BY lower(region)";
        assert_eq!(
            json(&steps(sql, None).unwrap()),
            [
                r#"{"select":["lower(region) AS r","price * qty AS arg0","price"]}"#,
                r#"{"keyBy":{"field":"r"}}"#,
                r#"{"aggregate":{"count":false,"sum":["arg0"],"min":[],"max":["price"]}}"#,
                r#"{"select":["r","sum_arg0 AS revenue","max_price AS top"]}"#,
            ]
        );
        // A key expression without an alias is written to `key`.
        let sql = "SELECT upper(item), COUNT(*) AS n FROM source GROUP BY upper(item)";
        assert_eq!(
            json(&steps(sql, None).unwrap()),
            [
                r#"{"keyBy":{"field":"key","expr":"upper(item)"}}"#,
                r#"{"aggregate":{"count":true,"sum":[],"min":[],"max":[]}}"#,
                r#"{"select":["key","count AS n"]}"#,
            ]
        );
    }

    #[test]
    fn group_windows_become_window_steps_over_the_event_time() {
        let sql = "SELECT item, TUMBLE_START(ts, INTERVAL '1' MINUTE) AS t, COUNT(*) AS n FROM source \
                   GROUP BY item, TUMBLE(ts, INTERVAL '1' MINUTE)";
        let s = json(&steps(sql, Some("ts")).unwrap());
        assert_eq!(s[1], r#"{"window":{"size":"1m","aggregate":{"count":true,"sum":[],"min":[],"max":[]}}}"#);
        assert_eq!(s[2], r#"{"select":["item","window_start AS t","count AS n"]}"#);
        let sql = "SELECT item, window_end, AVG(v) AS a FROM source GROUP BY HOP(ts, INTERVAL '10 seconds', INTERVAL '1' MINUTE), item";
        let s = json(&steps(sql, Some("ts")).unwrap());
        assert_eq!(
            s[1],
            r#"{"window":{"size":"1m","slide":"10s","aggregate":{"count":false,"sum":[],"min":[],"max":[],"avg":["v"]}}}"#
        );
        let sql = "SELECT COUNT(*) AS n, SESSION_END(ts, INTERVAL '30' SECOND) AS e FROM source GROUP BY SESSION(ts, INTERVAL '30' SECOND)";
        let s = json(&steps(sql, Some("ts")).unwrap());
        assert_eq!(s[0], r#"{"keyBy":{"field":"key","expr":"'all'"}}"#);
        assert_eq!(s[1], r#"{"window":{"gap":"30s","aggregate":{"count":true,"sum":[],"min":[],"max":[]}}}"#);
        assert_eq!(s[2], r#"{"select":["count AS n","window_end AS e"]}"#);
    }

    #[test]
    fn what_is_not_built_is_refused_by_name() {
        let refused = [
            ("SELECT a FROM source JOIN other ON a = b", "joins are not supported yet"),
            ("SELECT a FROM other", "expected FROM source"),
            ("SELECT a FROM source s", "takes no alias"),
            ("SELECT a FROM source ORDER BY a", "ORDER BY"),
            ("SELECT a FROM source LIMIT 3", "LIMIT is not supported"),
            ("SELECT DISTINCT a FROM source", "SELECT DISTINCT"),
            ("SELECT a FROM source UNION SELECT a FROM source", "UNION of queries is not supported yet"),
            ("SELECT a, b, COUNT(*) AS n FROM source GROUP BY a, b", "one key expression"),
            ("SELECT a, COUNT(DISTINCT b) AS n FROM source GROUP BY a", "DISTINCT in an aggregate"),
            ("SELECT a, COUNT(b) AS n FROM source GROUP BY a", "COUNT of a field not yet"),
            ("SELECT a FROM source WHERE SUM(b) > 1", "WHERE cannot use an aggregate"),
            ("SELECT a, SUM(b * 2) FROM source GROUP BY a", "`SUM(b * 2)` needs a name"),
            ("SELECT a FROM source GROUP BY a", "needs an aggregate"),
            ("SELECT * FROM source GROUP BY a", "needs an aggregate"),
            ("DELETE FROM source", "expected a SELECT statement"),
            ("SELECT a FROM source; SELECT b FROM source", "got several"),
            (
                "SELECT a, COUNT(*) AS n FROM source GROUP BY a, TUMBLE(ts, INTERVAL '1' MINUTE)",
                "needs spec.pipeline.eventTime",
            ),
        ];
        for (sql, expected) in refused {
            let err = steps(sql, None).unwrap_err();
            assert!(err.contains(expected), "{sql}: {err}");
        }
        let err = steps("SELECT a, COUNT(*) AS n FROM source GROUP BY a, TUMBLE(t, INTERVAL '1' MINUTE)", Some("ts"))
            .unwrap_err();
        assert!(err.contains("spec.pipeline.eventTime.field `ts`"), "{err}");
        let err = steps("SELECT a, COUNT(*) AS n FROM source GROUP BY a, TUMBLE(ts, INTERVAL '1' WEEK)", Some("ts"))
            .unwrap_err();
        assert!(err.contains("got week"), "{err}");
    }
}
