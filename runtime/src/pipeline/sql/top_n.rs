//! Flink SQL's Top-N: `SELECT … FROM (SELECT …, ROW_NUMBER() OVER
//! (PARTITION BY k ORDER BY x DESC) AS rownum FROM source [WHERE …]) WHERE
//! rownum <= N`, read into a `keyBy` and a `topN` step whose rank is
//! written to the row number's name. Its Window Top-N ranks the rows of a
//! grouped window query instead of the source's, `PARTITION BY
//! window_start, window_end [, k]`, into a `topN` per window; over a
//! windowing table function (`FROM TABLE(TUMBLE(…))`) it ranks the
//! source's records per window, into a `topN` with a `window`.

use datafusion_sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, OrderByExpr, Query, Select, SelectItem, TableFactor, Value, WindowType,
};

use super::join::{conjuncts, flipped};
use super::tvf::{window_table, WINDOW_TIME};
use super::{function_name, join_steps, plain_select, select_list, select_steps, Joinable, SqlStep, BOUNDS, KEY};
use crate::manifest::{EventTimeSpec, KeyBySpec, RankFunction, SortOrder, StepSpec, TopNSpec, TopNWindow};

/// The steps of a Top-N query, or None if `outer` reads no subquery.
pub(super) fn top_n(
    outer: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Option<Vec<SqlStep>>, String> {
    if super::window_join::semi_joined(outer) {
        return Ok(None);
    }
    let Some(subquery) = subquery_of(outer)? else { return Ok(None) };
    refuse_grouping(outer, "the outer query")?;
    let mut inner = plain_select(*subquery)?;
    refuse_grouping(&inner, "the subquery")?;
    let step = |clause, step: StepSpec| SqlStep { step, clause, stream: None };
    let windows = window_results(&mut inner, event_time, streams)?;
    // Flink's Window Top-N over a windowing table function ranks the
    // records themselves, per window.
    let (window, time) = match windows {
        Some(_) => (None, None),
        None => match window_table(&mut inner, streams.partition, event_time)? {
            Some(t) if t.window.spec.gap.is_some() => {
                return Err("a Top-N per SESSION window is not supported; rank per TUMBLE or HOP window".into())
            }
            Some(t) => {
                let size = t.window.spec.size.ok_or("a TUMBLE or HOP table has a size")?;
                (Some(TopNWindow { size, slide: t.window.spec.slide }), Some(t.field))
            }
            None => (None, None),
        },
    };
    let per_window = windows.is_some();
    let mut steps = match windows {
        Some(steps) => steps,
        None => join_steps(&mut inner, event_time, streams)?,
    };
    if let Some(w) = inner.selection.take() {
        steps.push(step("WHERE", StepSpec { filter: Some(w.to_string()), ..StepSpec::default() }));
    }
    let over = RowNumber::take(&mut inner)?;
    let key = over.key(per_window, window.is_some())?;
    let (limit, rest) = limit(outer.selection.take(), &over.alias)?;
    if !matches!(inner.projection.as_slice(), [SelectItem::Wildcard(_)]) {
        let mut list = select_list(&inner.projection, "the subquery's select list")?;
        if window.is_some() {
            // The ranking step writes the bounds, after this select.
            list.retain(|item| !BOUNDS.contains(&item.as_str()));
            if list.iter().any(|item| item == WINDOW_TIME || item.ends_with(&format!(" AS {WINDOW_TIME}"))) {
                return Err(format!(
                    "{WINDOW_TIME}: a Top-N per window keeps each record's own event time and does not give \
                     {WINDOW_TIME}; select window_end"
                ));
            }
        }
        // The ranking reads these: kept even when not listed.
        let bounds = BOUNDS.iter().filter(|_| per_window).map(|b| b.to_string());
        for needed in key.iter().cloned().chain([over.order_by.clone()]).chain(bounds).chain(time.clone()) {
            if !list.contains(&needed) {
                list.push(needed);
            }
        }
        steps.push(step("the subquery's SELECT", StepSpec { select: Some(list), ..StepSpec::default() }));
    }
    let key_by = match &key {
        Some(field) => KeyBySpec { field: field.clone(), expr: None },
        None => KeyBySpec { field: KEY.into(), expr: Some("'all'".into()) },
    };
    steps.push(step("PARTITION BY", StepSpec { key_by: Some(key_by), ..StepSpec::default() }));
    let rank_field = (over.alias != "rank").then(|| over.alias.clone());
    let spec = TopNSpec {
        limit,
        order_by: over.order_by,
        order: over.order,
        rank_field,
        per_window,
        ranking: over.ranking,
        window,
    };
    steps.push(step("ROW_NUMBER", StepSpec { top_n: Some(spec), ..StepSpec::default() }));
    if let Some(rest) = rest {
        steps.push(step("WHERE", StepSpec { filter: Some(rest), ..StepSpec::default() }));
    }
    match outer.projection.as_slice() {
        [SelectItem::Wildcard(_)] => {}
        items => {
            let list = select_list(items, "the select list")?;
            steps.push(step("SELECT", StepSpec { select: Some(list), ..StepSpec::default() }));
        }
    }
    Ok(Some(steps))
}

/// The subquery `select` reads FROM, if it reads one.
fn subquery_of(select: &Select) -> Result<Option<Box<Query>>, String> {
    match select.from.as_slice() {
        [table] => match &table.relation {
            TableFactor::Derived { subquery, .. } if table.joins.is_empty() => Ok(Some(subquery.clone())),
            // A join of subqueries is a window join's.
            TableFactor::Derived { .. } => Ok(None),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// When the Top-N subquery reads a grouped window query (Flink's Window
/// Top-N), that query's steps; None when it reads the source.
fn window_results(
    inner: &mut Select,
    event_time: Option<&EventTimeSpec>,
    streams: Joinable<'_>,
) -> Result<Option<Vec<SqlStep>>, String> {
    let Some(query) = subquery_of(inner)? else { return Ok(None) };
    inner.from.clear();
    let (steps, windowed) = select_steps(plain_select(*query)?, event_time, streams)?;
    if !windowed {
        return Err("a Top-N of a grouped query ranks the rows of its windows (Flink's Window Top-N): the innermost \
                    query needs TUMBLE, HOP or SESSION in its GROUP BY"
            .into());
    }
    let listed = |bound: &str| {
        steps
            .last()
            .and_then(|s| s.step.select.as_ref())
            .is_some_and(|list| list.iter().any(|item| item == bound || item.ends_with(&format!(" AS {bound}"))))
    };
    if let Some(missing) = BOUNDS.iter().find(|b| !listed(b)) {
        return Err(format!(
            "the windows' rows are ranked per window: list `{missing}` in the innermost query's select list \
             (window_start, window_end or TUMBLE_START(…) AS window_start)"
        ));
    }
    Ok(Some(steps))
}

fn refuse_grouping(select: &Select, which: &str) -> Result<(), String> {
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.having.is_some() {
        return Err(format!("GROUP BY or HAVING in {which} of a Top-N query is not supported yet"));
    }
    Ok(())
}

/// `ROW_NUMBER() OVER (PARTITION BY k ORDER BY x [ASC | DESC]) AS rownum`,
/// or `RANK()` or `DENSE_RANK()` in its place.
struct RowNumber {
    ranking: RankFunction,
    partition: Vec<String>,
    order_by: String,
    order: SortOrder,
    alias: String,
}

impl RowNumber {
    /// Takes the row number out of the subquery's select list.
    fn take(inner: &mut Select) -> Result<RowNumber, String> {
        let is_over = |e: &Expr| matches!(e, Expr::Function(f) if f.over.is_some());
        let found: Vec<usize> = inner
            .projection
            .iter()
            .enumerate()
            .filter(|(_, item)| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => is_over(e),
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        let [at] = found.as_slice() else {
            return Err(format!(
                "a subquery is read as Flink's Top-N: its select list needs one ROW_NUMBER() OVER (PARTITION BY k \
                 ORDER BY x DESC) AS rownum, got {}",
                found.len()
            ));
        };
        let item = inner.projection.remove(*at);
        let SelectItem::ExprWithAlias { expr: Expr::Function(f), alias } = item else {
            return Err(format!("`{item}` needs a name: add AS rownum, and WHERE rownum <= N outside"));
        };
        let name = function_name(&Expr::Function(f.clone())).unwrap_or_default();
        let ranking = match name.as_str() {
            "row_number" => RankFunction::RowNumber,
            "rank" => RankFunction::Rank,
            "dense_rank" => RankFunction::DenseRank,
            _ => {
                return Err(format!(
                    "`{name}` OVER …: only ROW_NUMBER() is supported (Flink's Top-N), and RANK() and DENSE_RANK() \
                     per window"
                ))
            }
        };
        let Some(WindowType::WindowSpec(spec)) = &f.over else {
            return Err("ROW_NUMBER() OVER a named window is not supported; write the window inline".into());
        };
        if spec.window_frame.is_some() {
            return Err("ROW_NUMBER() OVER (… ROWS/RANGE …): a window frame is not supported".into());
        }
        let mut partition = Vec::new();
        for e in &spec.partition_by {
            let Expr::Identifier(k) = e else {
                return Err(format!(
                    "PARTITION BY {e}: partition by a field (compute it in the subquery's select list)"
                ));
            };
            partition.push(k.value.clone());
        }
        let (order_by, order) = match spec.order_by.as_slice() {
            [OrderByExpr { expr: Expr::Identifier(x), options, .. }] => {
                // SQL sorts ascending unless told DESC.
                let order = if options.asc == Some(false) { SortOrder::Descending } else { SortOrder::Ascending };
                (x.value.clone(), order)
            }
            [] => return Err("ROW_NUMBER() needs ORDER BY a numeric field".into()),
            [one] => {
                return Err(format!("ORDER BY {one}: order by a field (compute it in the subquery's select list)"))
            }
            _ => return Err("ROW_NUMBER() orders by one field; ranking by several is not supported yet".into()),
        };
        Ok(RowNumber { ranking, partition, order_by, order, alias: alias.value })
    }

    /// The ranking's key field; None: all records ranked together. Per
    /// window (of rows, `per_window`, or of records, `records`), the
    /// window's bounds are not part of the key (the step ranks each window
    /// apart) and a ranking of only the window's rows is keyed by its start.
    fn key(&self, per_window: bool, records: bool) -> Result<Option<String>, String> {
        if self.ranking != RankFunction::RowNumber && !per_window && !records {
            let name = if self.ranking == RankFunction::Rank { "RANK()" } else { "DENSE_RANK()" };
            return Err(format!(
                "{name} OVER …: supported in a Top-N per window (over a grouped window query); a ranking updated \
                 per record takes ROW_NUMBER()"
            ));
        }
        let mut rest: Vec<&String> = self.partition.iter().collect();
        if per_window || records {
            if !self.partition.iter().any(|p| p == "window_start") {
                return Err("a Top-N of window rows ranks per window: PARTITION BY window_start, window_end [, one \
                            more field]"
                    .into());
            }
            rest.retain(|p| !BOUNDS.contains(&p.as_str()));
            if rest.is_empty() && per_window {
                return Ok(Some("window_start".into()));
            }
        }
        match rest.as_slice() {
            [] => Ok(None),
            [k] => Ok(Some(k.to_string())),
            _ => Err("PARTITION BY takes one field; combine them in the subquery, as concat_ws('|', a, b)".into()),
        }
    }
}

/// The N of `WHERE rownum <= N` (or `< N + 1`, `= 1`), and the rest of the
/// outer WHERE.
fn limit(selection: Option<Expr>, rownum: &str) -> Result<(u32, Option<String>), String> {
    let mut parts = Vec::new();
    if let Some(e) = selection {
        conjuncts(e, &mut parts);
    }
    let mut limit = None;
    let mut rest = Vec::new();
    for part in parts {
        match bound(&part, rownum) {
            Some(Ok(n)) if limit.is_none() => limit = Some(n),
            Some(Ok(_)) => return Err(format!("`{part}`: the outer WHERE bounds {rownum} once")),
            Some(Err(e)) => return Err(e),
            None => rest.push(part.to_string()),
        }
    }
    let Some(limit) = limit else {
        return Err(format!(
            "a Top-N query needs WHERE {rownum} <= N outside the subquery (a ranking of every record is not kept)"
        ));
    };
    Ok((limit, (!rest.is_empty()).then(|| rest.join(" AND "))))
}

/// `part` as a bound on the row number: None if it is not one.
fn bound(part: &Expr, rownum: &str) -> Option<Result<u32, String>> {
    let Expr::BinaryOp { left, op, right } = part else { return None };
    let is_rownum = |e: &Expr| matches!(e, Expr::Identifier(id) if id.value == rownum);
    let number = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<u32>().ok(),
            _ => None,
        },
        _ => None,
    };
    let (op, n) = match (is_rownum(left), is_rownum(right)) {
        (true, false) => (op.clone(), number(right)),
        (false, true) => (flipped(op), number(left)),
        _ => return None,
    };
    let Some(n) = n else {
        return Some(Err(format!("`{part}`: expected {rownum} compared with a whole number")));
    };
    Some(match op {
        BinaryOperator::LtEq => Ok(n),
        BinaryOperator::Lt if n > 1 => Ok(n - 1),
        BinaryOperator::Eq if n == 1 => Ok(1),
        _ => Err(format!("`{part}`: expected {rownum} <= N, {rownum} < N or {rownum} = 1 (ranks from 1 to N)")),
    })
}
