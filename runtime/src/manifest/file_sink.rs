//! `spec.pipeline.sink.file`: exactly-once part files in a local directory
//! or in object storage, as JSON lines, CSV or Parquet.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::HumanDuration;
use crate::storage::StorageUri;

/// Part files per subtask and checkpoint, visible only once their
/// checkpoint completed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSinkSpec {
    /// A local directory, or a URI of any storage Weir's checkpoints can
    /// use (`s3://BUCKET/PREFIX`, `file://PATH`, `hdfs://NAMENODE/PATH`);
    /// credentials and endpoints come from the same environment variables.
    pub path: String,
    // Left out when JSON lines so that the spec digest of a job written
    // before Parquet existed stays what it was (no restart on upgrade).
    #[serde(default, skip_serializing_if = "FileFormat::is_json_lines")]
    pub format: FileFormat,
    /// A part file is closed and a new one begun once it holds this many
    /// bytes (as `64Mi`, `1Gi` or a number of bytes); every part is also
    /// closed at each checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_size: Option<ByteSize>,
    /// A part file is closed once it has been open this long (checked as
    /// records arrive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll_interval: Option<HumanDuration>,
    /// The Parquet schema and compression (for `format: Parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSpec>,
    /// The Avro columns and compression (for `format: Avro`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro: Option<AvroSpec>,
    /// The CSV columns, header and delimiter (for `format: Csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSinkSpec>,
    /// Record fields whose values name directories, Hive style:
    /// `partitionBy: [region, day]` writes a record with region EU and day
    /// 2026-12-03 under `region=EU/day=2026-12-03/`. These fields are left
    /// out of the files (the directory holds them), as Hive, Spark, Trino
    /// and Flink's filesystem connector read them back; a missing or null
    /// value goes to `__HIVE_DEFAULT_PARTITION__`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`).
    #[default]
    JsonLines,
    /// Apache Parquet (`.parquet`), columns as `parquet.columns` declare.
    Parquet,
    /// Comma-separated values (`.csv`, RFC 4180 quoting), columns as
    /// `csv.columns` name them.
    Csv,
    /// Apache Avro object container files (`.avro`, the schema in each
    /// file's header), columns as `avro.columns` declare.
    Avro,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSinkSpec {
    /// The record fields written, in this order. A missing or null field
    /// is an empty cell; an array or object is its JSON text.
    pub columns: Vec<String>,
    /// Whether each part file begins with a line of the column names.
    #[serde(default = "yes")]
    pub header: bool,
    /// The field delimiter: one ASCII character (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
}

impl CsvSinkSpec {
    /// The delimiter byte; `problems` refused any other.
    pub fn delimiter_byte(&self) -> u8 {
        super::pipeline::delimiter_byte(self.delimiter.as_deref())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParquetSpec {
    /// The file's columns, filled from the record fields of the same names;
    /// other record fields are not written.
    pub columns: Vec<ColumnSpec>,
    #[serde(default)]
    pub compression: ParquetCompression,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvroSpec {
    /// The record schema's fields, filled from the record fields of the
    /// same names; other record fields are not written. A nullable column
    /// is a union with null; `Timestamp` is `timestamp-millis` and `Date`
    /// is `date`.
    pub columns: Vec<ColumnSpec>,
    #[serde(default)]
    pub compression: AvroCompression,
}

/// The codec of an Avro file's blocks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum AvroCompression {
    #[default]
    Snappy,
    Zstd,
    Deflate,
    /// The `null` codec.
    Uncompressed,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// Whether a record may lack the field (or hold null); a record that
    /// lacks a required one goes to the error policy.
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Milliseconds since the epoch (UTC), from a number or an RFC 3339 string.
    Timestamp,
    /// A calendar date, from `YYYY-MM-DD`.
    Date,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ParquetCompression {
    #[default]
    Snappy,
    Zstd,
    Uncompressed,
}

/// The default roll size, and the largest: a part is made visible by one
/// server-side copy, which object stores bound (5 GiB on S3 in one request).
pub const DEFAULT_ROLL_SIZE: u64 = 128 << 20;
pub const MAX_ROLL_SIZE: u64 = 5 << 30;

impl FileFormat {
    fn is_json_lines(&self) -> bool {
        *self == FileFormat::JsonLines
    }
}

impl FileSinkSpec {
    /// Whether the sink goes through OpenDAL (a URI, or Parquet) rather
    /// than the local directory sink (a plain path with JSON lines).
    pub fn is_object_store(&self) -> bool {
        self.path.contains("://")
            || self.format != FileFormat::JsonLines
            || self.roll_size.is_some()
            || !self.partition_by.is_empty()
    }

    fn csv_problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let Some(csv) = &self.csv else {
            if self.format == FileFormat::Csv {
                errors.push(format!("{at}.csv: required for format Csv (its columns: the fields written, in order)"));
            }
            return errors;
        };
        if self.format != FileFormat::Csv {
            errors.push(format!("{at}.csv: only for format Csv; set format: Csv or remove it"));
        }
        if csv.columns.is_empty() {
            errors.push(format!("{at}.csv.columns: expected at least one field name"));
        }
        for (i, c) in csv.columns.iter().enumerate() {
            if c.is_empty() {
                errors.push(format!("{at}.csv.columns[{i}]: expected a field name, got an empty name"));
            } else if csv.columns[..i].contains(c) {
                errors.push(format!("{at}.csv.columns[{i}]: `{c}` is already a column"));
            } else if self.partition_by.contains(c) {
                errors.push(format!(
                    "{at}.csv.columns[{i}]: `{c}` is a partition field, written as the directory {c}=VALUE/, not \
                     in the file: remove the column"
                ));
            }
        }
        errors.extend(super::pipeline::delimiter_problem(at, csv.delimiter.as_deref()));
        errors
    }

    pub fn roll_size(&self) -> u64 {
        self.roll_size.map_or(DEFAULT_ROLL_SIZE, |s| s.0)
    }

    pub fn roll_interval(&self) -> Option<Duration> {
        self.roll_interval.map(HumanDuration::get)
    }

    /// What is wrong with this sink, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.path.is_empty() {
            errors.push(format!("{at}.path: required, got an empty path"));
        } else if let Err(e) = StorageUri::parse(&self.path) {
            errors.push(format!("{at}.path: {e}"));
        }
        if let Some(size) = self.roll_size {
            if size.0 < 64 << 10 || size.0 > MAX_ROLL_SIZE {
                errors.push(format!("{at}.rollSize: expected between 64Ki and 5Gi, got {size}"));
            }
        }
        if let Some(interval) = self.roll_interval {
            if interval.get() < Duration::from_secs(1) {
                errors.push(format!("{at}.rollInterval: expected at least 1s, got {interval}"));
            }
        }
        errors.extend(columns_problems(
            at,
            "parquet",
            FileFormat::Parquet,
            self.format,
            self.parquet.as_ref().map(|p| &p.columns),
        ));
        errors.extend(columns_problems(
            at,
            "avro",
            FileFormat::Avro,
            self.format,
            self.avro.as_ref().map(|a| &a.columns),
        ));
        errors.extend(self.csv_problems(at));
        for (i, field) in self.partition_by.iter().enumerate() {
            let at = format!("{at}.partitionBy[{i}]");
            if field.is_empty() {
                errors.push(format!("{at}: expected a field name, got an empty name"));
            } else if field.starts_with('.') {
                errors.push(format!(
                    "{at}: `{field}` starts with a dot; readers skip such directories, so its records would be hidden"
                ));
            } else if self.partition_by[..i].contains(field) {
                errors.push(format!("{at}: `{field}` is already a partition field"));
            } else {
                let declared = [
                    ("parquet", self.parquet.as_ref().map(|p| &p.columns)),
                    ("avro", self.avro.as_ref().map(|a| &a.columns)),
                ];
                for (section, columns) in declared {
                    if let Some(c) = columns.into_iter().flatten().position(|c| &c.name == field) {
                        errors.push(format!(
                            "{at}: `{field}` is also {section}.columns[{c}]; a partition field is written as the \
                             directory {field}=VALUE/, not in the file: remove the column"
                        ));
                    }
                }
            }
        }
        errors
    }
}

/// What is wrong with the columns of the `section` (`parquet`, `avro`)
/// that `format` (of `want`) needs, each naming its field under `at`.
fn columns_problems(
    at: &str,
    section: &str,
    want: FileFormat,
    format: FileFormat,
    columns: Option<&Vec<ColumnSpec>>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let name = format!("{want:?}");
    match (format == want, columns) {
        (true, None) => errors.push(format!("{at}.{section}: required for format {name} (its columns: name and type)")),
        (true, Some(columns)) => {
            if columns.is_empty() {
                errors.push(format!("{at}.{section}.columns: expected at least one column"));
            }
            for (i, c) in columns.iter().enumerate() {
                if c.name.is_empty() {
                    errors.push(format!("{at}.{section}.columns[{i}].name: required, got an empty name"));
                } else if columns[..i].iter().any(|o| o.name == c.name) {
                    errors.push(format!("{at}.{section}.columns[{i}].name: `{}` is already a column", c.name));
                }
            }
        }
        (false, Some(_)) => {
            errors.push(format!("{at}.{section}: only for format {name}; set format: {name} or remove it"))
        }
        (false, None) => {}
    }
    errors
}

/// A size in bytes, written as a Kubernetes quantity (`64Mi`, `1Gi`,
/// `500M`) or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let factor: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => 0,
        };
        number
            .parse::<u64>()
            .ok()
            .filter(|_| factor != 0)
            .and_then(|n| n.checked_mul(factor))
            .map(ByteSize)
            .ok_or_else(|| format!("expected a size such as `64Mi`, `1Gi` or a number of bytes, got `{s}`"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": "^[0-9]+(Ki|Mi|Gi|k|K|M|G)?$",
            "description": "A size such as `64Mi`, `1Gi` or a number of bytes."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parquet(columns: &[(&str, ColumnType)]) -> FileSinkSpec {
        FileSinkSpec {
            path: "s3://bucket/out".into(),
            format: FileFormat::Parquet,
            roll_size: None,
            roll_interval: None,
            parquet: Some(ParquetSpec {
                columns: columns
                    .iter()
                    .map(|(n, t)| ColumnSpec { name: n.to_string(), data_type: *t, nullable: true })
                    .collect(),
                compression: ParquetCompression::Snappy,
            }),
            avro: None,
            csv: None,
            partition_by: Vec::new(),
        }
    }

    #[test]
    fn sizes_read_as_kubernetes_quantities_and_print_back() {
        assert_eq!("64Mi".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("500M".parse::<ByteSize>().unwrap(), ByteSize(500_000_000));
        assert_eq!(ByteSize(1 << 30).to_string(), "1Gi");
        let err = "12 parsecs".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("`12 parsecs`"), "{err}");
    }

    #[test]
    fn a_parquet_sink_with_typed_columns_is_accepted_and_goes_through_object_storage() {
        let s = parquet(&[("key", ColumnType::String), ("count", ColumnType::Int64)]);
        assert_eq!(s.problems("sink"), Vec::<String>::new());
        assert!(s.is_object_store());
        let local = FileSinkSpec { path: "./out".into(), format: FileFormat::JsonLines, parquet: None, ..s };
        assert!(!local.is_object_store(), "a plain directory with JSON lines stays the local sink");
    }

    #[test]
    fn parquet_without_columns_and_repeated_columns_are_refused_by_field() {
        let s = FileSinkSpec { parquet: None, ..parquet(&[]) };
        assert_eq!(s.problems("sink"), vec!["sink.parquet: required for format Parquet (its columns: name and type)"]);
        let s = parquet(&[("key", ColumnType::String), ("key", ColumnType::Int64)]);
        assert_eq!(s.problems("sink"), vec!["sink.parquet.columns[1].name: `key` is already a column"]);
    }

    #[test]
    fn avro_needs_its_own_columns_and_takes_no_parquet_section() {
        let columns = parquet(&[("key", ColumnType::String)]).parquet.map(|p| p.columns).unwrap_or_default();
        let avro = Some(AvroSpec { columns, compression: AvroCompression::Snappy });
        let s = FileSinkSpec { format: FileFormat::Avro, parquet: None, avro, ..parquet(&[]) };
        assert_eq!(s.problems("sink"), Vec::<String>::new());
        assert!(s.is_object_store());
        let s = FileSinkSpec { format: FileFormat::Avro, ..parquet(&[("key", ColumnType::String)]) };
        assert_eq!(
            s.problems("sink"),
            vec![
                "sink.parquet: only for format Parquet; set format: Parquet or remove it",
                "sink.avro: required for format Avro (its columns: name and type)",
            ]
        );
    }

    #[test]
    fn roll_sizes_beyond_what_one_copy_can_publish_are_refused() {
        let s = FileSinkSpec { roll_size: Some(ByteSize(6 << 30)), ..parquet(&[("k", ColumnType::String)]) };
        assert_eq!(s.problems("sink"), vec!["sink.rollSize: expected between 64Ki and 5Gi, got 6Gi"]);
    }

    #[test]
    fn partition_fields_that_are_empty_repeated_or_also_parquet_columns_are_refused_by_field() {
        let mut s = parquet(&[("key", ColumnType::String), ("count", ColumnType::Int64)]);
        s.partition_by = vec!["region".into(), "".into(), "region".into(), "key".into()];
        assert_eq!(
            s.problems("sink"),
            vec![
                "sink.partitionBy[1]: expected a field name, got an empty name",
                "sink.partitionBy[2]: `region` is already a partition field",
                "sink.partitionBy[3]: `key` is also parquet.columns[0]; a partition field is written as the \
                 directory key=VALUE/, not in the file: remove the column",
            ]
        );
        let local = FileSinkSpec {
            path: "./out".into(),
            format: FileFormat::JsonLines,
            parquet: None,
            avro: None,
            csv: None,
            partition_by: vec!["region".into()],
            ..s
        };
        assert_eq!(local.problems("sink"), Vec::<String>::new());
        assert!(local.is_object_store(), "partitioned output goes through OpenDAL even to a plain directory");
    }

    #[test]
    fn a_csv_sink_needs_its_columns_once_each_and_a_one_character_delimiter() {
        let s = FileSinkSpec { format: FileFormat::Csv, parquet: None, ..parquet(&[]) };
        assert_eq!(
            s.problems("sink"),
            vec!["sink.csv: required for format Csv (its columns: the fields written, in order)"]
        );
        let csv = CsvSinkSpec { columns: vec!["key".into(), "key".into()], header: true, delimiter: Some("||".into()) };
        let s = FileSinkSpec { csv: Some(csv), ..s };
        assert_eq!(
            s.problems("sink"),
            vec![
                "sink.csv.columns[1]: `key` is already a column",
                "sink.csv.delimiter: expected one ASCII character other than a quote or line break, got `||`",
            ]
        );
        let fine =
            CsvSinkSpec { columns: vec!["key".into(), "count".into()], header: true, delimiter: Some(";".into()) };
        let s = FileSinkSpec { csv: Some(fine), path: "./out".into(), ..s };
        assert_eq!(s.problems("sink"), Vec::<String>::new());
        assert!(s.is_object_store(), "CSV parts go through OpenDAL even to a plain directory");
        let json = FileSinkSpec { format: FileFormat::JsonLines, ..s };
        assert_eq!(json.problems("sink"), vec!["sink.csv: only for format Csv; set format: Csv or remove it"]);
    }
}
