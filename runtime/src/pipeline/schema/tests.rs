use crate::manifest::StreamJob;

/// Loads a manifest whose pipeline has `source`, `schema` and `steps`.
fn load(source: &str, schema: &str, steps: &str) -> Result<StreamJob, String> {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: e}}
spec:
  pipeline:
    source: {source}
{schema}
    steps:
{steps}
    sink: {{file: {{path: ./out}}}}
"#
    );
    StreamJob::from_yaml(&yaml).map_err(|e| e.to_string())
}

const GENERATOR: &str = "{generator: {keys: 10}}";
const FILE: &str = "{file: {path: ./in}}";
const ORDERS: &str = "    schema:\n      - {name: item, type: string}\n      - {name: price, type: float64}\n      - {name: qty, type: int64, nullable: true}";

#[test]
fn typed_expression_steps_over_a_declared_schema_are_accepted() {
    let steps = r#"      - filter: "price * qty > 100 AND item LIKE 'a%'"
      - select: [item, "price * qty AS total", "upper(item) AS shouted"]
      - keyBy: {field: k, expr: "lower(shouted)"}
      - aggregate: {count: true, sum: [total]}
      - filter: "sum_total > 1000 AND count >= 2""#;
    load(FILE, ORDERS, steps).unwrap();
}

#[test]
fn a_misspelt_field_is_refused_naming_the_step_and_the_fields_there_are() {
    let err = load(FILE, ORDERS, "      - filter: \"prise > 1\"").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].filter:") && err.contains("prise"), "{err}");
    let err = load(GENERATOR, "", "      - keyBy: {field: kee}\n      - aggregate: {count: true}").unwrap_err();
    assert!(
        err.contains(
            "spec.pipeline.steps[0].keyBy.field: no field `kee` in the records here (their fields: seq, key, value)"
        ),
        "{err}"
    );
    let steps = "      - select: [item]\n      - keyBy: {field: item}\n      - aggregate: {sum: [price]}";
    let err = load(FILE, ORDERS, steps).unwrap_err();
    assert!(err.contains("spec.pipeline.steps[2].aggregate.sum: no field `price`"), "{err}");
}

#[test]
fn type_mismatches_are_refused_before_the_job_starts() {
    let err = load(FILE, ORDERS, "      - filter: \"price * qty\"").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].filter: expected a boolean condition, got Float64"), "{err}");
    let err = load(FILE, ORDERS, "      - keyBy: {field: qty}\n      - aggregate: {sum: [item]}").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[1].aggregate.sum: field `item` is Utf8, expected a number"), "{err}");
    let err = load(FILE, ORDERS, "      - filter: \"price AND qty > 1\"").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].filter: "), "{err}");
}

#[test]
fn select_needs_names_and_expressions_need_a_schema() {
    let err = load(FILE, ORDERS, "      - select: [\"price * qty\", item, \"qty AS item\"]").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].select[0]: `price * qty` needs a name: add `AS <name>`"), "{err}");
    assert!(err.contains("spec.pipeline.steps[0].select[2]: the name `item` is used twice"), "{err}");
    let err = load(FILE, "", "      - filter: \"a > 1\"").unwrap_err();
    assert!(err.contains("spec.pipeline.steps[0].filter: needs spec.pipeline.schema"), "{err}");
    let err = load(GENERATOR, ORDERS, "      - filter: \"value > 1\"").unwrap_err();
    assert!(err.contains("spec.pipeline.schema: the generator's records have a fixed schema"), "{err}");
    // After an aggregate the schema is known even without one declared.
    load(FILE, "", "      - keyBy: {field: k}\n      - aggregate: {sum: [v]}\n      - filter: \"sum_v > 3\"").unwrap();
}
