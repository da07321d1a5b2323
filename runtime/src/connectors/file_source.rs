//! JSON-lines, CSV, Parquet or Avro files as a bounded, replayable source:
//! each file is a split whose position is a byte offset (a record number
//! in Parquet and Avro files, which are read by record).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::columnar_files::{ColumnarFormat, ColumnarReader};
use super::csv_records::{CsvFormat, CsvReader};
use crate::record::{BadRecord, SourceRecord};
use crate::state::snapshot::{decode, encode};
use crate::task::source_task::{Source, SourcePoll};
use crate::task::{TaskContext, TaskError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileSplit {
    path: String,
    /// Bytes read; in Parquet and Avro files, records read.
    offset: u64,
    /// 1-based number of the next line, for error messages.
    line: u64,
    /// What the file looked like when `offset` was reached, so a restore
    /// can tell the same file from a replaced one. `None` in state written
    /// before identities were kept.
    #[serde(default)]
    identity: Option<FileIdentity>,
}

/// Enough of a file to recognise it: the CRC32 of its first bytes (up to
/// [`PREFIX_BYTES`], and never past what was read) and their count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct FileIdentity {
    prefix_len: u64,
    prefix_crc32: u32,
}

const PREFIX_BYTES: u64 = 4096;

/// Why a file's last record, lacking its line break, is not read as whole.
pub(super) const UNTERMINATED: &str = "the last line does not end in a newline (the file may still be being written)";

pub struct FileSource {
    splits: Vec<FileSplit>,
    current: usize,
    kind: FileKind,
    reader: Option<Open>,
    buf: Vec<u8>,
}

/// How the files' records are written.
#[derive(Clone)]
pub enum FileKind {
    JsonLines,
    Csv(CsvFormat),
    Columnar(ColumnarFormat),
}

impl FileKind {
    /// The extensions of the files a watched directory holds.
    fn extensions(&self) -> &'static [&'static str] {
        match self {
            FileKind::JsonLines => &["jsonl", "json"],
            FileKind::Csv(_) => &["csv"],
            FileKind::Columnar(format) => format.extensions(),
        }
    }
}

/// The file being read.
enum Open {
    Lines(BufReader<File>),
    Csv(CsvReader),
    Columnar(ColumnarReader),
}

/// The files a `path` names: the file itself, or a directory's files with
/// one of `extensions`, in name order.
pub fn list_input_files(path: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>, TaskError> {
    let err = |e: std::io::Error| TaskError::source(&path.display().to_string(), format!("cannot read input: {e}"));
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)))
            .collect();
        files.sort();
        Ok(files)
    } else {
        std::fs::metadata(path).map_err(err)?;
        Ok(vec![path.to_path_buf()])
    }
}

impl FileSplit {
    fn new(path: &Path) -> FileSplit {
        FileSplit { path: path.display().to_string(), offset: 0, line: 1, identity: None }
    }

    /// The identity of the file at `path` now, over the first bytes up to `limit`.
    fn identify(&self, limit: u64) -> Result<FileIdentity, TaskError> {
        let mut file =
            File::open(&self.path).map_err(|e| TaskError::source(&self.path, format!("cannot open: {e}")))?;
        let mut prefix = Vec::new();
        file.by_ref()
            .take(limit.min(PREFIX_BYTES))
            .read_to_end(&mut prefix)
            .map_err(|e| TaskError::source(&self.path, format!("cannot read: {e}")))?;
        Ok(FileIdentity { prefix_len: prefix.len() as u64, prefix_crc32: crc32fast::hash(&prefix) })
    }

    /// Refuses to resume in a file that is not the one the offset was taken
    /// in. (`by_record`: the offset counts records, and the reader checks
    /// that the file holds that many.)
    fn check_identity(&self, by_record: bool) -> Result<(), TaskError> {
        let Some(expected) = self.identity else { return Ok(()) };
        if by_record {
            return self.check_prefix(expected);
        }
        let len = std::fs::metadata(&self.path)
            .map_err(|e| TaskError::source(&self.path, format!("cannot resume at byte {}: {e}", self.offset)))?
            .len();
        if len < self.offset {
            return Err(TaskError::source(
                &self.path,
                format!(
                    "the file is {len} bytes, shorter than the restored position {}: it was truncated or replaced; \
                     refusing to read it from a position that means nothing in it",
                    self.offset
                ),
            ));
        }
        self.check_prefix(expected)
    }

    fn check_prefix(&self, expected: FileIdentity) -> Result<(), TaskError> {
        if self.identify(expected.prefix_len)? != expected {
            return Err(TaskError::source(
                &self.path,
                format!(
                    "its first {} bytes differ from those read before the checkpoint: the file was replaced; \
                     refusing to resume at byte {} of another file",
                    expected.prefix_len, self.offset
                ),
            ));
        }
        Ok(())
    }
}

/// A stable owner for a file found after a restore: every subtask agrees
/// without talking to the others.
fn owner_of(path: &Path, parallelism: u32) -> u32 {
    crc32fast::hash(path.display().to_string().as_bytes()) % parallelism.max(1)
}

impl FileSource {
    /// `restored` is this subtask's share of the splits; `ctx.restored`
    /// holds every subtask's (under `uid`), which tells files already known
    /// from files added to a watched directory since.
    pub fn new(
        ctx: &TaskContext,
        uid: &str,
        restored: Option<Vec<Vec<u8>>>,
        path: &Path,
        kind: FileKind,
    ) -> Result<FileSource, TaskError> {
        let extensions = kind.extensions();
        let splits = match restored {
            Some(entries) => {
                let mut splits: Vec<FileSplit> = entries.iter().map(|e| decode(e)).collect::<Result<_, _>>()?;
                let known: Vec<String> = match &ctx.restored {
                    Some(r) => r
                        .list_round_robin(uid, 0, 1)
                        .iter()
                        .map(|e| decode::<FileSplit>(e).map(|s| s.path))
                        .collect::<Result<_, _>>()?,
                    None => splits.iter().map(|s| s.path.clone()).collect(),
                };
                for file in list_input_files(path, extensions)? {
                    let name = file.display().to_string();
                    if !known.contains(&name) && owner_of(&file, ctx.parallelism()) == ctx.subtask() {
                        splits.push(FileSplit::new(&file));
                    }
                }
                splits
            }
            None => list_input_files(path, extensions)?
                .into_iter()
                .enumerate()
                .filter(|(j, _)| *j as u32 % ctx.parallelism() == ctx.subtask())
                .map(|(_, p)| FileSplit::new(&p))
                .collect(),
        };
        Ok(FileSource { splits, current: 0, kind, reader: None, buf: Vec::new() })
    }

    fn open_current(&mut self) -> Result<(), TaskError> {
        let split = &mut self.splits[self.current];
        split.check_identity(matches!(self.kind, FileKind::Columnar(_)))?;
        match &self.kind {
            FileKind::Csv(csv) => {
                let (reader, offset, line) = csv.open(&split.path, split.offset, split.line)?;
                (split.offset, split.line) = (offset, line);
                self.reader = Some(Open::Csv(reader));
                return Ok(());
            }
            FileKind::Columnar(format) => {
                self.reader = Some(Open::Columnar(ColumnarReader::open(&split.path, *format, split.offset)?));
                return Ok(());
            }
            FileKind::JsonLines => {}
        }
        let mut file =
            File::open(&split.path).map_err(|e| TaskError::source(&split.path, format!("cannot open: {e}")))?;
        // A file that starts with a byte-order mark is read after it; past
        // its first 3 bytes that was settled when the file was first opened.
        if split.offset < 3 {
            split.offset = split.offset.max(super::csv_records::bom_len(&mut file, &split.path)?);
        }
        file.seek(SeekFrom::Start(split.offset))
            .map_err(|e| TaskError::source(&split.path, format!("cannot seek to {}: {e}", split.offset)))?;
        self.reader = Some(Open::Lines(BufReader::with_capacity(1 << 16, file)));
        Ok(())
    }

    /// Up to `max` records of the current CSV file into `batch`.
    fn csv_batch(&mut self, max: usize, batch: &mut Vec<SourceRecord>) -> Result<(), TaskError> {
        let (Some(Open::Csv(reader)), FileKind::Csv(format)) = (self.reader.as_mut(), &self.kind) else {
            return Ok(());
        };
        let split = &mut self.splits[self.current];
        while batch.len() < max {
            let Some(read) = reader.next(format)? else { break };
            (split.offset, split.line) = (read.next_offset, read.next_line);
            batch.push(SourceRecord { origin: Some(read.origin), split: self.current as u64, row: read.row });
        }
        Ok(())
    }

    /// Up to `max` records of the current Parquet or Avro file into `batch`.
    fn columnar_batch(&mut self, max: usize, batch: &mut Vec<SourceRecord>) -> Result<(), TaskError> {
        let Some(Open::Columnar(reader)) = self.reader.as_mut() else { return Ok(()) };
        let split = &mut self.splits[self.current];
        while batch.len() < max {
            let Some(read) = reader.next_record()? else { break };
            split.offset = read.number + 1;
            split.line = split.offset + 1;
            let origin = format!("{}, record {}", split.path, split.offset);
            batch.push(SourceRecord { origin: Some(origin), split: self.current as u64, row: Ok(read.row) });
        }
        Ok(())
    }

    /// Up to `max` records of the current JSON-lines file into `batch`.
    fn lines_batch(&mut self, max: usize, batch: &mut Vec<SourceRecord>) -> Result<(), TaskError> {
        let split = &mut self.splits[self.current];
        let Some(Open::Lines(reader)) = self.reader.as_mut() else { return Ok(()) };
        while batch.len() < max {
            self.buf.clear();
            let n = reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| TaskError::source(&split.path, format!("cannot read at byte {}: {e}", split.offset)))?;
            if n == 0 {
                break;
            }
            split.offset += n as u64;
            let origin = format!("{}:{}", split.path, split.line);
            split.line += 1;
            let row = match (self.buf.last() == Some(&b'\n'), std::str::from_utf8(&self.buf)) {
                // A line still being written, or a file that lacks its
                // last newline: not a whole record, and never dropped silently.
                (false, text) => Err(BadRecord {
                    origin: origin.clone(),
                    raw: text.map(str::to_string).unwrap_or_else(|_| String::from_utf8_lossy(&self.buf).into_owned()),
                    reason: UNTERMINATED.into(),
                }),
                (true, Ok(text)) => {
                    let text = text.trim_end_matches(['\n', '\r']);
                    if text.trim().is_empty() {
                        continue;
                    }
                    crate::record::parse_json_object(text, origin.clone())
                }
                (true, Err(e)) => Err(BadRecord {
                    origin: origin.clone(),
                    raw: String::from_utf8_lossy(&self.buf).trim_end().to_string(),
                    reason: format!("not UTF-8 text: {e}"),
                }),
            };
            batch.push(SourceRecord { origin: Some(origin), split: self.current as u64, row });
        }
        Ok(())
    }
}

impl Source<SourceRecord> for FileSource {
    fn poll_batch(&mut self, max: usize) -> Result<SourcePoll<SourceRecord>, TaskError> {
        while self.current < self.splits.len() {
            if self.reader.is_none() {
                self.open_current()?;
            }
            let mut batch = Vec::with_capacity(max.min(4096));
            match self.kind {
                FileKind::Csv(_) => self.csv_batch(max, &mut batch)?,
                FileKind::Columnar(_) => self.columnar_batch(max, &mut batch)?,
                FileKind::JsonLines => self.lines_batch(max, &mut batch)?,
            }
            let split = &mut self.splits[self.current];
            // A Parquet or Avro file is read whole before its first record:
            // its prefix is known from the start, once, even in a file
            // shorter than the prefix. A text file's grows with what was read.
            let columnar = matches!(self.kind, FileKind::Columnar(_));
            let growing = split.identity.is_some_and(|i| i.prefix_len < PREFIX_BYTES) && !columnar;
            if split.identity.is_none() || growing {
                let limit = if columnar { u64::MAX } else { split.offset };
                split.identity = Some(split.identify(limit)?);
            }
            if !batch.is_empty() {
                return Ok(SourcePoll::Batch(batch));
            }
            self.reader = None;
            self.current += 1;
        }
        Ok(SourcePoll::Exhausted)
    }

    /// Files are read one after another: only the current one is active,
    /// as in Flink's file source, which hands a reader one split at a time.
    fn active_splits(&self) -> Vec<u64> {
        if self.current < self.splits.len() {
            vec![self.current as u64]
        } else {
            Vec::new()
        }
    }

    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<Vec<u8>>, TaskError> {
        Ok(self.splits.iter().map(encode).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TaskContext {
        TaskContext::for_test("source")
    }

    /// Everything the source yields until it is exhausted: good rows' `n`, bad records' reasons.
    fn drain(source: &mut FileSource) -> Result<(Vec<i64>, Vec<String>), TaskError> {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        while let SourcePoll::Batch(batch) = source.poll_batch(2)? {
            for r in batch {
                match r.row {
                    Ok(row) => good.push(row["n"].as_i64().unwrap_or(-1)),
                    Err(b) => bad.push(format!("{}: {}", b.origin, b.reason)),
                }
            }
        }
        Ok((good, bad))
    }

    #[test]
    fn a_file_replaced_behind_the_restored_position_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        std::fs::write(&file, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").unwrap();
        let mut source = FileSource::new(&ctx(), "source", None, &file, FileKind::JsonLines).unwrap();
        let SourcePoll::Batch(first) = source.poll_batch(2).unwrap() else { panic!("no batch") };
        assert_eq!(first.len(), 2);
        let state = source.snapshot(1).unwrap();

        std::fs::write(&file, "{\"n\":7}\n{\"n\":8}\n{\"n\":9}\n").unwrap();
        let mut restored = FileSource::new(&ctx(), "source", Some(state.clone()), &file, FileKind::JsonLines).unwrap();
        let err = drain(&mut restored).unwrap_err().to_string();
        assert!(err.contains("was replaced"), "{err}");

        std::fs::write(&file, "{\"n\":1}\n").unwrap();
        let mut truncated = FileSource::new(&ctx(), "source", Some(state.clone()), &file, FileKind::JsonLines).unwrap();
        let err = drain(&mut truncated).unwrap_err().to_string();
        assert!(err.contains("shorter than the restored position"), "{err}");

        std::fs::write(&file, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n").unwrap();
        let mut appended = FileSource::new(&ctx(), "source", Some(state), &file, FileKind::JsonLines).unwrap();
        assert_eq!(drain(&mut appended).unwrap().0, vec![3, 4], "the same file, grown: resumes where it was");
    }

    #[test]
    fn an_unterminated_last_line_and_undecodable_bytes_are_bad_records_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        let mut bytes = b"{\"n\":1}\n".to_vec();
        bytes.extend_from_slice(b"{\"n\":\xff}\n{\"n\":3}\n{\"n\":4");
        std::fs::write(&file, bytes).unwrap();
        let mut source = FileSource::new(&ctx(), "source", None, &file, FileKind::JsonLines).unwrap();
        let (good, bad) = drain(&mut source).unwrap();
        assert_eq!(good, vec![1, 3]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].ends_with("in.jsonl:2: not UTF-8 text: invalid utf-8 sequence of 1 bytes from index 5"),
            "{bad:?}"
        );
        assert!(bad[1].contains("in.jsonl:4: the last line does not end in a newline"), "{bad:?}");
    }

    #[test]
    fn files_added_to_a_watched_directory_after_a_restore_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        let mut source = FileSource::new(&ctx(), "source", None, dir.path(), FileKind::JsonLines).unwrap();
        assert_eq!(drain(&mut source).unwrap().0, vec![1, 2]);
        let state = source.snapshot(1).unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "{\"n\":3}\n").unwrap();
        let mut restored = FileSource::new(&ctx(), "source", Some(state), dir.path(), FileKind::JsonLines).unwrap();
        assert_eq!(drain(&mut restored).unwrap().0, vec![3], "only the new file, nothing read twice");
    }
}
