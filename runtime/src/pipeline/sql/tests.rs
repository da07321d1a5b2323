use super::*;

fn steps(sql: &str, time: Option<&str>) -> Result<Vec<(String, &'static str)>, String> {
    let time = time.map(|f| EventTimeSpec {
        field: f.into(),
        expr: None,
        max_out_of_orderness: Default::default(),
        idle_timeout: None,
        late_records: Default::default(),
        alignment: None,
    });
    let steps = translate(sql, time.as_ref(), &[])?;
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
    let sql =
        "SELECT lower(region) AS r, SUM(price * qty) AS revenue, MAX(price) AS top FROM source GROUP BY lower(region)";
    assert_eq!(
        json(&steps(sql, None).unwrap()),
        [
            r#"{"select":["lower(region) AS r","price * qty AS arg0","price"]}"#,
            r#"{"keyBy":{"field":"r"}}"#,
            r#"{"aggregate":{"count":false,"sum":["arg0"],"min":[],"max":["price"]}}"#,
            r#"{"select":["r","sum_arg0 AS revenue","max_price AS top"]}"#,
        ]
    );
    // COUNT of a field counts the records where it is not null.
    let sql = "SELECT a, COUNT(b) AS n, COUNT(*) AS all_n FROM source GROUP BY a HAVING COUNT(b) > 1";
    assert_eq!(
        json(&steps(sql, None).unwrap()),
        [
            r#"{"select":["a","CASE WHEN b IS NULL THEN 0 ELSE 1 END AS arg0"]}"#,
            r#"{"keyBy":{"field":"a"}}"#,
            r#"{"aggregate":{"count":true,"sum":["arg0"],"min":[],"max":[]}}"#,
            r#"{"filter":"sum_arg0 > 1"}"#,
            r#"{"select":["a","sum_arg0 AS n","count AS all_n"]}"#,
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
fn count_distinct_first_value_and_last_value_become_value_aggregates() {
    let sql = "SELECT item, COUNT(DISTINCT buyer) AS buyers, FIRST_VALUE(price) AS opening, \
               LAST_VALUE(price) AS closing FROM source GROUP BY item, TUMBLE(ts, INTERVAL '1' MINUTE)";
    let s = json(&steps(sql, Some("ts")).unwrap());
    assert_eq!(
        s[1],
        r#"{"window":{"size":"1m","aggregate":{"count":false,"sum":[],"min":[],"max":[],"countDistinct":["buyer"],"first":["price"],"last":["price"]}}}"#
    );
    assert_eq!(
        s[2],
        r#"{"select":["item","count_distinct_buyer AS buyers","first_price AS opening","last_price AS closing"]}"#
    );
}

#[test]
fn what_is_not_built_is_refused_by_name() {
    let refused = [
        ("SELECT a FROM source JOIN other ON a = b", "JOIN other: no stream of that id in spec.pipeline.streams"),
        ("SELECT a FROM other", "expected FROM source"),
        ("SELECT s.a FROM source s WHERE t.b > 1", "no table `t`; the query's table is `s`"),
        ("SELECT a FROM source, other", "a comma between tables is not supported"),
        ("SELECT a FROM source ORDER BY a", "ORDER BY"),
        ("SELECT a FROM source LIMIT 3", "LIMIT is not supported"),
        ("SELECT DISTINCT a FROM source", "SELECT DISTINCT"),
        ("SELECT a FROM source UNION SELECT a FROM source", "UNION of queries is not supported yet"),
        ("SELECT a, b, COUNT(*) AS n FROM source GROUP BY a, b", "one key expression"),
        (
            "SELECT a, SUM(DISTINCT b) AS n FROM source GROUP BY a",
            "DISTINCT is supported in COUNT(DISTINCT field) only",
        ),
        ("SELECT a, COUNT(DISTINCT *) AS n FROM source GROUP BY a", "name a field"),
        ("SELECT a, FIRST_VALUE(b ORDER BY c) AS n FROM source GROUP BY a", "ORDER BY or other clauses"),
        ("SELECT a, MEDIAN(b) AS n FROM source GROUP BY a", "the aggregate median is not supported yet"),
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
    let err =
        steps("SELECT a, COUNT(*) AS n FROM source GROUP BY a, TUMBLE(ts, INTERVAL '1' WEEK)", Some("ts")).unwrap_err();
    assert!(err.contains("got week"), "{err}");
}

/// `sql` over a source with event time `ts` joined with a stream
/// `ships` whose schema is `order`, `carrier`, `ts`.
fn joined(sql: &str) -> Result<Vec<(String, &'static str)>, String> {
    let time = EventTimeSpec {
        field: "ts".into(),
        expr: None,
        max_out_of_orderness: Default::default(),
        idle_timeout: None,
        late_records: Default::default(),
        alignment: None,
    };
    let stream: StreamSpec = serde_json::from_value(serde_json::json!({
        "source": {"id": "ships", "file": {"path": "ships.jsonl"}},
        "schema": [{"name": "order", "type": "string"}, {"name": "carrier", "type": "string"}, {"name": "ts", "type": "timestamp"}],
    }))
    .map_err(|e| e.to_string())?;
    let steps = translate(sql, Some(&time), &[stream])?;
    Ok(steps.into_iter().map(|s| (serde_json::to_string(&s.step).unwrap_or_default(), s.clause)).collect())
}

/// The intervalJoin step's settings other than its source and schema,
/// `before` and `after` in milliseconds.
fn join_settings(step: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(step).unwrap_or_default();
    let mut join = v["intervalJoin"].take();
    for bound in ["before", "after"] {
        let d: Option<crate::manifest::HumanDuration> = join[bound].as_str().and_then(|d| d.parse().ok());
        join[bound] = d.map(|d| d.millis()).into();
    }
    let keep = ["key", "otherKey", "before", "after", "prefix", "type", "eventTimeField"];
    keep.iter().filter(|k| !join[**k].is_null()).map(|k| (k.to_string(), join[*k].clone())).collect()
}

#[test]
fn an_interval_join_becomes_an_interval_join_step_and_its_tables_fields_the_joined_names() {
    let sql = "SELECT o.id, o.total, s.carrier, s.ts AS shipped FROM source o JOIN ships s \
               ON o.id = s.order AND s.ts BETWEEN o.ts - INTERVAL '1' HOUR AND o.ts + INTERVAL '2' DAY \
               WHERE s.carrier <> 'post'";
    let s = joined(sql).unwrap();
    assert_eq!(s[0].1, "JOIN");
    assert_eq!(
        join_settings(&s[0].0),
        serde_json::json!({"key": "id", "otherKey": "order", "before": 3_600_000, "after": 172_800_000, "prefix": "s_"})
    );
    assert!(s[0].0.contains(r#""source":{"id":"ships","file":{"path":"ships.jsonl"}}"#), "{}", s[0].0);
    assert!(s[0].0.contains(r#""schema":[{"name":"order""#), "{}", s[0].0);
    assert_eq!(
        json(&s[1..]),
        [
            r#"{"filter":"s_carrier <> 'post'"}"#,
            r#"{"select":["id","total","s_carrier AS carrier","s_ts AS shipped"]}"#
        ]
    );
}

#[test]
fn an_interval_join_reads_bounds_written_either_way_and_outer_joins_keep_their_type() {
    let cases = [
        // Comparisons, the other's time on either side; strict ones are a millisecond in.
        (
            "LEFT JOIN",
            "s.ts >= o.ts - INTERVAL '5' MINUTE AND s.ts < o.ts + INTERVAL '10' SECOND",
            (300_000, 9_999),
            "left",
        ),
        ("RIGHT OUTER JOIN", "o.ts - INTERVAL '5' MINUTE <= s.ts AND o.ts >= s.ts", (300_000, 0), "right"),
        // This side's time bounded by the other's: the bounds mirrored.
        (
            "FULL OUTER JOIN",
            "o.ts BETWEEN s.ts - INTERVAL '1' SECOND AND s.ts + INTERVAL '3' SECOND",
            (3_000, 1_000),
            "full",
        ),
        ("INNER JOIN", "(s.ts > o.ts - INTERVAL '2' SECOND) AND s.ts <= o.ts", (1_999, 0), "inner"),
    ];
    for (join, bound, (before, after), kind) in cases {
        let sql = format!("SELECT * FROM source AS o {join} ships AS s ON s.order = o.id AND {bound}");
        let s = joined(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(s.len(), 1, "SELECT * adds no step: {s:?}");
        let mut want =
            serde_json::json!({"key": "id", "otherKey": "order", "prefix": "s_", "before": before, "after": after});
        if kind != "inner" {
            want["type"] = kind.into();
        }
        assert_eq!(join_settings(&s[0].0), want, "{sql}");
    }
}

#[test]
fn a_window_after_an_interval_join_groups_by_the_joined_fields() {
    let sql = "SELECT s.carrier, COUNT(*) AS parcels, window_end FROM source o JOIN ships s \
               ON o.id = s.order AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' DAY \
               GROUP BY s.carrier, TUMBLE(o.ts, INTERVAL '1' HOUR)";
    let s = joined(sql).unwrap();
    let clauses: Vec<&str> = s.iter().map(|(_, c)| *c).collect();
    assert_eq!(clauses, ["JOIN", "GROUP BY", "GROUP BY", "SELECT"]);
    assert_eq!(
        json(&s[1..]),
        [
            r#"{"keyBy":{"field":"s_carrier"}}"#,
            r#"{"window":{"size":"1h","aggregate":{"count":true,"sum":[],"min":[],"max":[]}}}"#,
            r#"{"select":["s_carrier AS carrier","count AS parcels","window_end"]}"#,
        ]
    );
}

#[test]
fn joins_that_are_not_interval_joins_are_refused_by_name() {
    let on = "ON o.id = s.order AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR";
    let refused = [
        ("SELECT * FROM source o LEFT JOIN ships s ON o.id = s.order".to_string(), "a LEFT JOIN without a time bound is not supported"),
        ("SELECT * FROM source o JOIN ships s ON o.id = s.order AND s.ts >= o.ts".into(), "ON needs a time bound with a lower and an upper end"),
        ("SELECT * FROM source o JOIN ships s ON s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR".into(), "ON needs the keys' equality"),
        ("SELECT * FROM source o CROSS JOIN ships s".into(), "`CROSS JOIN ships s` is not supported"),
        ("SELECT * FROM source o JOIN ships s USING (id)".into(), "USING and NATURAL are not supported"),
        (format!("SELECT * FROM source o JOIN ships s {on} JOIN ships t {on}"), "joins of more than two streams"),
        (format!("SELECT * FROM ships s JOIN source o {on}"), "expected FROM source"),
        (format!("SELECT * FROM source o JOIN ships s {on} AND s.carrier = 'dhl'"), "put other conditions in WHERE"),
        ("SELECT * FROM source o JOIN ships s ON id = s.order".into(), "`id` in ON: name its table (o.id)"),
        ("SELECT * FROM source o JOIN ships s ON o.id = o.ref AND s.ts >= o.ts".into(), "compares fields of one table"),
        (
            "SELECT * FROM source o JOIN ships s ON o.id = s.order AND s.ts BETWEEN o.ts + INTERVAL '1' HOUR AND o.ts + INTERVAL '2' HOUR".into(),
            "bounds that exclude it are not supported yet",
        ),
        (
            "SELECT * FROM source o JOIN ships s ON o.id = s.order AND s.created BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR".into(),
            "not `created`",
        ),
        (format!("SELECT s.* FROM source o JOIN ships s {on}"), "`s.*` is not supported"),
        (format!("SELECT x.id FROM source o JOIN ships s {on}"), "no table `x`; the query's tables are `o` and `s`"),
    ];
    for (sql, expected) in refused {
        let err = joined(&sql).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
    }
    let err = translate(&format!("SELECT * FROM source o JOIN ships s {on}"), None, &[]).unwrap_err();
    assert!(err.contains("JOIN ships: no stream of that id"), "{err}");
}

#[test]
fn a_join_without_a_time_bound_becomes_a_join_step_with_where_on_one_table_applied_before_it() {
    let sql = "SELECT o.id, s.carrier FROM source o JOIN ships s ON o.id = s.order \
               WHERE o.total > 10 AND (s.carrier = 'dhl' OR s.carrier = 'ups') AND o.total < s_weight AND o.id <> s.order";
    let s = joined(sql).unwrap();
    let clauses: Vec<&str> = s.iter().map(|(_, c)| *c).collect();
    assert_eq!(clauses, ["WHERE", "JOIN", "WHERE", "SELECT"]);
    assert_eq!(s[0].0, r#"{"filter":"(total > 10)"}"#);
    let join: serde_json::Value = serde_json::from_str(&s[1].0).unwrap();
    let join = &join["join"];
    assert_eq!(join["key"], "id");
    assert_eq!(join["otherKey"], "order");
    assert_eq!(join["prefix"], "s_");
    assert_eq!(join["filter"], "(carrier = 'dhl' OR carrier = 'ups')");
    assert!(join["type"].is_null() && join["stateTtl"].is_null(), "{join}");
    // What names both tables, or a field alone, stays after the join.
    assert_eq!(
        json(&s[2..]),
        [r#"{"filter":"total < s_weight AND id <> s_order"}"#, r#"{"select":["id","s_carrier AS carrier"]}"#]
    );
    // Without event time too: nothing in it compares times.
    let stream: StreamSpec =
        serde_json::from_value(serde_json::json!({"source": {"id": "ships", "generator": {"keys": 3}}})).unwrap();
    let untimed =
        translate("SELECT * FROM source o JOIN ships s ON o.key = s.key", None, std::slice::from_ref(&stream)).unwrap();
    assert!(untimed[0].step.join.is_some(), "{untimed:?}");
    let err = translate("SELECT * FROM source o JOIN ships s ON o.key = s.key AND s.ts >= o.ts", None, &[stream])
        .unwrap_err();
    assert!(err.contains("a time bound needs spec.pipeline.eventTime"), "{err}");
}

#[test]
fn a_row_number_subquery_becomes_a_key_and_a_top_n_that_names_the_rank_as_the_query_does() {
    let sql =
        "SELECT shop, item, total, rownum FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY shop ORDER BY total DESC) \
               AS rownum FROM source WHERE total > 0) WHERE rownum <= 3";
    let s = steps(sql, None).unwrap();
    assert_eq!(
        json(&s),
        [
            r#"{"filter":"total > 0"}"#,
            r#"{"keyBy":{"field":"shop"}}"#,
            r#"{"topN":{"limit":3,"orderBy":"total","order":"Descending","rankField":"rownum"}}"#,
            r#"{"select":["shop","item","total","rownum"]}"#,
        ]
    );
    let clauses: Vec<&str> = s.iter().map(|(_, c)| *c).collect();
    assert_eq!(clauses, ["WHERE", "PARTITION BY", "ROW_NUMBER", "SELECT"]);
    // Ascending, a subquery select list (the ranking's fields kept), the
    // bound written the other way round, more conditions after the rank,
    // and no partition: one ranking of all records.
    let sql = "SELECT * FROM (SELECT item, price * 2 AS p, ROW_NUMBER() OVER (ORDER BY p ASC) AS rank FROM source) \
               WHERE 2 > rank AND item <> 'x'";
    assert_eq!(
        json(&steps(sql, None).unwrap()),
        [
            r#"{"select":["item","price * 2 AS p","p"]}"#,
            r#"{"keyBy":{"field":"key","expr":"'all'"}}"#,
            r#"{"topN":{"limit":1,"orderBy":"p","order":"Ascending"}}"#,
            r#"{"filter":"item <> 'x'"}"#,
        ]
    );
}

#[test]
fn top_n_queries_flink_would_plan_otherwise_are_refused_by_name() {
    let sub = |over: &str, outer: &str| format!("SELECT * FROM (SELECT *, {over} AS rownum FROM source) WHERE {outer}");
    let by = "OVER (PARTITION BY shop ORDER BY total DESC)";
    let refused = [
        (sub(&format!("RANK() {by}"), "rownum <= 3"), "RANK() OVER …: supported in a Top-N per window"),
        (sub(&format!("DENSE_RANK() {by}"), "rownum <= 3"), "DENSE_RANK() OVER …: supported in a Top-N per window"),
        (sub(&format!("NTILE(4) {by}"), "rownum <= 3"), "only ROW_NUMBER() is supported"),
        (sub(&format!("ROW_NUMBER() {by}"), "total > 3"), "needs WHERE rownum <= N outside the subquery"),
        (sub(&format!("ROW_NUMBER() {by}"), "rownum >= 3"), "expected rownum <= N"),
        (sub("ROW_NUMBER() OVER (PARTITION BY shop)", "rownum <= 3"), "needs ORDER BY a numeric field"),
        (sub("ROW_NUMBER() OVER (PARTITION BY shop ORDER BY a, b)", "rownum <= 3"), "orders by one field"),
        (sub("ROW_NUMBER() OVER (PARTITION BY a, b ORDER BY c)", "rownum <= 3"), "PARTITION BY takes one field"),
        ("SELECT * FROM (SELECT shop FROM source) WHERE shop <> 'x'".into(), "needs one ROW_NUMBER() OVER"),
        (
            format!("SELECT * FROM (SELECT shop, ROW_NUMBER() {by} FROM source) WHERE rownum <= 3"),
            "needs a name: add AS rownum",
        ),
        (
            format!("SELECT shop, COUNT(*) AS n FROM (SELECT *, ROW_NUMBER() {by} AS rownum FROM source) WHERE rownum <= 3 GROUP BY shop"),
            "GROUP BY or HAVING in the outer query",
        ),
    ];
    for (sql, expected) in refused {
        let err = steps(&sql, None).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
    }
}

#[test]
fn a_row_number_over_a_grouped_window_query_becomes_its_window_and_a_top_n_per_window() {
    let window = "SELECT item, TUMBLE_START(ts, INTERVAL '1' SECOND) AS window_start, \
                  TUMBLE_END(ts, INTERVAL '1' SECOND) AS window_end, COUNT(*) AS bids FROM source \
                  GROUP BY item, TUMBLE(ts, INTERVAL '1' SECOND)";
    let sql = format!(
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY bids DESC) \
         AS rownum FROM ({window})) WHERE rownum <= 3"
    );
    let s = steps(&sql, Some("ts")).unwrap();
    assert_eq!(
        json(&s),
        [
            r#"{"keyBy":{"field":"item"}}"#,
            r#"{"window":{"size":"1s","aggregate":{"count":true,"sum":[],"min":[],"max":[]}}}"#,
            r#"{"select":["item","window_start","window_end","count AS bids"]}"#,
            r#"{"keyBy":{"field":"window_start"}}"#,
            r#"{"topN":{"limit":3,"orderBy":"bids","order":"Descending","rankField":"rownum","perWindow":true}}"#,
        ]
    );
    // RANK() and DENSE_RANK() keep ties, per window only.
    let s = json(&steps(&sql.replace("ROW_NUMBER()", "RANK()"), Some("ts")).unwrap());
    assert!(s[4].contains(r#""perWindow":true,"ranking":"Rank""#), "{s:?}");
    let s = json(&steps(&sql.replace("ROW_NUMBER()", "DENSE_RANK()"), Some("ts")).unwrap());
    assert!(s[4].contains(r#""perWindow":true,"ranking":"DenseRank""#), "{s:?}");
    // A further partition field is the key; the bounds are kept by a
    // subquery select list that leaves them out.
    let sql = format!(
        "SELECT * FROM (SELECT item, bids, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, item ORDER BY \
         bids ASC) AS rownum FROM ({window}) WHERE bids > 1) WHERE rownum = 1"
    );
    let s = json(&steps(&sql, Some("ts")).unwrap());
    assert_eq!(
        s[3..],
        [
            r#"{"filter":"bids > 1"}"#.to_string(),
            r#"{"select":["item","bids","window_start","window_end"]}"#.into(),
            r#"{"keyBy":{"field":"item"}}"#.into(),
            r#"{"topN":{"limit":1,"orderBy":"bids","order":"Ascending","rankField":"rownum","perWindow":true}}"#.into(),
        ]
    );
}

#[test]
fn a_top_n_of_a_grouped_query_without_windows_or_partitioned_past_them_is_refused_by_name() {
    let over = |partition: &str, inner: &str| {
        format!(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY n DESC) AS rownum FROM \
             ({inner})) WHERE rownum <= 3"
        )
    };
    let tumble = "SELECT item, window_start, window_end, COUNT(*) AS n FROM source GROUP BY item, \
                  TUMBLE(ts, INTERVAL '1' SECOND)";
    let refused = [
        (
            over("item", "SELECT item, COUNT(*) AS n FROM source GROUP BY item"),
            "needs TUMBLE, HOP or SESSION in its GROUP BY",
        ),
        (over("item", tumble), "PARTITION BY window_start, window_end"),
        (over("window_start, window_end, item, n", tumble), "PARTITION BY takes one field"),
        (
            over(
                "window_start",
                "SELECT item, window_start, COUNT(*) AS n FROM source GROUP BY item, TUMBLE(ts, INTERVAL '1' SECOND)",
            ),
            "list `window_end` in the innermost query's select list",
        ),
    ];
    for (sql, expected) in refused {
        let err = steps(&sql, Some("ts")).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
    }
}

#[test]
fn for_system_time_as_of_the_source_time_becomes_a_temporal_join_step() {
    let sql = "SELECT o.id, s.carrier, o.total FROM source o LEFT JOIN ships FOR SYSTEM_TIME AS OF o.ts AS s \
               ON o.id = s.order WHERE s.carrier <> 'x'";
    let s = joined(sql).unwrap();
    let mut step: serde_json::Value = serde_json::from_str(&s[0].0).unwrap();
    let join = step["temporalJoin"].take();
    assert_eq!(
        (&join["key"], &join["otherKey"], &join["prefix"], &join["type"]),
        (&serde_json::json!("id"), &serde_json::json!("order"), &serde_json::json!("s_"), &serde_json::json!("left")),
        "{join}"
    );
    assert_eq!(join["source"]["id"], "ships");
    assert_eq!(
        json(&s)[1..],
        [r#"{"filter":"s_carrier <> 'x'"}"#, r#"{"select":["id","s_carrier AS carrier","total"]}"#]
    );
    assert_eq!(s[0].1, "JOIN");
    // Inner by default, the alias written without AS.
    let s = joined("SELECT * FROM source o JOIN ships FOR SYSTEM_TIME AS OF o.ts s ON o.id = s.order").unwrap();
    let step: serde_json::Value = serde_json::from_str(&s[0].0).unwrap();
    assert!(step["temporalJoin"]["type"].is_null(), "{step}");
    assert_eq!(step["temporalJoin"]["prefix"], "s_");
    // By processing time: the table as it is when the record arrives.
    let s = joined("SELECT * FROM source o JOIN ships FOR SYSTEM_TIME AS OF PROCTIME() s ON o.id = s.order").unwrap();
    let step: serde_json::Value = serde_json::from_str(&s[0].0).unwrap();
    assert_eq!(step["temporalJoin"]["time"], "ProcessingTime", "{step}");
}

#[test]
fn temporal_joins_sql_does_not_plan_are_refused_by_name() {
    let refused = [
        ("SELECT * FROM source o JOIN ships FOR SYSTEM_TIME AS OF o.other s ON o.id = s.order", "only the source's event time, o.ts"),
        ("SELECT * FROM source o JOIN ships FOR SYSTEM_TIME AS OF NOW() s ON o.id = s.order", "expected the source's event time, as o.ts, or PROCTIME()"),
        ("SELECT * FROM source o FULL JOIN ships FOR SYSTEM_TIME AS OF o.ts s ON o.id = s.order", "a temporal join is [INNER] JOIN or LEFT JOIN"),
        (
            "SELECT * FROM source o JOIN ships FOR SYSTEM_TIME AS OF o.ts s ON o.id = s.order AND s.ts BETWEEN o.ts AND o.ts",
            "takes the keys' equality only",
        ),
        ("SELECT * FROM source FOR SYSTEM_TIME AS OF ts", "belongs to a JOIN of a stream"),
    ];
    for (sql, expected) in refused {
        let err = joined(sql).unwrap_err();
        assert!(err.contains(expected), "{sql}: {err}");
    }
}

#[test]
fn windowing_table_functions_give_the_same_steps_as_the_group_windows() {
    let pairs = [
        (
            "SELECT item, window_start, window_end, COUNT(*) AS n FROM source GROUP BY item, TUMBLE(ts, INTERVAL '1' MINUTE)",
            "SELECT item, window_start, window_end, COUNT(*) AS n \
             FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTES)) GROUP BY window_start, window_end, item",
        ),
        (
            "SELECT window_end, SUM(v) AS s FROM source WHERE v > 1 GROUP BY HOP(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)",
            "SELECT window_end, SUM(v) AS s FROM TABLE(\n  HOP(TABLE source, DESCRIPTOR(ts), INTERVAL '10' SECONDS, \
             INTERVAL '1' MINUTE)) WHERE v > 1 GROUP BY window_end, window_start",
        ),
        (
            "SELECT item, window_start, MAX(v) AS top FROM source GROUP BY item, SESSION(ts, INTERVAL '30' SECOND)",
            "SELECT item, window_start, MAX(v) AS top FROM TABLE(SESSION(TABLE source PARTITION BY item, \
             DESCRIPTOR(ts), INTERVAL '30' SECONDS)) GROUP BY item, window_start, window_end",
        ),
        (
            "SELECT item, COUNT(*) AS n FROM source GROUP BY item, TUMBLE(ts, INTERVAL '5' SECOND)",
            "SELECT b.item, COUNT(*) AS n FROM TABLE(TUMBLE(DATA => TABLE source, TIMECOL => DESCRIPTOR(ts), \
             SIZE => INTERVAL '5' SECONDS)) AS b GROUP BY b.window_start, b.window_end, b.item",
        ),
    ];
    for (group_window, table) in pairs {
        let want = steps(group_window, Some("ts")).unwrap();
        assert_eq!(steps(table, Some("ts")).unwrap(), want, "{table}");
    }
    // window_time is the window's last instant.
    let sql = "SELECT item, window_time, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), \
               INTERVAL '1' SECOND)) GROUP BY window_start, window_end, item HAVING window_time > 0";
    let s = json(&steps(sql, Some("ts")).unwrap());
    assert_eq!(
        s[2..],
        [r#"{"filter":"window_end - 1 > 0"}"#, r#"{"select":["item","window_end - 1 AS window_time","count AS n"]}"#]
    );
}

#[test]
fn a_row_number_over_a_windowing_table_function_ranks_the_records_of_each_window() {
    let sql = "SELECT * FROM (SELECT *, RANK() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS r \
               FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '10' SECONDS)) WHERE kind = 2) WHERE r <= 1";
    assert_eq!(
        json(&steps(sql, Some("ts")).unwrap()),
        [
            r#"{"filter":"kind = 2"}"#,
            r#"{"keyBy":{"field":"key","expr":"'all'"}}"#,
            r#"{"topN":{"limit":1,"orderBy":"price","order":"Descending","rankField":"r","ranking":"Rank","window":{"size":"10s"}}}"#,
        ]
    );
    // Per window and item, over sliding windows, ascending as SQL sorts
    // unless told DESC; the subquery's select list keeps what the ranking
    // reads, and the bounds come after it.
    let sql = "SELECT item, price, window_start FROM (SELECT item, price, window_start, window_end, ROW_NUMBER() OVER \
               (PARTITION BY window_start, window_end, item ORDER BY price) AS rownum FROM TABLE(HOP(TABLE source, \
               DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND))) WHERE rownum <= 2";
    assert_eq!(
        json(&steps(sql, Some("ts")).unwrap()),
        [
            r#"{"select":["item","price","ts"]}"#,
            r#"{"keyBy":{"field":"item"}}"#,
            r#"{"topN":{"limit":2,"orderBy":"price","order":"Ascending","rankField":"rownum","window":{"size":"10s","slide":"5s"}}}"#,
            r#"{"select":["item","price","window_start"]}"#,
        ]
    );
}

#[test]
fn windowing_table_functions_flink_would_plan_otherwise_are_refused_by_name() {
    let from = |f: &str| format!("SELECT item, COUNT(*) AS n FROM TABLE({f}) GROUP BY window_start, window_end, item");
    let refused = [
        (from("CUMULATE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' SECOND, INTERVAL '1' MINUTE)"), "CUMULATE windows are not supported yet"),
        (from("TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' SECOND)"), "an offset is not supported yet"),
        (from("TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "TUMBLE(TABLE bids, …): expected TABLE source"),
        (from("TUMBLE(TABLE source, DESCRIPTOR(other), INTERVAL '1' MINUTE)"), "windows are over the event time, spec.pipeline.eventTime.field `ts`"),
        (from("TUMBLE(TABLE source, ts, INTERVAL '1' MINUTE)"), "expected DESCRIPTOR(ts), the time column"),
        (from("TUMBLE(TABLE source, DESCRIPTOR(ts))"), "TUMBLE(…): missing its SIZE parameter"),
        (from("HOP(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "HOP(…): missing its SIZE parameter"),
        (from("TUMBLE(TABLE source, DESCRIPTOR(ts), STEP => INTERVAL '1' MINUTE)"), "no parameter STEP; it takes DATA, TIMECOL, SIZE, OFFSET"),
        (from("TUMBLE(TABLE source PARTITION BY item, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "only SESSION takes PARTITION BY"),
        (from("SESSION(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "windows every key together, which is not supported"),
        (from("SESSION(TABLE source PARTITION BY region, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "GROUP BY window_start, window_end, region"),
        (from("SESSION(TABLE source PARTITION BY (item, region), DESCRIPTOR(ts), INTERVAL '1' MINUTE)"), "partition by one field"),
        (
            "SELECT item, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY item".into(),
            "grouped per window: GROUP BY window_start, window_end [, key]",
        ),
        (
            "SELECT COUNT(*) AS n FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
             GROUP BY window_start, window_end, TUMBLE(ts, INTERVAL '1' MINUTE)".into(),
            "are windowed already",
        ),
        (
            "SELECT COUNT(*) AS n FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) t \
             JOIN ships s ON t.key = s.key GROUP BY window_start, window_end".into(),
            "Flink's window join joins two subqueries",
        ),
        (
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY v) AS r FROM \
             TABLE(SESSION(TABLE source PARTITION BY item, DESCRIPTOR(ts), INTERVAL '1' MINUTE))) WHERE r <= 1".into(),
            "a Top-N per SESSION window is not supported",
        ),
        (
            "SELECT * FROM (SELECT v, window_time, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY v) \
             AS r FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE))) WHERE r <= 1".into(),
            "does not give window_time",
        ),
    ];
    for (sql, expected) in refused {
        let err = steps(&sql, Some("ts")).unwrap_err();
        assert!(err.contains(expected), "{sql}:\n{err}");
    }
}

/// The windowJoin step's settings other than its source and schema.
fn window_join_settings(step: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(step).unwrap_or_default();
    let mut join = v["windowJoin"].take();
    if let Some(o) = join.as_object_mut() {
        o.retain(|k, _| k != "source" && k != "schema");
    }
    join
}

const WINDOWED_SOURCE: &str =
    "(SELECT * FROM TABLE(HOP(TABLE source, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '1' MINUTE)))";

#[test]
fn a_join_of_two_windowing_table_functions_on_the_key_and_bounds_becomes_a_window_join_step() {
    let sql = format!(
        "SELECT o.id, s.carrier, COALESCE(o.window_start, s.window_start) AS ws, s.window_end FROM {WINDOWED_SOURCE} o \
         FULL OUTER JOIN (SELECT * FROM TABLE(HOP(TABLE ships, DESCRIPTOR(ts), INTERVAL '10' SECONDS, INTERVAL '1' \
         MINUTE)) WHERE carrier <> 'post') s ON o.window_start = s.window_start AND s.order = o.id AND o.window_end = \
         s.window_end WHERE o.total > 10"
    );
    let s = joined(&sql).unwrap();
    assert_eq!(s.iter().map(|(_, c)| *c).collect::<Vec<_>>(), ["JOIN", "WHERE", "SELECT"]);
    assert_eq!(
        window_join_settings(&s[0].0),
        serde_json::json!({"key": "id", "otherKey": "order", "filter": "carrier <> 'post'", "size": "1m",
                           "slide": "10s", "prefix": "s_", "type": "full"})
    );
    assert_eq!(s[1].0, r#"{"filter":"total > 10"}"#, "the query's WHERE comes after the join");
    // Both tables' bounds are the joined record's.
    assert_eq!(
        s[2].0,
        r#"{"select":["id","s_carrier AS carrier","COALESCE(window_start, window_start) AS ws","window_end AS window_end"]}"#
    );
    // The source's own WHERE is applied before the join.
    let sql = "SELECT * FROM (SELECT * FROM TABLE(TUMBLE(TABLE source, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) WHERE \
               total > 1) o JOIN (SELECT * FROM TABLE(TUMBLE(TABLE ships, DESCRIPTOR(ts), INTERVAL '1' MINUTE))) AS \
               ships ON o.order = ships.order AND o.window_start = ships.window_start AND o.window_end = \
               ships.window_end";
    let s = joined(sql).unwrap();
    assert_eq!(s[0], (r#"{"filter":"total > 1"}"#.to_string(), "WHERE"));
    assert_eq!(window_join_settings(&s[1].0), serde_json::json!({"key": "order", "size": "1m", "prefix": "ships_"}));
}

#[test]
fn window_joins_sql_does_not_plan_are_refused_by_name() {
    let ships = |f: &str| format!("(SELECT * FROM TABLE({f})) s");
    let hop = "HOP(TABLE ships, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '1' MINUTE)";
    let on = "ON o.id = s.order AND o.window_start = s.window_start AND o.window_end = s.window_end";
    let refused = [
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} {on}", ships("TUMBLE(TABLE ships, DESCRIPTOR(ts), INTERVAL '1' MINUTE)")), "the same windows on both sides"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} {on}", ships(&hop.replace("ships", "other"))), "TABLE other: no stream of that id"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} {on}", ships(&hop.replace("DESCRIPTOR(ts)", "DESCRIPTOR(order)"))), "the stream's event time is `ts`"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} ON o.id = s.order AND o.window_start = s.window_start", ships(hop)), "add a.window_end = b.window_end"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} ON o.window_start = s.window_start AND o.window_end = s.window_end", ships(hop)), "needs the keys' equality"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} {on} AND o.total > 1", ships(hop)), "equates fields only"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} ON o.id = s.order AND o.window_start = s.window_end AND o.window_end = s.window_end", ships(hop)), "equate the windows' bounds with their like"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN (SELECT carrier FROM TABLE({hop})) s {on}"), "each subquery is SELECT * FROM TABLE(…)"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN (SELECT * FROM source) s {on}"), "each subquery reads a windowing table function"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o JOIN {} {on}", ships("SESSION(TABLE ships PARTITION BY order, DESCRIPTOR(ts), INTERVAL '1' MINUTE)")), "SESSION windows in a window join are not supported yet"),
    ];
    for (sql, expected) in refused {
        let err = joined(&sql).unwrap_err();
        assert!(err.contains(expected), "{sql}:\n{err}");
    }
}

#[test]
fn in_and_exists_subqueries_of_windowing_table_functions_become_semi_and_anti_window_joins() {
    let windowed_ships = "(SELECT * FROM TABLE(HOP(TABLE ships, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '1' \
                          MINUTE)) WHERE carrier <> 'post') s";
    let bounds = "o.window_start = s.window_start AND o.window_end = s.window_end";
    let sql = format!(
        "SELECT id, window_start FROM {WINDOWED_SOURCE} o WHERE o.total > 1 AND o.id IN (SELECT s.order FROM \
         {windowed_ships} WHERE {bounds} AND s.carrier <> 'mule')"
    );
    let s = joined(&sql).unwrap();
    assert_eq!(s.iter().map(|(_, c)| *c).collect::<Vec<_>>(), ["JOIN", "WHERE", "SELECT"]);
    assert_eq!(
        window_join_settings(&s[0].0),
        serde_json::json!({"key": "id", "otherKey": "order", "filter": "(carrier <> 'post') AND (carrier <> 'mule')",
                           "size": "1m", "slide": "10s", "prefix": "s_", "type": "semi"})
    );
    assert_eq!(s[1].0, r#"{"filter":"total > 1"}"#, "the rest of the WHERE comes after the join");
    // NOT EXISTS, with the key in the subquery: an anti join.
    let sql = format!(
        "SELECT * FROM {WINDOWED_SOURCE} o WHERE NOT EXISTS (SELECT * FROM {windowed_ships} WHERE s.order = o.id AND \
         {bounds})"
    );
    let s = joined(&sql).unwrap();
    let settings = window_join_settings(&s[0].0);
    assert_eq!((settings["type"].as_str(), settings["key"].as_str()), (Some("anti"), Some("id")), "{settings}");
    let refused = [
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE o.id IN (SELECT s.order FROM {windowed_ships} WHERE o.window_start = s.window_start)"), "add a.window_end = b.window_end"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE EXISTS (SELECT * FROM {windowed_ships} WHERE {bounds})"), "needs the keys' equality"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE o.id IN (SELECT s.order FROM {windowed_ships} WHERE {bounds} AND o.total > s.ts)"), "reads the other stream's fields only"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE o.id IN (SELECT o.id FROM {windowed_ships} WHERE {bounds})"), "expected a field of `s`"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE o.id IN (SELECT s.order FROM ships s WHERE {bounds})"), "reads one subquery"),
        (format!("SELECT * FROM {WINDOWED_SOURCE} o WHERE o.id IN (SELECT s.order FROM {windowed_ships} WHERE {bounds}) OR EXISTS (SELECT * FROM {windowed_ships} WHERE {bounds})"), "ANDed with the rest of the WHERE"),
    ];
    for (sql, expected) in refused {
        let err = joined(&sql).unwrap_err();
        assert!(err.contains(expected), "{sql}:\n{err}");
    }
}
