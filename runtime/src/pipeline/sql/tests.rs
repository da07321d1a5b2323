use super::*;

fn steps(sql: &str, time: Option<&str>) -> Result<Vec<(String, &'static str)>, String> {
    let time = time.map(|f| EventTimeSpec {
        field: f.into(),
        expr: None,
        max_out_of_orderness: Default::default(),
        idle_timeout: None,
        late_records: Default::default(),
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
        ("SELECT a FROM source JOIN other ON a = b", "joins are not supported yet"),
        ("SELECT a FROM other", "expected FROM source"),
        ("SELECT a FROM source s", "takes no alias"),
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
    let err =
        steps("SELECT a, COUNT(*) AS n FROM source GROUP BY a, TUMBLE(ts, INTERVAL '1' WEEK)", Some("ts")).unwrap_err();
    assert!(err.contains("got week"), "{err}");
}
