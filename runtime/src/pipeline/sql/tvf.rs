//! Flink's windowing table-valued functions: `FROM TABLE(TUMBLE(TABLE
//! source, DESCRIPTOR(ts), size))`, `HOP(TABLE source, DESCRIPTOR(ts),
//! slide, size)` and `SESSION(TABLE source PARTITION BY k, DESCRIPTOR(ts),
//! gap)`, by position or by parameter name (`DATA => …`, `TIMECOL => …`),
//! read into the same window a group window gives. The query then groups
//! by `window_start, window_end [, k]` or ranks per window.
//!
//! The SQL dialect parses neither a `TABLE t` argument nor a `PARTITION BY`
//! in one, so [`table_arguments`] takes both out of the text first.

use datafusion_sql::sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Select, TableFactor};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::window::{interval, over_event_time, Window};
use super::{function_name, SOURCE};
use crate::manifest::{EventTimeSpec, HumanDuration, WindowSpec};

/// The windowing functions a TVF may call, lowercase.
const FUNCTIONS: [&str; 4] = ["tumble", "hop", "session", "cumulate"];

/// The columns a windowing TVF adds to each row besides the bounds: its
/// `window_time` is the window's last instant.
pub(super) const WINDOW_TIME: &str = "window_time";

/// The window a query's `FROM TABLE(…)` asks for.
pub(super) struct TableWindow {
    pub window: Window,
    /// The event-time field its `DESCRIPTOR` names.
    pub field: String,
    /// A `SESSION` table's `PARTITION BY` fields.
    pub partition: Option<Vec<String>>,
    /// The table it windows, as written.
    pub data: String,
}

/// `sql` with the `TABLE` keyword of a windowing function's first argument
/// dropped, and the fields of a `PARTITION BY` after it (taken out too).
pub(super) fn table_arguments(sql: &str) -> Result<(String, Option<Vec<String>>), String> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        // The parser names what is wrong.
        return Ok((sql.to_string(), None));
    };
    let words: Vec<usize> = (0..tokens.len()).filter(|&i| !matches!(tokens[i], Token::Whitespace(_))).collect();
    let token = |k: usize| words.get(k).map(|&i| &tokens[i]);
    let keyword = |k: usize, want: Keyword| matches!(token(k), Some(Token::Word(w)) if w.keyword == want);
    let mut dropped = vec![false; tokens.len()];
    let mut partition = None;
    // The function whose arguments each word is in: a stack of the calls open.
    let mut calls: Vec<String> = Vec::new();
    for k in 0..words.len() {
        match token(k) {
            Some(Token::LParen) => {
                let name = match k.checked_sub(1).and_then(token) {
                    Some(Token::Word(f)) => f.value.to_ascii_lowercase(),
                    _ => String::new(),
                };
                calls.push(name);
                continue;
            }
            Some(Token::RParen) => {
                calls.pop();
                continue;
            }
            _ => {}
        }
        let Some(function) = calls.last().filter(|f| FUNCTIONS.contains(&f.as_str())).cloned() else { continue };
        // `TABLE t` as the first argument, or named: `DATA => TABLE t`.
        let first = matches!(k.checked_sub(1).and_then(token), Some(Token::LParen));
        let named = matches!(k.checked_sub(1).and_then(token), Some(Token::RArrow))
            && matches!(k.checked_sub(2).and_then(token), Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("data"));
        if !keyword(k, Keyword::TABLE) || !(first || named) {
            continue;
        }
        let Some(&name) = words.get(k + 1) else { continue };
        dropped[words[k]..name].iter_mut().for_each(|d| *d = true);
        if !(keyword(k + 2, Keyword::PARTITION) && keyword(k + 3, Keyword::BY)) {
            continue;
        }
        if function != "session" {
            return Err(format!(
                "{}(TABLE … PARTITION BY …): only SESSION takes PARTITION BY",
                function.to_uppercase()
            ));
        }
        let mut fields = Vec::new();
        let mut end = k + 4;
        if matches!(token(end), Some(Token::LParen)) {
            end += 1;
            loop {
                match token(end) {
                    Some(Token::Word(w)) => fields.push(w.value.clone()),
                    Some(Token::Comma) => {}
                    Some(Token::RParen) => break,
                    _ => return Err("SESSION(TABLE source PARTITION BY (a, b), …): expected field names".into()),
                }
                end += 1;
            }
        } else if let Some(Token::Word(w)) = token(end) {
            fields.push(w.value.clone());
        }
        if fields.is_empty() {
            return Err("SESSION(TABLE source PARTITION BY k, …): expected the field after PARTITION BY".into());
        }
        if partition.replace(fields).is_some() {
            return Err("one windowing table function per query".into());
        }
        dropped[name + 1..=words[end]].iter_mut().for_each(|d| *d = true);
    }
    let text = tokens.iter().zip(&dropped).filter(|(_, d)| !**d).map(|(t, _)| t.to_string()).collect();
    Ok((text, partition))
}

/// The window of a query that reads `FROM TABLE(<windowing function>)` of
/// the source, the function replaced by the source; None for any other
/// FROM.
pub(super) fn window_table(
    select: &mut Select,
    partition: Option<&[String]>,
    event_time: Option<&EventTimeSpec>,
) -> Result<Option<TableWindow>, String> {
    let [table] = select.from.as_mut_slice() else { return Ok(None) };
    let TableFactor::TableFunction { expr, alias } = &table.relation else { return Ok(None) };
    let read = read(expr, partition)?;
    let prefix = read.window.prefix;
    if !table.joins.is_empty() {
        return Err(format!(
            "a JOIN of a {prefix} table: Flink's window join joins two subqueries, (SELECT * FROM TABLE({prefix}(TABLE \
             source, …))) a JOIN (SELECT * FROM TABLE({prefix}(TABLE s, …))) b ON a.k = b.k AND a.window_start = \
             b.window_start AND a.window_end = b.window_end"
        ));
    }
    if !read.data.eq_ignore_ascii_case(SOURCE) {
        return Err(format!("{prefix}(TABLE {}, …): expected TABLE source, the pipeline's source", read.data));
    }
    over_event_time(prefix, &read.field, event_time)?;
    if prefix == "SESSION" && read.partition.is_none() {
        return Err("SESSION(TABLE source, …) windows every key together, which is not supported: partition it, as \
                    SESSION(TABLE source PARTITION BY k, …), and GROUP BY window_start, window_end, k"
            .into());
    }
    let mut relation = Parser::new(&GenericDialect {})
        .try_with_sql(SOURCE)
        .and_then(|mut p| p.parse_table_factor())
        .map_err(|e| format!("FROM TABLE({expr}): {e}"))?;
    if let TableFactor::Table { alias: a, .. } = &mut relation {
        *a = alias.clone();
    }
    table.relation = relation;
    Ok(Some(read))
}

/// A windowing function call (`TUMBLE(TABLE t, DESCRIPTOR(ts), …)`): the
/// table it windows, how, and over which field.
pub(super) fn read(expr: &Expr, partition: Option<&[String]>) -> Result<TableWindow, String> {
    let prefix = match function_name(expr).as_deref() {
        Some("tumble") => "TUMBLE",
        Some("hop") => "HOP",
        Some("session") => "SESSION",
        Some("cumulate") => return Err("CUMULATE windows are not supported yet (TUMBLE, HOP and SESSION are)".into()),
        _ => return Err(format!("FROM TABLE({expr}): expected a windowing function, TUMBLE, HOP or SESSION")),
    };
    let given = parameters(expr, prefix)?;
    let get = |p: &str| given.iter().find(|(name, _)| *name == p).map(|(_, e)| *e);
    let need = |p: &str| get(p).ok_or_else(|| format!("{prefix}(…): missing its {} parameter", p.to_uppercase()));
    if get("offset").is_some() {
        return Err(format!("{prefix}(…, offset): an offset is not supported yet; windows are aligned to the epoch"));
    }
    let data = match need("data")? {
        Expr::Identifier(t) => t.value.clone(),
        other => return Err(format!("{prefix}({other}, …): expected TABLE and a table's name, as TABLE source")),
    };
    let timecol = need("timecol")?;
    let field = descriptor(timecol)
        .ok_or_else(|| format!("{prefix}(TABLE {data}, {timecol}, …): expected DESCRIPTOR(ts), the time column"))?;
    let duration = |p: &str| -> Result<HumanDuration, String> {
        interval(need(p)?).map_err(|why| format!("{prefix}(…) {}: {why}", p.to_uppercase()))
    };
    let mut spec = WindowSpec::default();
    match prefix {
        "TUMBLE" => spec.size = Some(duration("size")?),
        "HOP" => (spec.slide, spec.size) = (Some(duration("slide")?), Some(duration("size")?)),
        _ => spec.gap = Some(duration("gap")?),
    }
    let partition = partition.filter(|_| prefix == "SESSION").map(<[String]>::to_vec);
    Ok(TableWindow { window: Window { spec, prefix }, field, partition, data })
}

/// The arguments of a windowing function call by parameter name, whether
/// given by position or by name.
fn parameters<'e>(call: &'e Expr, prefix: &str) -> Result<Vec<(&'static str, &'e Expr)>, String> {
    let names: &[&'static str] = match prefix {
        "TUMBLE" => &["data", "timecol", "size", "offset"],
        "HOP" => &["data", "timecol", "slide", "size", "offset"],
        _ => &["data", "timecol", "gap"],
    };
    let Expr::Function(f) = call else { return Ok(Vec::new()) };
    let FunctionArguments::List(list) = &f.args else {
        return Err(format!("{prefix}: expected its arguments, as {prefix}(TABLE source, DESCRIPTOR(ts), …)"));
    };
    let listed = names.iter().map(|n| n.to_uppercase()).collect::<Vec<_>>().join(", ");
    let mut given: Vec<(&'static str, &Expr)> = Vec::new();
    for (at, arg) in list.args.iter().enumerate() {
        let (name, value) = match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => match names.get(at) {
                Some(name) => (*name, e),
                None => return Err(format!("{prefix}(…): too many arguments; it takes {listed}")),
            },
            FunctionArg::Named { name, arg: FunctionArgExpr::Expr(e), .. } => {
                match names.iter().find(|n| n.eq_ignore_ascii_case(&name.value)) {
                    Some(n) => (*n, e),
                    None => return Err(format!("{prefix}(…): no parameter {name}; it takes {listed}")),
                }
            }
            other => return Err(format!("{prefix}(…): `{other}` is not an argument it takes ({listed})")),
        };
        if given.iter().any(|(n, _)| *n == name) {
            return Err(format!("{prefix}(…): {} is given twice", name.to_uppercase()));
        }
        given.push((name, value));
    }
    Ok(given)
}

/// The field of `DESCRIPTOR(field)`.
fn descriptor(e: &Expr) -> Option<String> {
    if function_name(e).as_deref() != Some("descriptor") {
        return None;
    }
    match super::arguments(e).as_slice() {
        [FunctionArgExpr::Expr(Expr::Identifier(id))] => Some(id.value.clone()),
        _ => None,
    }
}
