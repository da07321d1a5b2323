//! JSON-lines files as a bounded, replayable source: each file is a split
//! whose position is a byte offset.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::SourceRecord;
use crate::state::snapshot::{decode, encode};
use crate::task::source_task::{Source, SourcePoll};
use crate::task::{TaskContext, TaskError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileSplit {
    path: String,
    offset: u64,
    /// 1-based number of the next line, for error messages.
    line: u64,
}

pub struct FileSource {
    splits: Vec<FileSplit>,
    current: usize,
    reader: Option<BufReader<File>>,
    buf: String,
}

/// The files a `path` names: the file itself, or a directory's `*.jsonl`
/// and `*.json` files in name order.
pub fn list_input_files(path: &Path) -> Result<Vec<PathBuf>, TaskError> {
    let err = |e: std::io::Error| TaskError::source(&path.display().to_string(), format!("cannot read input: {e}"));
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl" || x == "json"))
            .collect();
        files.sort();
        Ok(files)
    } else {
        std::fs::metadata(path).map_err(err)?;
        Ok(vec![path.to_path_buf()])
    }
}

impl FileSource {
    pub fn new(ctx: &TaskContext, restored: Option<Vec<Vec<u8>>>, path: &Path) -> Result<FileSource, TaskError> {
        let splits = match restored {
            Some(entries) => entries.iter().map(|e| decode(e)).collect::<Result<_, _>>()?,
            None => list_input_files(path)?
                .into_iter()
                .enumerate()
                .filter(|(j, _)| *j as u32 % ctx.parallelism() == ctx.subtask())
                .map(|(_, p)| FileSplit { path: p.display().to_string(), offset: 0, line: 1 })
                .collect(),
        };
        Ok(FileSource { splits, current: 0, reader: None, buf: String::new() })
    }

    fn open_current(&mut self) -> Result<(), TaskError> {
        let split = &self.splits[self.current];
        let mut file =
            File::open(&split.path).map_err(|e| TaskError::source(&split.path, format!("cannot open: {e}")))?;
        file.seek(SeekFrom::Start(split.offset))
            .map_err(|e| TaskError::source(&split.path, format!("cannot seek to {}: {e}", split.offset)))?;
        self.reader = Some(BufReader::with_capacity(1 << 16, file));
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
            let split = &mut self.splits[self.current];
            let Some(reader) = self.reader.as_mut() else { break };
            while batch.len() < max {
                self.buf.clear();
                let n = reader.read_line(&mut self.buf).map_err(|e| {
                    TaskError::source(&split.path, format!("cannot read at byte {}: {e}", split.offset))
                })?;
                if n == 0 {
                    break;
                }
                split.offset += n as u64;
                let origin = format!("{}:{}", split.path, split.line);
                split.line += 1;
                let text = self.buf.trim_end_matches(['\n', '\r']);
                if text.trim().is_empty() {
                    continue;
                }
                let row = crate::record::parse_json_object(text, origin.clone());
                batch.push(SourceRecord { origin: Some(origin), row });
            }
            if !batch.is_empty() {
                return Ok(SourcePoll::Batch(batch));
            }
            self.reader = None;
            self.current += 1;
        }
        Ok(SourcePoll::Exhausted)
    }

    fn snapshot(&mut self) -> Result<Vec<Vec<u8>>, TaskError> {
        Ok(self.splits.iter().map(encode).collect::<Result<_, _>>()?)
    }
}
