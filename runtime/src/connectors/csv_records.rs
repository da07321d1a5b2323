//! CSV records for the file source: a file read from a byte offset with the
//! `csv` crate (RFC 4180 quoting, so a record may span lines), each record
//! turned into a JSON object typed by `spec.pipeline.schema`.
//!
//! The offset after each record is where a restore resumes. With a header,
//! the header is read again from the file's start on every open, so a
//! restore in the middle of a file still knows which column is which.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use csv::{ByteRecord, Position, ReaderBuilder};
use serde_json::{Map, Number, Value};

use super::file_source::UNTERMINATED;
use crate::manifest::{CsvSpec, FieldSpec, FieldType};
use crate::record::{BadRecord, Row};
use crate::task::TaskError;

/// How a job's CSV files are laid out.
#[derive(Debug, Clone)]
pub struct CsvFormat {
    fields: Vec<FieldSpec>,
    header: bool,
    delimiter: u8,
}

/// One record read: the row (or why it is bad), where it began, and where
/// the next one begins.
pub struct CsvRead {
    pub row: Result<Row, BadRecord>,
    /// `path:line` of the record's first line.
    pub origin: String,
    pub next_offset: u64,
    pub next_line: u64,
}

/// An open CSV file at a position.
pub struct CsvReader {
    path: String,
    rdr: csv::Reader<File>,
    /// Where the reader was opened: its positions are relative to this.
    base_offset: u64,
    base_line: u64,
    /// For each schema field, its column.
    columns: Vec<usize>,
    /// The columns a record must have.
    width: usize,
    /// The file's length when opened, and whether it ends a line: a last
    /// record without a line break may still be being written.
    len: u64,
    ends_with_newline: bool,
    record: ByteRecord,
}

impl CsvFormat {
    pub fn new(fields: &[FieldSpec], spec: Option<&CsvSpec>) -> CsvFormat {
        let spec = spec.cloned().unwrap_or_default();
        CsvFormat { fields: fields.to_vec(), header: spec.header, delimiter: spec.delimiter_byte() }
    }

    fn reader<R: Read>(&self, file: R) -> csv::Reader<R> {
        ReaderBuilder::new().has_headers(false).flexible(true).delimiter(self.delimiter).from_reader(file)
    }

    /// Opens `path` at `offset` (line `line`); at offset 0 with a header,
    /// past the header, and the offset and line returned are after it.
    pub fn open(&self, path: &str, offset: u64, line: u64) -> Result<(CsvReader, u64, u64), TaskError> {
        let io = |what: &str, e: &dyn std::fmt::Display| TaskError::source(path, format!("cannot {what}: {e}"));
        let mut file = File::open(path).map_err(|e| io("open", &e))?;
        let len = file.metadata().map_err(|e| io("read its metadata", &e))?.len();
        let mut last = [0u8; 1];
        if len > 0 {
            file.seek(SeekFrom::Start(len - 1)).map_err(|e| io("seek", &e))?;
            file.read_exact(&mut last).map_err(|e| io("read", &e))?;
        }
        let bom = bom_len(&mut file, path)?;
        let (columns, width, header_end) = if self.header {
            file.seek(SeekFrom::Start(bom)).map_err(|e| io("seek", &e))?;
            let mut rdr = self.reader(&mut file);
            let mut names = ByteRecord::new();
            if !rdr.read_byte_record(&mut names).map_err(|e| io("read the header", &e))? {
                // An empty file: nothing to read, no columns to know.
                (Vec::new(), 0, Position::new())
            } else {
                let (columns, width) = self.by_header(path, &names)?;
                (columns, width, rdr.position().clone())
            }
        } else {
            ((0..self.fields.len()).collect(), self.fields.len(), Position::new())
        };
        let (offset, line) = if self.header && offset == 0 {
            (bom + header_end.byte(), line + header_end.line().saturating_sub(1))
        } else {
            (offset.max(bom), line)
        };
        file.seek(SeekFrom::Start(offset)).map_err(|e| io(&format!("seek to {offset}"), &e))?;
        let reader = CsvReader {
            path: path.to_string(),
            rdr: self.reader(file),
            base_offset: offset,
            base_line: line,
            columns,
            width,
            len,
            ends_with_newline: last[0] == b'\n',
            record: ByteRecord::new(),
        };
        Ok((reader, offset, line))
    }

    /// Each schema field's column in a file whose header is `names`.
    fn by_header(&self, path: &str, names: &ByteRecord) -> Result<(Vec<usize>, usize), TaskError> {
        let names: Vec<String> = names.iter().map(|n| String::from_utf8_lossy(n).trim().to_string()).collect();
        let columns = self
            .fields
            .iter()
            .map(|f| {
                names.iter().position(|n| *n == f.name).ok_or_else(|| {
                    TaskError::source(
                        path,
                        format!(
                            "its header has no column `{}`, which spec.pipeline.schema declares (its columns: {})",
                            f.name,
                            names.join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((columns, names.len()))
    }
}

impl CsvReader {
    /// The next record, or None at the end of the file.
    pub fn next(&mut self, format: &CsvFormat) -> Result<Option<CsvRead>, TaskError> {
        let start = self.rdr.position().clone();
        let read = self.rdr.read_byte_record(&mut self.record).map_err(|e| {
            TaskError::source(&self.path, format!("cannot read at byte {}: {e}", self.base_offset + start.byte()))
        })?;
        if !read {
            return Ok(None);
        }
        let end = self.rdr.position().clone();
        let origin = format!("{}:{}", self.path, self.base_line + start.line().saturating_sub(1));
        let next_offset = self.base_offset + end.byte();
        let row = if next_offset >= self.len && !self.ends_with_newline {
            Err(UNTERMINATED.to_string())
        } else {
            self.row(format)
        };
        let row = row.map_err(|reason| BadRecord { origin: origin.clone(), raw: self.raw(format.delimiter), reason });
        Ok(Some(CsvRead { row, origin, next_offset, next_line: self.base_line + end.line().saturating_sub(1) }))
    }

    /// The record as text, for bad-record reports.
    fn raw(&self, delimiter: u8) -> String {
        let fields: Vec<std::borrow::Cow<str>> = self.record.iter().map(String::from_utf8_lossy).collect();
        fields.join(&char::from(delimiter).to_string())
    }

    fn row(&self, format: &CsvFormat) -> Result<Row, String> {
        if self.record.len() != self.width {
            return Err(format!("expected {} columns, got {}", self.width, self.record.len()));
        }
        let mut o = Map::with_capacity(format.fields.len());
        for (f, &column) in format.fields.iter().zip(&self.columns) {
            let bytes = self.record.get(column).unwrap_or_default();
            let text = std::str::from_utf8(bytes).map_err(|e| format!("column `{}` is not UTF-8 text: {e}", f.name))?;
            o.insert(f.name.clone(), typed(f, text)?);
        }
        Ok(Value::Object(o))
    }
}

/// `text` as a value of `f`'s type. An empty column is null where the
/// field is nullable, and an empty string where it is a string.
fn typed(f: &FieldSpec, text: &str) -> Result<Value, String> {
    if text.is_empty() && f.ty != FieldType::String {
        return if f.nullable {
            Ok(Value::Null)
        } else {
            Err(format!("column `{}` is empty, expected {} (the field is not nullable)", f.name, f.ty.name()))
        };
    }
    let expected = || format!("column `{}`: expected {}, got `{text}`", f.name, f.ty.name());
    let trimmed = text.trim();
    match f.ty {
        FieldType::String => Ok(Value::String(text.to_string())),
        FieldType::Int64 => trimmed.parse::<i64>().map(Value::from).map_err(|_| expected()),
        FieldType::Float64 => {
            trimmed.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number).ok_or_else(expected)
        }
        FieldType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(expected()),
        },
        // Milliseconds, or text for the schema's check to read as RFC 3339.
        FieldType::Timestamp => Ok(trimmed.parse::<i64>().map_or_else(|_| Value::String(trimmed.into()), Value::from)),
    }
}

/// The length of a UTF-8 byte-order mark at the start of `file` (read
/// from `path`), as spreadsheet programs write: 3, or 0 without one.
/// Records are read after it, so the first field's name or value does not
/// carry it. Leaves the file's position anywhere in its first 3 bytes.
pub fn bom_len(file: &mut File, path: &str) -> Result<u64, TaskError> {
    let mut start = [0u8; 3];
    file.seek(SeekFrom::Start(0)).map_err(|e| TaskError::source(path, format!("cannot seek: {e}")))?;
    let mut read = 0;
    while read < 3 {
        match file.read(&mut start[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TaskError::source(path, format!("cannot read: {e}"))),
        }
    }
    Ok(if read == 3 && start == [0xEF, 0xBB, 0xBF] { 3 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, ty: FieldType, nullable: bool) -> FieldSpec {
        FieldSpec { name: name.into(), ty, nullable }
    }

    fn fields() -> Vec<FieldSpec> {
        vec![
            field("item", FieldType::String, false),
            field("qty", FieldType::Int64, false),
            field("price", FieldType::Float64, true),
        ]
    }

    /// Every record of `text` from `offset`, with the offsets after each.
    fn read_all(format: &CsvFormat, text: &str, offset: u64) -> Vec<(Result<Row, String>, String, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let (mut reader, _, _) = format.open(&path, offset, 1).unwrap();
        let mut out = Vec::new();
        while let Some(r) = reader.next(format).unwrap() {
            let origin = r.origin.rsplit(':').next().unwrap_or_default().to_string();
            out.push((r.row.map_err(|b| b.reason), origin, r.next_offset));
        }
        out
    }

    #[test]
    fn quoted_fields_may_hold_delimiters_quotes_and_line_breaks_and_offsets_resume_at_the_next_record() {
        let format = CsvFormat::new(&fields(), None);
        let text = "apple,3,1.5\n\"pear, \"\"green\"\"\nand ripe\",2,\nfig,1,0.25\n";
        let all = read_all(&format, text, 0);
        assert_eq!(all[0].0, Ok(json!({"item": "apple", "qty": 3, "price": 1.5})));
        assert_eq!(all[1].0, Ok(json!({"item": "pear, \"green\"\nand ripe", "qty": 2, "price": null})));
        assert_eq!(all[2].0, Ok(json!({"item": "fig", "qty": 1, "price": 0.25})));
        assert_eq!(all.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), ["1", "2", "4"], "first lines of records");
        let resumed = read_all(&format, text, all[0].2);
        assert_eq!(resumed.len(), 2);
        assert_eq!(resumed[0].0, all[1].0, "the offset after a record is where the next one starts");
    }

    #[test]
    fn a_header_names_the_columns_even_when_a_restore_opens_the_file_mid_way() {
        let format = CsvFormat::new(&fields(), Some(&CsvSpec { header: true, delimiter: Some(";".into()) }));
        let text = "price;unused;item;qty\n1.5;x;apple;3\n2;y;pear;4\n";
        let all = read_all(&format, text, 0);
        assert_eq!(all.len(), 2, "the header is not a record");
        assert_eq!(all[1].0, Ok(json!({"item": "pear", "qty": 4, "price": 2.0})));
        assert_eq!(read_all(&format, text, all[0].2)[0].0, all[1].0);
    }

    #[test]
    fn a_byte_order_mark_before_the_header_or_the_first_record_is_skipped() {
        let with_header = CsvFormat::new(&fields(), Some(&CsvSpec { header: true, delimiter: None }));
        let all = read_all(&with_header, "\u{feff}item,qty,price\napple,3,1.5\n", 0);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, Ok(json!({"item": "apple", "qty": 3, "price": 1.5})), "`item` found despite the mark");
        let plain = CsvFormat::new(&fields(), None);
        let all = read_all(&plain, "\u{feff}apple,3,1.5\npear,2,\n", 0);
        assert_eq!(all[0].0, Ok(json!({"item": "apple", "qty": 3, "price": 1.5})), "no mark in the first value");
        assert_eq!(all[0].1, "1", "the mark is not a line");
    }

    #[test]
    fn bad_columns_name_the_column_and_what_was_expected() {
        let format = CsvFormat::new(&fields(), None);
        let all = read_all(&format, "apple,three,1\napple,3\napple,,1\n,3,\napple,3,1", 0);
        assert_eq!(all[3].0, Ok(json!({"item": "", "qty": 3, "price": null})), "empty: a string, or null");
        let reasons: Vec<String> = all.into_iter().filter_map(|r| r.0.err()).collect();
        assert_eq!(
            reasons,
            [
                "column `qty`: expected int64, got `three`",
                "expected 3 columns, got 2",
                "column `qty` is empty, expected int64 (the field is not nullable)",
                "the last line does not end in a newline (the file may still be being written)",
            ]
        );
    }

    #[test]
    fn a_header_without_a_declared_field_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "item,qty\napple,3\n").unwrap();
        let format = CsvFormat::new(&fields(), Some(&CsvSpec { header: true, delimiter: None }));
        let err = format.open(&path.display().to_string(), 0, 1).err().unwrap().to_string();
        assert!(err.contains("no column `price`") && err.contains("its columns: item, qty"), "{err}");
    }
}
