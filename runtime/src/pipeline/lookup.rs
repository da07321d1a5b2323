//! The `lookup` step: records enriched from a table in a file (JSON lines
//! or CSV), as Flink SQL's lookup join on a filesystem table. Each subtask
//! holds the whole table in memory, by key; a record gets the fields of
//! each row whose key equals its `field`, one record out per row.
//!
//! The table is read when the task starts, so a restore reads the file as
//! it is then. With `refreshInterval` the step looks at the file's
//! modification time that often and reads it again when it changed; the
//! new rows apply to the records after it (a processing-time join: records
//! replayed after a restore meet the table of their second pass). A table
//! that cannot be read, or has a row that does not fit its schema, fails
//! the task naming the file, line and field: the table is configuration,
//! not data, and a half-read table would enrich records wrongly.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use super::bad_records::{row_by_row, Check};
use crate::connectors::columnar_files::{ColumnarFormat, ColumnarReader};
use crate::connectors::csv_records::CsvFormat;
use crate::manifest::{LookupSpec, OnMissing, SourceFormat};
use crate::record::{key_of, parse_json_object, BadRecord, Row};
use crate::task::TaskError;

/// A table's rows by key: the fields each adds to a record.
#[derive(Debug, Default)]
pub struct Table {
    rows: HashMap<String, Vec<Map<String, Value>>>,
}

impl Table {
    /// Reads the table `spec` names; fails naming the file, line and field.
    pub fn read(spec: &LookupSpec, at: &str) -> Result<Table, TaskError> {
        let fail = |reason: String| TaskError::User { function: at.to_string(), reason };
        let rules = super::schema::rules_of(&spec.schema);
        let mut table = Table::default();
        let mut add = |row: Row, origin: &str| -> Result<(), TaskError> {
            for rule in &rules {
                rule.check(&row).map_err(|e| fail(format!("{origin}: {e}")))?;
            }
            let key = key_of(&row, &spec.key)
                .ok_or_else(|| fail(format!("{origin}: the key field `{}` is missing or null", spec.key)))?;
            let Value::Object(mut fields) = row else { return Ok(()) };
            fields.retain(|name, _| name != &spec.key && spec.schema.iter().any(|f| &f.name == name));
            table.rows.entry(key).or_default().push(fields);
            Ok(())
        };
        match spec.format {
            SourceFormat::JsonLines => {
                let file = std::fs::File::open(&spec.path)
                    .map_err(|e| fail(format!("cannot open the table `{}`: {e}", spec.path)))?;
                for (n, line) in BufReader::new(file).lines().enumerate() {
                    let origin = format!("{}:{}", spec.path, n + 1);
                    let line = line.map_err(|e| fail(format!("{origin}: cannot read: {e}")))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row = parse_json_object(&line, origin.clone()).map_err(|bad| fail(bad_reason(&bad)))?;
                    add(row, &origin)?;
                }
            }
            SourceFormat::Parquet => read_columnar(&spec.path, ColumnarFormat::Parquet, fail, &mut add)?,
            SourceFormat::Avro => read_columnar(&spec.path, ColumnarFormat::Avro, fail, &mut add)?,
            SourceFormat::Csv => {
                let format = CsvFormat::new(&spec.schema, spec.csv.as_ref());
                let (mut reader, _, _) = format.open(&spec.path, 0, 1).map_err(|e| fail(e.to_string()))?;
                while let Some(read) = reader.next(&format).map_err(|e| fail(e.to_string()))? {
                    let row = read.row.map_err(|bad| fail(bad_reason(&bad)))?;
                    add(row, &read.origin)?;
                }
            }
        }
        Ok(table)
    }

    /// How many rows the table holds.
    pub fn len(&self) -> usize {
        self.rows.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Hands each record of a Parquet or Avro table to `add`.
fn read_columnar(
    path: &str,
    format: ColumnarFormat,
    fail: impl Fn(String) -> TaskError,
    add: &mut impl FnMut(Row, &str) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let mut reader = ColumnarReader::open(path, format, 0).map_err(|e| fail(e.to_string()))?;
    while let Some(read) = reader.next_record().map_err(|e| fail(e.to_string()))? {
        add(read.row, &format!("{path}, record {}", read.number + 1))?;
    }
    Ok(())
}

fn bad_reason(bad: &BadRecord) -> String {
    format!("{}: {}", bad.origin, bad.reason)
}

/// The file's modification time, if it can be read.
fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub struct Lookup {
    spec: LookupSpec,
    /// Where the step is in the manifest, for errors and bad records.
    at: String,
    table: Table,
    /// The table's fields other than the key, set to null on a miss kept.
    nulls: Map<String, Value>,
    /// When to look at the file again, and its modification time when read.
    refresh: Option<(Duration, Instant, Option<SystemTime>)>,
}

impl Lookup {
    pub fn new(spec: &LookupSpec, at: String) -> Result<Lookup, TaskError> {
        let read_at = modified(&spec.path);
        let table = Table::read(spec, &at)?;
        let nulls = spec.schema.iter().filter(|f| f.name != spec.key).map(|f| (f.name.clone(), Value::Null)).collect();
        let refresh = spec.refresh_interval.map(|every| (every.get(), Instant::now() + every.get(), read_at));
        Ok(Lookup { spec: spec.clone(), at, table, nulls, refresh })
    }

    /// At `now`: reads the table again if its interval passed and the file
    /// changed.
    fn refresh_table(&mut self, now: Instant) -> Result<(), TaskError> {
        let Some((every, next, read_at)) = &mut self.refresh else { return Ok(()) };
        if now < *next {
            return Ok(());
        }
        *next = now + *every;
        let changed = modified(&self.spec.path);
        if changed == *read_at {
            return Ok(());
        }
        self.table = Table::read(&self.spec, &self.at)?;
        *read_at = changed;
        Ok(())
    }

    /// The records `row` becomes, or why it goes to the error policy.
    fn enrich(&self, row: Row, out: &mut Vec<Row>) -> Result<(), (Row, String)> {
        let on = self.spec.field();
        let matches = key_of(&row, on).and_then(|k| self.table.rows.get(&k));
        let Some(rows) = matches else {
            return match self.spec.on_missing {
                OnMissing::Keep => {
                    out.push(with_fields(row, &self.nulls));
                    Ok(())
                }
                OnMissing::Drop => Ok(()),
                OnMissing::ErrorPolicy => {
                    let reason = match row.get(on) {
                        None | Some(Value::Null) => format!("field `{on}` is missing or null: nothing to look up"),
                        Some(v) => format!("no row of `{}` has {} = {v}", self.spec.path, self.spec.key),
                    };
                    Err((row, reason))
                }
            };
        };
        let (last, others) = rows.split_last().map_or((None, &[][..]), |(l, o)| (Some(l), o));
        for fields in others {
            out.push(with_fields(row.clone(), fields));
        }
        if let Some(fields) = last {
            out.push(with_fields(row, fields));
        }
        Ok(())
    }
}

/// `row` with `fields` set on it.
fn with_fields(mut row: Row, fields: &Map<String, Value>) -> Row {
    if let Some(object) = row.as_object_mut() {
        for (name, value) in fields {
            object.insert(name.clone(), value.clone());
        }
    }
    row
}

impl Check<Row> for Lookup {
    fn prepare(&mut self) -> Result<(), TaskError> {
        self.refresh_table(Instant::now())
    }

    fn check(&mut self, batch: Vec<Row>) -> (Vec<Row>, Vec<BadRecord>) {
        let this = &*self;
        row_by_row(batch, &this.at, |row, good| this.enrich(row, good))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::manifest::{CsvSpec, FieldSpec, FieldType, HumanDuration};

    fn field(name: &str, ty: FieldType) -> FieldSpec {
        FieldSpec { name: name.into(), ty, nullable: false }
    }

    /// A lookup of `shop` in the JSON-lines table `lines`, written in `dir`.
    fn shops(dir: &Path, lines: &[Value], on_missing: OnMissing) -> LookupSpec {
        let path = dir.join("shops.jsonl");
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        LookupSpec {
            path: path.display().to_string(),
            format: SourceFormat::JsonLines,
            csv: None,
            schema: vec![field("shop", FieldType::String), field("region", FieldType::String)],
            key: "shop".into(),
            field: None,
            on_missing,
            refresh_interval: None,
        }
    }

    #[test]
    fn each_record_gets_the_fields_of_every_row_of_its_key_and_a_miss_is_kept_with_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            json!({"shop": "s1", "region": "eu", "unlisted": 1}),
            json!({"shop": "s2", "region": "us"}),
            json!({"shop": "s2", "region": "ca"}),
        ];
        let mut step = Lookup::new(&shops(dir.path(), &rows, OnMissing::Keep), "steps[1]".into()).unwrap();
        assert_eq!(step.table.len(), 3);
        let (good, bad) = step.check(vec![
            json!({"order": 1, "shop": "s1"}),
            json!({"order": 2, "shop": "s2"}),
            json!({"order": 3, "shop": "s9"}),
            json!({"order": 4}),
        ]);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            good,
            vec![
                json!({"order": 1, "shop": "s1", "region": "eu"}),
                json!({"order": 2, "shop": "s2", "region": "us"}),
                json!({"order": 2, "shop": "s2", "region": "ca"}),
                json!({"order": 3, "shop": "s9", "region": null}),
                json!({"order": 4, "region": null}),
            ]
        );
    }

    #[test]
    fn a_miss_is_dropped_or_sent_to_the_error_policy_naming_the_field_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [json!({"shop": "s1", "region": "eu"})];
        let records =
            || vec![json!({"order": 1, "shop": "s1"}), json!({"order": 2, "shop": "s9"}), json!({"order": 3})];

        let mut drop = Lookup::new(&shops(dir.path(), &rows, OnMissing::Drop), "steps[1]".into()).unwrap();
        let (good, bad) = drop.check(records());
        assert_eq!(good, vec![json!({"order": 1, "shop": "s1", "region": "eu"})]);
        assert!(bad.is_empty());

        let mut policy = Lookup::new(&shops(dir.path(), &rows, OnMissing::ErrorPolicy), "steps[1]".into()).unwrap();
        let (good, bad) = policy.check(records());
        assert_eq!(good.len(), 1);
        let reasons: Vec<&str> = bad.iter().map(|b| b.reason.as_str()).collect();
        let table = dir.path().join("shops.jsonl").display().to_string();
        assert_eq!(
            reasons,
            [
                format!("no row of `{table}` has shop = \"s9\""),
                "field `shop` is missing or null: nothing to look up".into()
            ]
        );
        assert!(bad.iter().all(|b| b.origin == "steps[1]"));
    }

    #[test]
    fn a_csv_table_is_read_by_its_header_and_typed_by_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.csv");
        std::fs::write(&path, "rate,code,note\n0.2,7,\"a, b\"\n0.5,8,c\n").unwrap();
        let spec = LookupSpec {
            path: path.display().to_string(),
            format: SourceFormat::Csv,
            csv: Some(CsvSpec { header: true, delimiter: None }),
            schema: vec![field("code", FieldType::Int64), field("rate", FieldType::Float64)],
            key: "code".into(),
            field: Some("tax_code".into()),
            on_missing: OnMissing::Keep,
            refresh_interval: None,
        };
        let mut step = Lookup::new(&spec, "steps[0]".into()).unwrap();
        let (good, _) = step.check(vec![json!({"tax_code": 8}), json!({"tax_code": 7})]);
        assert_eq!(good, vec![json!({"tax_code": 8, "rate": 0.5}), json!({"tax_code": 7, "rate": 0.2})]);
    }

    #[test]
    fn a_parquet_table_is_read_typed_by_its_own_schema_and_checked_against_the_steps() {
        use std::sync::Arc;

        use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
        use arrow_schema::{DataType, Field, Schema};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.parquet");
        let schema =
            Schema::new(vec![Field::new("code", DataType::Int64, false), Field::new("rate", DataType::Float64, true)]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![7, 8, 9])),
            Arc::new(Float64Array::from(vec![Some(0.2), Some(0.5), None])),
        ];
        let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let mut spec = LookupSpec {
            path: path.display().to_string(),
            format: SourceFormat::Parquet,
            csv: None,
            schema: vec![
                field("code", FieldType::Int64),
                FieldSpec { nullable: true, ..field("rate", FieldType::Float64) },
            ],
            key: "code".into(),
            field: Some("tax_code".into()),
            on_missing: OnMissing::Keep,
            refresh_interval: None,
        };
        let mut step = Lookup::new(&spec, "steps[0]".into()).unwrap();
        let (good, _) = step.check(vec![json!({"tax_code": 8}), json!({"tax_code": 9})]);
        assert_eq!(good, vec![json!({"tax_code": 8, "rate": 0.5}), json!({"tax_code": 9, "rate": null})]);

        spec.schema[1].nullable = false;
        let err = Lookup::new(&spec, "steps[0]".into()).err().unwrap().to_string();
        assert!(err.contains("rates.parquet, record 3") && err.contains("`rate`"), "{err}");
    }

    #[test]
    fn a_table_row_that_does_not_fit_its_schema_fails_the_task_naming_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [json!({"shop": "s1", "region": "eu"}), json!({"shop": "s2", "region": 4})];
        let err = Lookup::new(&shops(dir.path(), &rows, OnMissing::Keep), "spec.pipeline.steps[2]".into())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("spec.pipeline.steps[2]"), "{err}");
        assert!(err.contains("shops.jsonl:2"), "{err}");
        assert!(err.contains("`region`"), "{err}");

        let mut missing = shops(dir.path(), &rows[..1], OnMissing::Keep);
        missing.path = dir.path().join("absent.jsonl").display().to_string();
        let err = Lookup::new(&missing, "spec.pipeline.steps[2]".into()).err().unwrap().to_string();
        assert!(err.contains("cannot open the table") && err.contains("absent.jsonl"), "{err}");
    }

    #[test]
    fn with_a_refresh_interval_a_changed_file_is_read_again_once_the_interval_passed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = shops(dir.path(), &[json!({"shop": "s1", "region": "eu"})], OnMissing::Keep);
        spec.refresh_interval = Some(HumanDuration(Duration::from_secs(60)));
        let mut step = Lookup::new(&spec, "steps[1]".into()).unwrap();
        let start = Instant::now();
        std::fs::write(&spec.path, json!({"shop": "s1", "region": "apac"}).to_string() + "\n").unwrap();
        let file = std::fs::File::options().write(true).open(&spec.path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();

        step.refresh_table(start + Duration::from_secs(30)).unwrap();
        let (good, _) = step.check(vec![json!({"shop": "s1"})]);
        assert_eq!(good, vec![json!({"shop": "s1", "region": "eu"})], "not before the interval");

        step.refresh_table(start + Duration::from_secs(61)).unwrap();
        let (good, _) = step.check(vec![json!({"shop": "s1"})]);
        assert_eq!(good, vec![json!({"shop": "s1", "region": "apac"})]);
    }
}
