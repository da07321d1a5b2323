//! SQL expressions of `filter`, `select` and `keyBy.expr` steps: parsed,
//! planned and type-checked by DataFusion against the records' schema when
//! the manifest is loaded, then evaluated by its vectorized physical
//! expressions over each input batch as an Arrow record batch.
//!
//! Only DataFusion's expression crates are used (parser, planner, type
//! coercion, scalar functions, physical expressions): no execution engine,
//! catalog or aggregate functions. Identifiers are case-sensitive, as
//! field names in JSON are; function names are not.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::TreeNode;
use datafusion_common::{DFSchema, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, Expr, ExprSchemable, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion_sql::parser::DFParser;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use serde_json::{Map, Number, Value};

use crate::manifest::FieldType;
use crate::record::Row;

/// A planned expression: what it computes, its output name and type.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub sql: String,
    /// The `AS` alias, or the field a plain field reference names.
    pub name: Option<String>,
    pub field: Field,
    /// The fields it reads.
    pub columns: Vec<String>,
    expr: Arc<dyn PhysicalExpr>,
}

/// The Arrow type a schema field is read as.
pub fn arrow_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::String => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
    }
}

/// Functions for the planner: DataFusion's scalar functions, no tables.
struct Functions {
    udfs: HashMap<String, Arc<ScalarUDF>>,
    options: ConfigOptions,
    planners: Vec<Arc<dyn ExprPlanner>>,
}

impl Functions {
    fn new() -> Self {
        let mut udfs = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for alias in f.aliases() {
                udfs.insert(alias.to_ascii_lowercase(), f.clone());
            }
            udfs.insert(f.name().to_ascii_lowercase(), f);
        }
        let planners: Vec<Arc<dyn ExprPlanner>> = vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
        ];
        Functions { udfs, options: ConfigOptions::default(), planners }
    }
}

impl ContextProvider for Functions {
    fn get_table_source(&self, name: TableReference) -> datafusion_common::Result<Arc<dyn TableSource>> {
        datafusion_common::plan_err!("expressions cannot read tables, got `{name}`")
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.udfs.get(&name.to_ascii_lowercase()).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.udfs.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Plans `sql` over records of `schema`; the error says what is wrong in
/// DataFusion's words (an unknown field lists the valid ones).
pub fn compile(sql: &str, schema: &SchemaRef) -> Result<Compiled, String> {
    let clean = |e: datafusion_common::DataFusionError| e.strip_backtrace().replace('\n', " ");
    let parsed = DFParser::parse_sql_into_expr(sql).map_err(clean)?;
    let dfschema = DFSchema::try_from(schema.as_ref().clone()).map_err(clean)?;
    let functions = Functions::new();
    let options = ParserOptions::new().with_enable_ident_normalization(false);
    let planner = SqlToRel::new_with_options(&functions, options);
    let logical = planner.sql_to_expr(parsed.expr, &dfschema, &mut PlannerContext::new()).map_err(clean)?;
    let logical = logical.rewrite(&mut TypeCoercionRewriter::new(&dfschema)).map_err(clean)?.data;
    if contains_aggregate(&logical) {
        return Err("aggregate functions belong in aggregate or window steps".into());
    }
    let (_, typed) = logical.to_field(&dfschema).map_err(clean)?;
    let (data_type, nullable) = (typed.data_type().clone(), typed.is_nullable());
    let name = match (&parsed.alias, &logical) {
        (Some(alias), _) => Some(alias.value.clone()),
        (None, Expr::Column(c)) => Some(c.name.clone()),
        _ => None,
    };
    let mut columns: Vec<String> = logical.column_refs().into_iter().map(|c| c.name.clone()).collect();
    columns.sort();
    let physical =
        create_physical_expr(&logical, &dfschema, &ExecutionProps::new(), &PhysicalPlanningContext::default())
            .map_err(clean)?;
    let field = Field::new(name.clone().unwrap_or_default(), data_type, nullable);
    Ok(Compiled { sql: sql.to_string(), name, field, columns, expr: physical })
}

/// The fields of `schema` that any of `exprs` reads, in schema order: the
/// only ones worth decoding into a batch.
pub fn projection<'a>(exprs: impl IntoIterator<Item = &'a Compiled>, schema: &SchemaRef) -> SchemaRef {
    let read: Vec<&String> = exprs.into_iter().flat_map(|c| &c.columns).collect();
    schema_of(schema.fields().iter().filter(|f| read.contains(&f.name())).map(|f| f.as_ref().clone()))
}

fn contains_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|node| {
        found |= matches!(node, Expr::AggregateFunction(_) | Expr::WindowFunction(_));
        Ok(datafusion_common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

impl Compiled {
    /// The expression's value for every row of `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, String> {
        let value = self.expr.evaluate(batch).map_err(|e| e.strip_backtrace().replace('\n', " "))?;
        value.into_array(batch.num_rows()).map_err(|e| e.strip_backtrace())
    }

    /// Which rows of `batch` the condition holds for (null: no).
    pub fn mask(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        let array = self.evaluate(batch)?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| format!("expected a boolean condition, got {}", array.data_type()))?;
        Ok((0..mask.len()).map(|i| mask.is_valid(i) && mask.value(i)).collect())
    }
}

/// Turns rows into record batches of one schema (fields not in it are
/// ignored; a missing nullable field is null).
pub struct Batcher {
    schema: SchemaRef,
    decoder: arrow_json::reader::Decoder,
}

impl Batcher {
    pub fn new(schema: SchemaRef) -> Result<Self, String> {
        let decoder = arrow_json::ReaderBuilder::new(schema.clone()).build_decoder().map_err(|e| e.to_string())?;
        Ok(Batcher { schema, decoder })
    }

    pub fn batch(&mut self, rows: &[Row]) -> Result<RecordBatch, String> {
        let flushed = self.decoder.serialize(rows).and_then(|()| self.decoder.flush());
        match flushed {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => Ok(RecordBatch::new_empty(self.schema.clone())),
            Err(e) => {
                // A failed batch leaves rows behind in the decoder.
                if let Ok(fresh) = Batcher::new(self.schema.clone()) {
                    *self = fresh;
                }
                Err(e.to_string())
            }
        }
    }
}

/// The JSON values of `array`, row by row: numbers, strings, booleans,
/// timestamps as milliseconds since the epoch; other types as their text.
pub fn json_values(array: &ArrayRef) -> Result<Vec<Value>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let n = array.len();
    let valid = |i: usize| array.is_valid(i);
    let out = |f: &dyn Fn(usize) -> Value| -> Vec<Value> {
        (0..n).map(|i| if valid(i) { f(i) } else { Value::Null }).collect()
    };
    let float = |v: f64| Number::from_f64(v).map_or(Value::Null, Value::Number);
    Ok(match array.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => out(&|i| Value::Bool(array.as_boolean().value(i))),
        DataType::Int8 => out(&|i| Value::from(array.as_primitive::<Int8Type>().value(i))),
        DataType::Int16 => out(&|i| Value::from(array.as_primitive::<Int16Type>().value(i))),
        DataType::Int32 => out(&|i| Value::from(array.as_primitive::<Int32Type>().value(i))),
        DataType::Int64 => out(&|i| Value::from(array.as_primitive::<Int64Type>().value(i))),
        DataType::UInt8 => out(&|i| Value::from(array.as_primitive::<UInt8Type>().value(i))),
        DataType::UInt16 => out(&|i| Value::from(array.as_primitive::<UInt16Type>().value(i))),
        DataType::UInt32 => out(&|i| Value::from(array.as_primitive::<UInt32Type>().value(i))),
        DataType::UInt64 => out(&|i| Value::from(array.as_primitive::<UInt64Type>().value(i))),
        DataType::Float32 => out(&|i| float(f64::from(array.as_primitive::<Float32Type>().value(i)))),
        DataType::Float64 => out(&|i| float(array.as_primitive::<Float64Type>().value(i))),
        DataType::Utf8 => out(&|i| Value::from(array.as_string::<i32>().value(i))),
        DataType::LargeUtf8 => out(&|i| Value::from(array.as_string::<i64>().value(i))),
        DataType::Utf8View => out(&|i| Value::from(array.as_string_view().value(i))),
        DataType::Timestamp(_, _) => {
            let ms = arrow_cast::cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .map_err(|e| e.to_string())?;
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            out(&|i| Value::from(ms.value(i)))
        }
        _ => {
            let options = arrow_cast::display::FormatOptions::default();
            let text =
                arrow_cast::display::ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| e.to_string())?;
            out(&|i| Value::from(text.value(i).to_string()))
        }
    })
}

/// Rows of the named columns.
pub fn rows_of(names: &[String], columns: &[Vec<Value>], n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let mut o = Map::with_capacity(names.len());
            for (name, column) in names.iter().zip(columns) {
                o.insert(name.clone(), column.get(i).cloned().unwrap_or(Value::Null));
            }
            Value::Object(o)
        })
        .collect()
}

/// The schema of records after `select`.
pub fn schema_of(fields: impl IntoIterator<Item = Field>) -> SchemaRef {
    Arc::new(Schema::new(fields.into_iter().collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> SchemaRef {
        schema_of([
            Field::new("name", DataType::Utf8, false),
            Field::new("price", DataType::Float64, false),
            Field::new("qty", DataType::Int64, true),
        ])
    }

    fn rows() -> Vec<Row> {
        vec![
            json!({"name": "apple", "price": 2.5, "qty": 4, "extra": [1]}),
            json!({"name": "Pear", "price": 10, "qty": null}),
            json!({"name": "fig", "price": 1.0, "qty": 200}),
        ]
    }

    #[test]
    fn a_filter_keeps_rows_whose_condition_is_true_and_drops_nulls() {
        let f = compile("price * qty > 9 AND name <> 'fig'", &schema()).unwrap();
        let batch = Batcher::new(schema()).unwrap().batch(&rows()).unwrap();
        assert_eq!(f.mask(&batch).unwrap(), vec![true, false, false]);
    }

    #[test]
    fn computed_fields_take_their_alias_and_sql_types() {
        let s = schema();
        let batch = Batcher::new(s.clone()).unwrap().batch(&rows()).unwrap();
        let total = compile("price * qty AS total", &s).unwrap();
        let upper = compile("UPPER(name) AS up", &s).unwrap();
        let case = compile("CASE WHEN qty >= 100 THEN 'bulk' ELSE 'single' END AS kind", &s).unwrap();
        let plain = compile("qty", &s).unwrap();
        assert_eq!((total.name.as_deref(), total.field.data_type()), (Some("total"), &DataType::Float64));
        assert_eq!(plain.name.as_deref(), Some("qty"));
        let columns: Vec<Vec<Value>> = [&total, &upper, &case, &plain]
            .iter()
            .map(|c| json_values(&c.evaluate(&batch).unwrap()).unwrap())
            .collect();
        let names = ["total", "up", "kind", "qty"].map(String::from);
        let out = rows_of(&names, &columns, batch.num_rows());
        assert_eq!(out[0], json!({"total": 10.0, "up": "APPLE", "kind": "single", "qty": 4}));
        assert_eq!(out[1], json!({"total": null, "up": "PEAR", "kind": "single", "qty": null}));
        assert_eq!(out[2], json!({"total": 200.0, "up": "FIG", "kind": "bulk", "qty": 200}));
    }

    #[test]
    fn a_batch_decodes_only_the_fields_the_expressions_read_and_keeps_its_row_count() {
        let s = schema();
        let total = compile("price * qty AS total", &s).unwrap();
        let fields = projection([&total], &s);
        assert_eq!(fields.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), vec!["price", "qty"]);
        let constant = compile("'x' AS tag", &s).unwrap();
        let none = projection([&constant], &s);
        let batch = Batcher::new(none.clone()).unwrap().batch(&rows()).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let again = compile("'x' AS tag", &none).unwrap();
        assert_eq!(json_values(&again.evaluate(&batch).unwrap()).unwrap(), vec![json!("x"); 3]);
    }

    #[test]
    fn unknown_fields_type_mismatches_and_aggregates_are_refused_with_the_reason() {
        let s = schema();
        let err = compile("prise > 1", &s).unwrap_err();
        assert!(err.contains("prise") && err.contains("price"), "{err}");
        let err = compile("name + 1 > 2", &s).unwrap_err();
        assert!(err.contains("Utf8") || err.contains("name"), "{err}");
        assert!(compile("sum(price)", &s).is_err());
        assert!(compile("price >", &s).is_err());
        // Field names are case-sensitive, function names are not.
        assert!(compile("Name = 'x'", &s).is_err());
        assert!(compile("LOWER(name) = 'x'", &s).is_ok());
    }

    #[test]
    fn timestamps_read_rfc3339_or_epoch_milliseconds_and_come_back_as_milliseconds() {
        let s = schema_of([Field::new("ts", arrow_type(FieldType::Timestamp), false)]);
        let batch = Batcher::new(s.clone())
            .unwrap()
            .batch(&[json!({"ts": "1970-01-01T00:00:01.5Z"}), json!({"ts": 7})])
            .unwrap();
        let later = compile("ts + INTERVAL '1' SECOND AS later", &s).unwrap();
        assert_eq!(json_values(&later.evaluate(&batch).unwrap()).unwrap(), vec![json!(2500), json!(1007)]);
    }
}
