//! The bytes of one part file: JSON lines, CSV, or Parquet and Avro written
//! through arrow-rs, streamed into an OpenDAL writer so a part never sits
//! whole in memory (Parquet keeps one row group at a time, Avro a block).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use arrow_avro::compression::CompressionCodec;
use arrow_avro::errors::AvroError;
use arrow_avro::writer::{AvroWriter, WriterBuilder};

use arrow_array::RecordBatch;
use arrow_json::ReaderBuilder;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::manifest::{AvroCompression, ColumnSpec, ColumnType, FileFormat, FileSinkSpec, ParquetCompression};
use crate::record::BadRecord;

/// What the sink writes, decided once from the manifest.
#[derive(Clone)]
pub enum PartFormat {
    JsonLines,
    Csv { columns: Arc<[String]>, header: bool, delimiter: u8 },
    Parquet { schema: SchemaRef, properties: Box<WriterProperties> },
    Avro { schema: SchemaRef, codec: Option<CompressionCodec> },
}

/// The Arrow schema of declared columns.
fn columns_schema(columns: &[ColumnSpec]) -> SchemaRef {
    let fields: Vec<Field> = columns.iter().map(|c| Field::new(&c.name, arrow_type(c.data_type), c.nullable)).collect();
    Arc::new(Schema::new(fields))
}

impl PartFormat {
    pub fn from_spec(spec: &FileSinkSpec) -> PartFormat {
        match (spec.format, &spec.parquet) {
            (FileFormat::Avro, _) => match &spec.avro {
                Some(a) => PartFormat::Avro {
                    schema: columns_schema(&a.columns),
                    codec: match a.compression {
                        AvroCompression::Snappy => Some(CompressionCodec::Snappy),
                        AvroCompression::Zstd => Some(CompressionCodec::ZStandard),
                        AvroCompression::Deflate => Some(CompressionCodec::Deflate),
                        AvroCompression::Uncompressed => None,
                    },
                },
                // `problems` refuses Avro without columns before a job starts.
                None => PartFormat::JsonLines,
            },
            (FileFormat::Parquet, Some(p)) => {
                let compression = match p.compression {
                    ParquetCompression::Snappy => Compression::SNAPPY,
                    ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
                    ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
                };
                let properties = WriterProperties::builder().set_compression(compression).build();
                PartFormat::Parquet { schema: columns_schema(&p.columns), properties: Box::new(properties) }
            }
            (FileFormat::Csv, _) => match &spec.csv {
                Some(csv) => PartFormat::Csv {
                    columns: csv.columns.clone().into(),
                    header: csv.header,
                    delimiter: csv.delimiter_byte(),
                },
                // `problems` refuses CSV without columns before a job starts.
                None => PartFormat::JsonLines,
            },
            // `problems` refuses Parquet without columns before a job starts.
            _ => PartFormat::JsonLines,
        }
    }

    pub fn extension(&self) -> &'static str {
        match self {
            PartFormat::JsonLines => "jsonl",
            PartFormat::Csv { .. } => "csv",
            PartFormat::Parquet { .. } => "parquet",
            PartFormat::Avro { .. } => "avro",
        }
    }
}

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ColumnType::Date => DataType::Date32,
    }
}

/// A failure writing a part, before the sink names itself in it.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("cannot write {name}: {source}")]
    Storage { name: String, source: opendal::Error },
    #[error("cannot encode Parquet for {name}: {source}")]
    Parquet { name: String, source: ParquetError },
    #[error("cannot encode Avro for {name}: {source}")]
    Avro { name: String, source: AvroError },
    #[error("cannot encode a record as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot encode a record as CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("record {record} does not fit the sink's columns: {reason}")]
    Misfit { record: String, reason: String },
}

/// The staged object a part streams into, as Parquet's async writer sees it.
pub struct Staged {
    writer: opendal::Writer,
}

impl AsyncFileWriter for Staged {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move { self.writer.write(bs).await.map_err(|e| ParquetError::External(Box::new(e))) }.boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move { self.writer.close().await.map(|_| ()).map_err(|e| ParquetError::External(Box::new(e))) }.boxed()
    }
}

/// JSON lines (and Avro blocks) are gathered to this size before they go
/// to the writer.
const JSON_FLUSH: usize = 1 << 20;

/// The bytes Avro's writer has encoded and the part has not yet taken:
/// the writer owns its sink, and the part drains it into the staged object.
#[derive(Clone, Default)]
pub struct Encoded(Arc<Mutex<Vec<u8>>>);

impl Encoded {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl std::io::Write for Encoded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One open part file.
pub enum PartWriter {
    Json {
        name: String,
        writer: opendal::Writer,
        buffer: Vec<u8>,
        written: u64,
    },
    Csv {
        name: String,
        writer: opendal::Writer,
        buffer: Vec<u8>,
        columns: Arc<[String]>,
        delimiter: u8,
        written: u64,
    },
    Parquet {
        name: String,
        writer: Box<AsyncArrowWriter<Staged>>,
        schema: SchemaRef,
    },
    Avro {
        name: String,
        writer: opendal::Writer,
        avro: Box<AvroWriter<Encoded>>,
        encoded: Encoded,
        schema: SchemaRef,
        written: u64,
    },
}

impl PartWriter {
    pub fn new(format: &PartFormat, name: String, writer: opendal::Writer) -> Result<PartWriter, PartError> {
        Ok(match format {
            PartFormat::JsonLines => PartWriter::Json { name, writer, buffer: Vec::new(), written: 0 },
            PartFormat::Csv { columns, header, delimiter } => {
                let mut buffer = Vec::new();
                if *header {
                    let mut rows = csv::WriterBuilder::new().delimiter(*delimiter).from_writer(&mut buffer);
                    rows.write_record(columns.iter())?;
                    rows.flush().map_err(csv::Error::from)?;
                }
                let columns = columns.clone();
                PartWriter::Csv { name, writer, buffer, columns, delimiter: *delimiter, written: 0 }
            }
            PartFormat::Parquet { schema, properties } => {
                let staged = Staged { writer };
                let writer =
                    AsyncArrowWriter::try_new(staged, schema.clone(), Some(WriterProperties::clone(properties)))
                        .map_err(|source| PartError::Parquet { name: name.clone(), source })?;
                PartWriter::Parquet { name, writer: Box::new(writer), schema: schema.clone() }
            }
            PartFormat::Avro { schema, codec } => {
                let encoded = Encoded::default();
                let avro = WriterBuilder::new(Schema::clone(schema))
                    .with_compression(*codec)
                    .build(encoded.clone())
                    .map_err(|source| PartError::Avro { name: name.clone(), source })?;
                PartWriter::Avro { name, writer, avro: Box::new(avro), encoded, schema: schema.clone(), written: 0 }
            }
        })
    }

    /// Bytes the part holds so far (encoded, before compression of the
    /// open row group), what rolling by size goes by.
    pub fn size(&self) -> u64 {
        match self {
            PartWriter::Json { buffer, written, .. } => written + buffer.len() as u64,
            PartWriter::Csv { buffer, written, .. } => written + buffer.len() as u64,
            PartWriter::Parquet { writer, .. } => (writer.bytes_written() + writer.in_progress_size()) as u64,
            PartWriter::Avro { encoded, written, .. } => written + encoded.len() as u64,
        }
    }

    /// Appends records. A record that does not fit the declared columns goes
    /// to `refused` when it is given, else fails the write naming it.
    pub async fn write<T: Serialize>(
        &mut self,
        records: &[T],
        refused: Option<&mut Vec<BadRecord>>,
    ) -> Result<(), PartError> {
        match self {
            PartWriter::Json { name, writer, buffer, written } => {
                for record in records {
                    serde_json::to_writer(&mut *buffer, record)?;
                    buffer.push(b'\n');
                }
                if buffer.len() >= JSON_FLUSH {
                    *written += buffer.len() as u64;
                    let bytes = std::mem::take(buffer);
                    writer.write(bytes).await.map_err(|source| PartError::Storage { name: name.clone(), source })?;
                }
                Ok(())
            }
            PartWriter::Csv { name, writer, buffer, columns, delimiter, written } => {
                // The csv writer's own buffer is small; its flush moves the
                // rows into `buffer`, not to storage.
                let mut rows = csv::WriterBuilder::new().delimiter(*delimiter).from_writer(&mut *buffer);
                for record in records {
                    let record = serde_json::to_value(record)?;
                    let cells: Vec<Cow<'_, str>> = columns.iter().map(|c| cell(record.get(c))).collect();
                    rows.write_record(cells.iter().map(|c| c.as_bytes()))?;
                }
                rows.flush().map_err(csv::Error::from)?;
                drop(rows);
                if buffer.len() >= JSON_FLUSH {
                    let bytes = std::mem::take(buffer);
                    *written += bytes.len() as u64;
                    writer.write(bytes).await.map_err(|source| PartError::Storage { name: name.clone(), source })?;
                }
                Ok(())
            }
            PartWriter::Parquet { name, writer, schema } => {
                let Some(batch) = record_batch(schema, records, refused)? else { return Ok(()) };
                writer.write(&batch).await.map_err(|source| PartError::Parquet { name: name.clone(), source })
            }
            PartWriter::Avro { name, writer, avro, encoded, schema, written } => {
                let Some(batch) = record_batch(schema, records, refused)? else { return Ok(()) };
                avro.write(&batch).map_err(|source| PartError::Avro { name: name.clone(), source })?;
                if encoded.len() >= JSON_FLUSH {
                    let bytes = encoded.take();
                    *written += bytes.len() as u64;
                    writer.write(bytes).await.map_err(|source| PartError::Storage { name: name.clone(), source })?;
                }
                Ok(())
            }
        }
    }

    /// Finishes the part: every byte is in the staged object when this returns.
    pub async fn close(self) -> Result<String, PartError> {
        match self {
            PartWriter::Json { name, mut writer, buffer, .. } | PartWriter::Csv { name, mut writer, buffer, .. } => {
                let storage = |source| PartError::Storage { name: name.clone(), source };
                if !buffer.is_empty() {
                    writer.write(buffer).await.map_err(storage)?;
                }
                writer.close().await.map_err(storage)?;
                Ok(name)
            }
            PartWriter::Parquet { name, writer, .. } => {
                writer.close().await.map_err(|source| PartError::Parquet { name: name.clone(), source })?;
                Ok(name)
            }
            PartWriter::Avro { name, mut writer, mut avro, encoded, .. } => {
                avro.finish().map_err(|source| PartError::Avro { name: name.clone(), source })?;
                let storage = |source| PartError::Storage { name: name.clone(), source };
                let rest = encoded.take();
                if !rest.is_empty() {
                    writer.write(rest).await.map_err(storage)?;
                }
                writer.close().await.map_err(storage)?;
                Ok(name)
            }
        }
    }

    /// Gives the part up (an unfinished multipart upload is aborted).
    pub async fn abort(self) -> Result<String, PartError> {
        let (name, mut writer) = match self {
            PartWriter::Json { name, writer, .. }
            | PartWriter::Csv { name, writer, .. }
            | PartWriter::Avro { name, writer, .. } => (name, writer),
            PartWriter::Parquet { name, writer, .. } => (name, writer.into_inner().writer),
        };
        writer.abort().await.map_err(|source| PartError::Storage { name: name.clone(), source })?;
        Ok(name)
    }
}

/// A CSV cell: text as it is, numbers and booleans as JSON writes them,
/// nothing for a missing or null field, JSON text for arrays and objects.
fn cell(value: Option<&serde_json::Value>) -> Cow<'_, str> {
    match value {
        None | Some(serde_json::Value::Null) => Cow::Borrowed(""),
        Some(serde_json::Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// The records as one Arrow batch of `schema`'s columns (fields not in it
/// are left out). When some do not fit, each is found and refused alone.
fn record_batch<T: Serialize>(
    schema: &SchemaRef,
    records: &[T],
    refused: Option<&mut Vec<BadRecord>>,
) -> Result<Option<RecordBatch>, PartError> {
    let decode = |rows: &[&T]| -> Result<Option<RecordBatch>, ArrowError> {
        let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(rows.len().max(1)).build_decoder()?;
        decoder.serialize(rows)?;
        decoder.flush()
    };
    let all: Vec<&T> = records.iter().collect();
    let first = match decode(&all) {
        Ok(batch) => return Ok(batch),
        Err(e) => e,
    };
    let mut fitting = Vec::with_capacity(all.len());
    let mut misfits = Vec::new();
    for record in all {
        match decode(&[record]) {
            Ok(_) => fitting.push(record),
            Err(e) => misfits.push((serde_json::to_string(record)?, plain(&e))),
        }
    }
    let Some(refused) = refused else {
        let (record, reason) = misfits.into_iter().next().unwrap_or_else(|| (String::from("(a batch)"), plain(&first)));
        return Err(PartError::Misfit { record, reason });
    };
    for (raw, reason) in misfits {
        refused.push(BadRecord {
            origin: "sink".into(),
            raw,
            reason: format!("does not fit the sink's columns: {reason}"),
        });
    }
    decode(&fitting)
        .map_err(|e| PartError::Misfit { record: "(the fitting rest of a batch)".into(), reason: plain(&e) })
}

/// Arrow's message without its `Json error: ` prefix.
fn plain(e: &ArrowError) -> String {
    match e {
        ArrowError::JsonError(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ColumnSpec, ParquetSpec};
    use serde_json::json;

    fn schema() -> SchemaRef {
        let spec = FileSinkSpec {
            path: "s3://b/p".into(),
            format: FileFormat::Parquet,
            roll_size: None,
            roll_interval: None,
            parquet: Some(ParquetSpec {
                columns: vec![
                    ColumnSpec { name: "key".into(), data_type: ColumnType::String, nullable: false },
                    ColumnSpec { name: "count".into(), data_type: ColumnType::Int64, nullable: false },
                ],
                compression: ParquetCompression::Zstd,
            }),
            avro: None,
            csv: None,
            partition_by: Vec::new(),
        };
        match PartFormat::from_spec(&spec) {
            PartFormat::Parquet { schema, .. } => schema,
            PartFormat::JsonLines | PartFormat::Csv { .. } | PartFormat::Avro { .. } => panic!("expected Parquet"),
        }
    }

    #[test]
    fn records_become_one_batch_of_the_declared_columns_only() {
        let rows = vec![json!({"key": "a", "count": 1, "extra": true}), json!({"key": "b", "count": 2})];
        let batch = record_batch(&schema(), &rows, None).unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.num_columns(), 2);
    }

    #[test]
    fn a_record_that_does_not_fit_is_named_with_its_field() {
        let rows = vec![json!({"key": "a", "count": 1}), json!({"key": "b", "count": "many"})];
        let err = record_batch(&schema(), &rows, None).unwrap_err().to_string();
        assert!(err.contains(r#"{"count":"many","key":"b"}"#), "{err}");
        assert!(err.contains("count"), "{err}");
    }

    #[test]
    fn misfits_are_refused_one_by_one_and_the_rest_is_written() {
        let rows = vec![json!({"key": "a", "count": 1}), json!({"count": 2}), json!({"key": "c", "count": 3})];
        let mut refused = Vec::new();
        let batch = record_batch(&schema(), &rows, Some(&mut refused)).unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].raw, r#"{"count":2}"#);
        assert!(refused[0].reason.contains("key"), "{:?}", refused[0]);
    }
}

#[cfg(test)]
mod avro_tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn an_avro_part_declares_nullable_columns_as_unions_and_times_with_their_logical_types() {
        let dir = tempfile::tempdir().unwrap();
        let op =
            opendal::Operator::new(opendal::services::Fs::default().root(&dir.path().display().to_string())).unwrap();
        let columns = [
            ColumnSpec { name: "key".into(), data_type: ColumnType::String, nullable: false },
            ColumnSpec { name: "at".into(), data_type: ColumnType::Timestamp, nullable: true },
            ColumnSpec { name: "day".into(), data_type: ColumnType::Date, nullable: true },
        ];
        let format = PartFormat::Avro { schema: columns_schema(&columns), codec: Some(CompressionCodec::Snappy) };
        let mut part = PartWriter::new(&format, "p.avro".into(), op.writer("p.avro").await.unwrap()).unwrap();
        let rows =
            [json!({"key": "a", "at": "2026-12-07T08:00:00Z", "day": "2026-12-07"}), json!({"key": "b", "at": null})];
        part.write(&rows, None).await.unwrap();
        part.close().await.unwrap();
        let bytes = std::fs::read(dir.path().join("p.avro")).unwrap();
        let header = String::from_utf8_lossy(&bytes);
        for wanted in [r#""logicalType":"timestamp-millis""#, r#""logicalType":"date""#, r#""null""#, "snappy"] {
            assert!(header.contains(wanted), "no {wanted} in the header: {header}");
        }
        let reader = arrow_avro::reader::ReaderBuilder::new().build(std::io::Cursor::new(bytes)).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        let at = batches[0].column(1).as_any().downcast_ref::<arrow_array::TimestampMillisecondArray>().unwrap();
        assert_eq!(at.value(0), 1_796_630_400_000);
        assert!(arrow_array::Array::is_null(at, 1));
    }
}
