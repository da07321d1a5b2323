//! The admission rules (`x-kubernetes-validations`) evaluated with a CEL
//! interpreter, since the e2e API server (1.20) predates them: every rule
//! compiles, the examples pass, and each rule refuses what it is for.

use cel_interpreter::{Context, Program, Value};
use serde_json::{json, Value as Json};

/// A rule, the schema path of the object it applies to (`[]` for list
/// items) and its message.
struct Rule {
    path: Vec<String>,
    rule: String,
    message: String,
}

fn collect(schema: &Json, path: &mut Vec<String>, out: &mut Vec<Rule>) {
    for r in schema.get("x-kubernetes-validations").and_then(Json::as_array).into_iter().flatten() {
        out.push(Rule {
            path: path.clone(),
            rule: r["rule"].as_str().unwrap_or_default().to_string(),
            message: r["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    for (name, sub) in schema.get("properties").and_then(Json::as_object).into_iter().flatten() {
        path.push(name.clone());
        collect(sub, path, out);
        path.pop();
    }
    if let Some(items) = schema.get("items") {
        path.push("[]".into());
        collect(items, path, out);
        path.pop();
    }
}

fn rules() -> Vec<Rule> {
    let crd = serde_json::to_value(super::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = Vec::new();
    collect(schema, &mut Vec::new(), &mut out);
    out
}

/// The values at `path` (several under lists), as the API server
/// visits them; a rule on an absent value does not run.
fn at<'a>(value: &'a Json, path: &[String]) -> Vec<&'a Json> {
    match path.split_first() {
        None => vec![value],
        Some((first, rest)) if first == "[]" => {
            value.as_array().into_iter().flatten().flat_map(|v| at(v, rest)).collect()
        }
        Some((first, rest)) => value.get(first.as_str()).map_or_else(Vec::new, |v| at(v, rest)),
    }
}

/// The messages of the rules `object` breaks (on update from `old`).
fn violations(object: &Json, old: Option<&Json>) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules() {
        let program = Program::compile(&rule.rule).unwrap_or_else(|e| panic!("{}: {e:?}", rule.rule));
        let transition = rule.rule.contains("oldSelf");
        let olds: Vec<&Json> = old.map(|o| at(o, &rule.path)).unwrap_or_default();
        for (i, value) in at(object, &rule.path).into_iter().enumerate() {
            let mut ctx = Context::default();
            ctx.add_variable("self", value).unwrap();
            if transition {
                // Transition rules run on updates only, where both exist.
                let Some(previous) = olds.get(i) else { continue };
                ctx.add_variable("oldSelf", *previous).unwrap();
            }
            match program.execute(&ctx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => out.push(rule.message.clone()),
                other => panic!("rule {} on {value}: {other:?}", rule.rule),
            }
        }
    }
    out
}

fn job(spec: Json) -> Json {
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "counts"}, "spec": spec})
}

fn valid_spec() -> Json {
    json!({
        "parallelism": 2, "maxParallelism": 128, "workers": 2,
        "restartStrategy": {"fixedDelay": {"attempts": 3}},
        "pipeline": {
            "source": {"generator": {"keys": 10}},
            "steps": [{"keyBy": {"field": "key"}}, {"aggregate": {"count": true}}],
            "sink": {"file": {"path": "/out"}}
        }
    })
}

#[test]
fn there_are_rules_and_every_one_compiles_with_a_message() {
    let rules = rules();
    assert!(rules.len() >= 8, "{}", rules.len());
    for r in &rules {
        assert!(Program::compile(&r.rule).is_ok(), "{}", r.rule);
        assert!(!r.message.is_empty(), "{}", r.rule);
    }
}

#[test]
fn every_example_manifest_passes_every_rule() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for sub in [dir.to_string(), format!("{dir}/kubernetes")] {
        for entry in std::fs::read_dir(&sub).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value: Json = serde::Deserialize::deserialize(doc).unwrap();
                if value["kind"] == "StreamJob" {
                    seen += 1;
                    assert_eq!(violations(&value, None), Vec::<String>::new(), "{}", path.display());
                }
            }
        }
    }
    assert!(seen >= 3, "{seen}");
    assert!(violations(&job(valid_spec()), None).is_empty());
}

#[test]
fn each_rule_refuses_what_it_is_for() {
    let broken = |edit: &dyn Fn(&mut Json)| {
        let mut spec = valid_spec();
        edit(&mut spec);
        violations(&job(spec), None)
    };
    let one = |v: Vec<String>, needle: &str| {
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains(needle), "{v:?}");
    };
    one(broken(&|s| s["workers"] = json!(3)), "spec.workers must not exceed spec.parallelism");
    one(broken(&|s| s["parallelism"] = json!(200)), "spec.parallelism must not exceed spec.maxParallelism");
    one(broken(&|s| s["program"] = json!({"entry": "keyed-sum"})), "exactly one of spec.pipeline and spec.program");
    one(
        broken(&|s| {
            s.as_object_mut().unwrap().remove("pipeline");
        }),
        "exactly one of spec.pipeline and spec.program",
    );
    one(
        broken(&|s| s["restartStrategy"]["none"] = json!({})),
        "at most one of none, fixedDelay, failureRate, exponentialDelay",
    );
    one(broken(&|s| s["pipeline"]["source"]["file"] = json!({"path": "/in"})), "spec.pipeline.source");
    one(broken(&|s| s["pipeline"]["sink"] = json!({})), "spec.pipeline.sink");
    one(broken(&|s| s["pipeline"]["steps"][1]["keyBy"] = json!({"field": "x"})), "spec.pipeline.steps");
    let mut long = job(valid_spec());
    long["metadata"]["name"] = json!("n".repeat(41));
    one(violations(&long, None), "metadata.name: at most 40 characters");
}

#[test]
fn max_parallelism_cannot_change_on_update() {
    let old = job(valid_spec());
    let mut new = old.clone();
    new["spec"]["maxParallelism"] = json!(256);
    let v = violations(&new, Some(&old));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("spec.maxParallelism is immutable"), "{v:?}");
    assert!(violations(&new, None).is_empty(), "a new job may choose any maxParallelism");
    let mut rescaled = old.clone();
    rescaled["spec"]["parallelism"] = json!(4);
    rescaled["spec"]["workers"] = json!(4);
    assert!(violations(&rescaled, Some(&old)).is_empty(), "parallelism may change");
}
