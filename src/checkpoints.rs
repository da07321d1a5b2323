//! `weir checkpoints`: what is in a job's checkpoint directory.

use std::io::Write;

use anyhow::Context;
use weir_runtime::checkpoint::{CheckpointError, CheckpointStore, Ledger};

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Where `weir checkpoints list` looks: a job directory, or the job of a manifest.
pub enum Target {
    Uri(String),
    Manifest(std::path::PathBuf),
}

pub async fn list(target: Target) -> anyhow::Result<()> {
    let (store, uri) = match target {
        Target::Uri(uri) => (CheckpointStore::open_dir(&uri)?, uri),
        Target::Manifest(path) => {
            let job = weir_runtime::manifest::StreamJob::from_file(&path)?;
            let store = CheckpointStore::open(
                &job.spec.checkpoints.storage,
                job.metadata.namespace_or_default(),
                &job.metadata.name,
            )?;
            let uri = store.location().to_string();
            (store, uri)
        }
    };
    let ids = store.checkpoint_ids().await?;
    let mut out = std::io::stdout().lock();
    if ids.is_empty() {
        // Perhaps a storage root (what a manifest names): say which jobs are under it.
        let jobs = CheckpointStore::jobs_under(&uri).await.unwrap_or_default();
        if jobs.is_empty() {
            writeln!(out, "no checkpoints under {uri}")?;
        } else {
            writeln!(out, "no checkpoints directly under {uri}; it holds the checkpoints of these jobs:")?;
            for job in jobs {
                writeln!(out, "  {job}    (weir checkpoints list {}/{job})", uri.trim_end_matches('/'))?;
            }
        }
        return Ok(());
    }
    let committed = Ledger::read(&store).await?;
    writeln!(out, "{:>12}  {:<11}  {:<24}  {:>8}  {:>12}", "ID", "STATE", "COMPLETED", "MS", "BYTES")?;
    for id in ids {
        match store.read_metadata(id).await {
            // Written by an attempt that was superseded before it committed.
            Ok(_) if !committed.admits(id) => writeln!(out, "{id:>12}  {:<11}", "uncommitted"),
            Ok(m) => writeln!(
                out,
                "{:>12}  {:<11}  {:<24}  {:>8}  {:>12}",
                id,
                "completed",
                time(m.completed_at_ms),
                m.duration_ms,
                m.size_bytes()
            ),
            Err(CheckpointError::MissingMetadata { .. }) => writeln!(out, "{id:>12}  {:<11}", "incomplete"),
            Err(e) => writeln!(out, "{id:>12}  {:<11}  {e}", "damaged"),
        }?;
    }
    Ok(())
}

pub async fn inspect(uri: &str, id: u64) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = CheckpointStore::open_dir(uri)?;
    let m = store.read_metadata(id).await.with_context(|| format!("cannot inspect checkpoint {id}"))?;
    let verdict = match store.load_verified(id, &weir_runtime::checkpoint::Keep::Everything).await {
        Ok(_) => "intact (every file matches its size and checksum)".to_string(),
        Err(e) => format!("DAMAGED: {e}"),
    };
    writeln!(out, "checkpoint {id} of job {}", m.job)?;
    writeln!(out, "  path:            {}", store.path_of(id))?;
    writeln!(out, "  triggered:       {}", time(m.triggered_at_ms))?;
    writeln!(out, "  completed:       {}", time(m.completed_at_ms))?;
    writeln!(out, "  duration:        {} ms", m.duration_ms)?;
    writeln!(out, "  size:            {} bytes", m.size_bytes())?;
    writeln!(out, "  maxParallelism:  {}", m.max_parallelism)?;
    writeln!(out, "  verification:    {verdict}")?;
    for op in &m.operators {
        writeln!(out, "  operator {} (parallelism {})", op.uid, op.parallelism)?;
        for f in &op.files {
            writeln!(
                out,
                "    subtask {:>3}  key groups {:>5}-{:<5}  {:>10} bytes  crc32 {:08x}  {}",
                f.subtask, f.key_groups.start, f.key_groups.end, f.size, f.crc32, f.name
            )?;
        }
    }
    Ok(())
}

/// Copies the newest committed checkpoint whose every file matches its
/// `_metadata` to `savepoints/sp-<ms>`; a damaged newer one is passed over
/// with a note. It is a consistent point of the job: the output after it
/// was never committed.
pub async fn savepoint(uri: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = CheckpointStore::open_dir(uri)?;
    let committed = Ledger::read(&store).await?;
    for id in store.checkpoint_ids().await? {
        if !committed.admits(id) {
            continue;
        }
        match store.load_verified(id, &weir_runtime::checkpoint::Keep::Everything).await {
            Ok(_) => {}
            Err(e @ CheckpointError::Io { .. }) => return Err(e).context(format!("cannot read checkpoint {id}")),
            Err(e) => {
                writeln!(out, "passing over checkpoint {id}: {e}")?;
                continue;
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        let path = store.copy_to_savepoint(id, now).await.with_context(|| format!("cannot copy checkpoint {id}"))?;
        let line = format!("savepoint of checkpoint {id} at {path}");
        writeln!(out, "{line}")?;
        // In a pod, the operator reads this as the container's termination
        // message; elsewhere the file does not exist and is not made.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/termination-log") {
            let _ = f.write_all(line.as_bytes());
        }
        return Ok(());
    }
    anyhow::bail!("no committed, intact checkpoint under {uri} to make a savepoint of")
}

/// Deletes the named savepoints of the job at `uri`; one already gone is
/// no error (a disposal pod may run twice).
pub async fn dispose(uri: &str, names: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = CheckpointStore::open_dir(uri)?;
    let mut deleted = 0;
    for name in names {
        if store.delete_savepoint(name).await.with_context(|| format!("cannot dispose of savepoint {name}"))? {
            deleted += 1;
        }
    }
    let line = format!("disposed of {deleted} savepoint(s) under {uri}/savepoints: {}", names.join(", "));
    writeln!(out, "{line}")?;
    Ok(())
}

pub async fn purge(uri: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = CheckpointStore::open_dir(uri)?;
    let (checkpoints, savepoints) = store.purge().await.with_context(|| format!("cannot purge {uri}"))?;
    writeln!(out, "purged {uri}: {checkpoints} checkpoint(s), {savepoints} savepoint(s)")?;
    Ok(())
}
