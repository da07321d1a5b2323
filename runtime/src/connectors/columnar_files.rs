//! Parquet files and Avro object container files, read record by record:
//! the file source's and the lookup table's reader for both.
//!
//! Both formats carry their own schema, so a record's fields come typed
//! from the file. They become the same JSON objects every other source
//! gives: timestamps as milliseconds since the epoch (what a `Timestamp`
//! field of `spec.pipeline.schema` reads, and what the file sink writes
//! back), dates and times of day as ISO text, decimals as numbers, nulls
//! as explicit nulls.
//!
//! A position in such a file is the number of records read before it, not
//! a byte offset: a Parquet reader skips whole row groups to reach it
//! (`with_offset`); an Avro reader, whose blocks cannot be found without
//! reading the ones before, decodes and drops the records before it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::task::TaskError;

/// How many records a reader decodes at a time.
const BATCH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnarFormat {
    Parquet,
    Avro,
}

impl ColumnarFormat {
    /// The extension of the files a watched directory holds in this format.
    pub fn extension(self) -> &'static str {
        self.extensions().first().copied().unwrap_or_default()
    }

    /// The extensions of the files a directory source reads.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            ColumnarFormat::Parquet => &["parquet"],
            ColumnarFormat::Avro => &["avro"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            ColumnarFormat::Parquet => "a Parquet file",
            ColumnarFormat::Avro => "an Avro object container file",
        }
    }
}

/// One record read, with its 0-based number in the file.
pub struct ReadRecord {
    pub number: u64,
    pub row: Value,
}

pub struct ColumnarReader {
    path: String,
    format: ColumnarFormat,
    batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>,
    /// Decoded records not handed out yet.
    pending: VecDeque<Value>,
    /// Records still to drop to reach the position asked for (Avro).
    skip: u64,
    /// The number of the next record handed out.
    next: u64,
}

impl ColumnarReader {
    /// Opens `path` to read from its record number `position` on.
    pub fn open(path: &str, format: ColumnarFormat, position: u64) -> Result<ColumnarReader, TaskError> {
        let fail = |reason: String| TaskError::source(path, reason);
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let not_readable = |e: &dyn std::fmt::Display| fail(format!("not readable as {}: {e}", format.name()));
        let (batches, skip): (Box<dyn Iterator<Item = _> + Send>, u64) = match format {
            ColumnarFormat::Parquet => {
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| not_readable(&e))?;
                let records = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
                if records < position {
                    return Err(fail(format!(
                        "the file holds {records} records, fewer than the restored position {position}: it was \
                         replaced; refusing to read it from a position that means nothing in it"
                    )));
                }
                let offset = usize::try_from(position).map_err(|_| fail(format!("position {position} too large")))?;
                let reader =
                    builder.with_batch_size(BATCH).with_offset(offset).build().map_err(|e| not_readable(&e))?;
                (Box::new(reader), 0)
            }
            ColumnarFormat::Avro => {
                let reader = arrow_avro::reader::ReaderBuilder::new()
                    .with_batch_size(BATCH)
                    .build(BufReader::with_capacity(1 << 16, file))
                    .map_err(|e| not_readable(&e))?;
                (Box::new(reader), position)
            }
        };
        Ok(ColumnarReader { path: path.to_string(), format, batches, pending: VecDeque::new(), skip, next: position })
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<ReadRecord>, TaskError> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                self.next += 1;
                return Ok(Some(ReadRecord { number: self.next - 1, row }));
            }
            let Some(batch) = self.batches.next() else {
                if self.skip > 0 {
                    return Err(TaskError::source(
                        &self.path,
                        format!(
                            "the file ends {} records before the restored position {}: it was replaced; refusing \
                             to read it from a position that means nothing in it",
                            self.skip, self.next
                        ),
                    ));
                }
                return Ok(None);
            };
            let at = self.next + self.pending.len() as u64;
            let fail = |e: ArrowError| {
                TaskError::source(&self.path, format!("cannot read {} at record {at}: {e}", self.format.name()))
            };
            let mut batch = batch.map_err(fail)?;
            let rows = batch.num_rows() as u64;
            if self.skip >= rows {
                self.skip -= rows;
                continue;
            }
            if self.skip > 0 {
                batch = batch.slice(self.skip as usize, (rows - self.skip) as usize);
                self.skip = 0;
            }
            self.pending.extend(json_rows(&batch).map_err(fail)?);
        }
    }
}

/// The batch's records as JSON objects (see the module's docs for types).
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<Value>, ArrowError> {
    let batch = plain_columns(batch)?;
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(Vec::with_capacity(batch.num_rows() * 64));
    writer.write(&batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| ArrowError::JsonError(e.to_string())))
        .collect()
}

/// `batch` with its top-level columns cast to the types a record's fields
/// are read as: timestamps to milliseconds, dates and times to text,
/// decimals to floats.
fn plain_columns(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| plain_type(f.data_type()).is_some()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match plain_type(field.data_type()) {
            Some(to) => {
                let column = match field.data_type() {
                    // The zone is kept, so that the instant is: a timestamp
                    // stores UTC whatever zone it is shown in.
                    DataType::Timestamp(unit, zone) if *unit != TimeUnit::Millisecond => arrow_cast::cast(
                        &arrow_cast::cast(column, &DataType::Timestamp(TimeUnit::Millisecond, zone.clone()))?,
                        &to,
                    )?,
                    _ => arrow_cast::cast(column, &to)?,
                };
                fields.push(Field::new(field.name(), to, field.is_nullable()));
                columns.push(column);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
}

fn plain_type(ty: &DataType) -> Option<DataType> {
    match ty {
        DataType::Timestamp(_, _) => Some(DataType::Int64),
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => Some(DataType::Utf8),
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => Some(DataType::Float64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use serde_json::json;

    use super::*;

    /// Five records: `n` 0..5, `name` null for the third, `at` the n-th
    /// second past 2024-01-01 in microseconds (UTC), `price` n + 0.25.
    fn batch() -> RecordBatch {
        let at = 1_704_067_200_000_000i64;
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false),
            Field::new("price", DataType::Decimal128(10, 2), false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..5)),
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, Some("d"), Some("e")])),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..5).map(|n| at + n * 1_000_000)).with_timezone("+00:00"),
            ),
            Arc::new(
                Decimal128Array::from_iter_values((0..5).map(|n| n * 100 + 25))
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    fn write(dir: &std::path::Path, format: ColumnarFormat) -> String {
        let path = dir.join(format!("in.{}", format.extension()));
        let file = File::create(&path).unwrap();
        let batch = batch();
        match format {
            ColumnarFormat::Parquet => {
                let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
                writer.write(&batch).unwrap();
                writer.close().unwrap();
            }
            ColumnarFormat::Avro => {
                let schema = Schema::clone(&batch.schema());
                let mut writer: arrow_avro::writer::AvroWriter<File> =
                    arrow_avro::writer::WriterBuilder::new(schema).build(file).unwrap();
                writer.write(&batch).unwrap();
                writer.finish().unwrap();
            }
        }
        path.display().to_string()
    }

    fn read_all(path: &str, format: ColumnarFormat, from: u64) -> Result<Vec<(u64, Value)>, TaskError> {
        let mut reader = ColumnarReader::open(path, format, from)?;
        let mut out = Vec::new();
        while let Some(read) = reader.next_record()? {
            out.push((read.number, read.row));
        }
        Ok(out)
    }

    #[test]
    fn parquet_and_avro_records_read_as_typed_json_with_timestamps_in_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ColumnarFormat::Parquet, ColumnarFormat::Avro] {
            let path = write(dir.path(), format);
            let rows = read_all(&path, format, 0).unwrap();
            assert_eq!(rows.len(), 5, "{format:?}");
            assert_eq!(
                rows[2],
                (2, json!({"n": 2, "name": null, "at": 1_704_067_202_000i64, "price": 2.25})),
                "{format:?}"
            );
            assert_eq!(rows[4].1["name"], "e", "{format:?}");
        }
    }

    #[test]
    fn a_reader_opened_at_a_restored_position_starts_at_that_record_and_refuses_a_shorter_file() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ColumnarFormat::Parquet, ColumnarFormat::Avro] {
            let path = write(dir.path(), format);
            let rows = read_all(&path, format, 3).unwrap();
            let numbers: Vec<(u64, i64)> = rows.iter().map(|(k, r)| (*k, r["n"].as_i64().unwrap())).collect();
            assert_eq!(numbers, vec![(3, 3), (4, 4)], "{format:?}");
            assert!(read_all(&path, format, 5).unwrap().is_empty(), "{format:?}: at the end, nothing more");
            let err = read_all(&path, format, 9).unwrap_err().to_string();
            assert!(err.contains("restored position") && err.contains("was replaced"), "{format:?}: {err}");
        }
    }

    #[test]
    fn a_file_in_another_format_is_refused_naming_the_format_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        std::fs::write(&path, "{\"n\": 1}\n").unwrap();
        let path = path.display().to_string();
        let err = read_all(&path, ColumnarFormat::Parquet, 0).unwrap_err().to_string();
        assert!(err.contains("in.parquet") && err.contains("not readable as a Parquet file"), "{err}");
        let err = read_all(&path, ColumnarFormat::Avro, 0).unwrap_err().to_string();
        assert!(err.contains("not readable as an Avro object container file"), "{err}");
    }
}
