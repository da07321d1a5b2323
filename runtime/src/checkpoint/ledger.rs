//! The ledger: which attempt of a job may commit checkpoints, and which
//! checkpoints were committed.
//!
//! Two attempts of one job can be alive at once: a node cut off from the
//! cluster keeps its coordinator and workers running while the operator
//! starts their replacements elsewhere, and both reach the checkpoint
//! storage. A lease checked before a commit leaves a window between the
//! check and the commit, so the commit itself is the check: every attempt
//! and every committed checkpoint is an entry of one append-only log in the
//! job's directory, `_ledger/<seq>`, each created only if its name is free
//! ([`CheckpointStore::create_new`]: a hard link on a local file system,
//! `If-None-Match: *` on S3). An attempt joins by appending an entry, and
//! commits checkpoint N by appending the entry right after its own newest
//! one. If that name is taken, another attempt joined since: this one is
//! superseded, commits nothing more, and its sinks are never told to
//! commit. Whatever it wrote after that stays uncommitted: a restore
//! trusts only checkpoints the ledger lists (and those older than the
//! ledger itself, for jobs that ran before it existed).
//!
//! Entries of checkpoints that retention deleted are trimmed, so the
//! ledger stays a few files long.
//!
//! An attempt's entry also names the incarnation it writes under when it
//! starts without a checkpoint of its own. An attempt killed before its
//! first checkpoint completed leaves staged output (prepared transactions,
//! open Kafka transactions, staged files) that no checkpoint names; the
//! next attempt that starts fresh carries on under that incarnation, so its
//! sinks find those leftovers by their names and roll them back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as SyncMutex};

use opendal::ErrorKind;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::CheckpointError;
use super::metadata::CheckpointMetadata;
use super::store::{CheckpointStore, Created};

pub const LEDGER_DIR: &str = "_ledger";
/// How often a join retries when another attempt appends at the same time.
const JOIN_TRIES: u32 = 20;

/// The newest entry this process appended: (seq, epoch). A process that
/// restarts in place may join again only if nobody appended after it.
pub type LedgerSlot = Arc<SyncMutex<Option<(u64, u64)>>>;

/// One ledger file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Entry {
    seq: u64,
    /// The appending attempt's epoch, as state file names carry it.
    epoch: String,
    /// The checkpoint committed; absent: an attempt joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<u64>,
    /// Checkpoints below this id were written before the ledger began and
    /// count as committed when their `_metadata` is there.
    legacy_below: u64,
    at_ms: u64,
    /// On an attempt's entry: the incarnation it writes under if it starts
    /// without a checkpoint of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
}

fn entry_path(seq: u64) -> String {
    format!("{LEDGER_DIR}/{seq:020}")
}

fn epoch_tag(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// The incarnation the newest attempt in `entries` would start fresh
/// under, if it committed no checkpoint: then everything it wrote is
/// uncommitted, and whoever carries on under its incarnation can find it.
/// An attempt that committed may have output that a checkpoint covers
/// but no sink committed yet; that is the restore's to finish, not a
/// fresh start's to roll back.
fn uncommitted_incarnation(entries: &[Entry]) -> Option<u64> {
    let newest = entries.iter().rev().find(|e| e.checkpoint.is_none())?;
    if entries.iter().any(|e| e.checkpoint.is_some() && e.epoch == newest.epoch) {
        return None;
    }
    u64::from_str_radix(newest.incarnation.as_deref()?, 16).ok().filter(|i| *i != 0)
}

/// Which checkpoints may be restored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// Committed checkpoint -> the epoch that committed it; `None`: the
    /// storage keeps no ledger, every complete checkpoint counts.
    ids: Option<BTreeMap<u64, String>>,
    legacy_below: u64,
}

impl Committed {
    /// Every complete checkpoint counts (no ledger).
    pub fn everything() -> Committed {
        Committed::default()
    }

    /// Whether checkpoint `id` was committed (or predates the ledger).
    pub fn admits(&self, id: u64) -> bool {
        match &self.ids {
            None => true,
            Some(ids) => id < self.legacy_below || ids.contains_key(&id),
        }
    }

    /// Why `meta` is not the `_metadata` the ledger committed, if it is not:
    /// written by another epoch than the committing one.
    pub fn mismatch(&self, meta: &CheckpointMetadata) -> Option<String> {
        let committer = self.ids.as_ref()?.get(&meta.id)?;
        let writer = epoch_tag(meta.epoch);
        (meta.epoch != 0 && *committer != writer)
            .then(|| format!("its _metadata was written by attempt {writer}, the ledger committed attempt {committer}"))
    }
}

#[derive(Debug)]
struct State {
    /// Seq of this attempt's newest entry; `None`: no ledger.
    seq: Option<u64>,
    committed: Committed,
    /// Committed checkpoint -> seq of its entry, for trimming.
    seqs: BTreeMap<u64, u64>,
}

impl State {
    /// No ledger: nothing is fenced, every complete checkpoint counts.
    fn unfenced() -> State {
        State { seq: None, committed: Committed::everything(), seqs: BTreeMap::new() }
    }
}

/// One attempt's place in its job's ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: CheckpointStore,
    epoch: u64,
    fresh_incarnation: u64,
    slot: LedgerSlot,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl Ledger {
    /// Joins the ledger of `store`'s job as the attempt of `epoch`. `slot`
    /// holds this process's newest entry, if it appended before: then it
    /// joins only if nobody else appended since (`Superseded` otherwise).
    /// `drawn` is the incarnation to start fresh under unless the attempt
    /// before committed nothing ([`Ledger::fresh_incarnation`]).
    pub async fn join(
        store: &CheckpointStore,
        epoch: u64,
        drawn: u64,
        slot: &LedgerSlot,
    ) -> Result<Ledger, CheckpointError> {
        let previous = *slot.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..JOIN_TRIES {
            let entries = read_entries(store).await?;
            let inherited = uncommitted_incarnation(&entries);
            let fresh = inherited.unwrap_or(drawn);
            if let Some((own_seq, own_epoch)) = previous {
                let foreign = entries.iter().find(|e| e.seq > own_seq && e.epoch != epoch_tag(own_epoch));
                if let Some(e) = foreign {
                    return Err(superseded(store, epoch, e));
                }
            }
            let legacy_below = legacy_below(store, &entries).await?;
            let seq = entries.last().map_or(1, |e| e.seq + 1);
            let entry = Entry {
                seq,
                epoch: epoch_tag(epoch),
                checkpoint: None,
                legacy_below,
                at_ms: crate::job::coordinate::wall_ms(),
                incarnation: Some(epoch_tag(fresh)),
            };
            match append(store, &entry).await? {
                Created::Created => {
                    info!(seq, epoch = %epoch_tag(epoch), "joined the checkpoint ledger at entry {seq}");
                    if let Some(i) = inherited {
                        info!(incarnation = %epoch_tag(i), "the attempt before committed no checkpoint: \
                            a fresh start carries on under its incarnation and cleans up what it staged");
                    }
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, epoch));
                    let (committed, seqs) = committed_by(&entries, legacy_below);
                    let state = State { seq: Some(seq), committed, seqs };
                    return Ok(Ledger::with(store, epoch, fresh, slot, state));
                }
                Created::Exists if previous.is_some() => {
                    let taken = read_entry(store, seq).await?;
                    return Err(superseded(store, epoch, &taken));
                }
                Created::Exists => continue,
                Created::Unsupported => {
                    warn!(
                        location = store.location(),
                        "this checkpoint storage cannot create a file only if it is absent: \
                         a stale attempt of this job (a process cut off, then back) is not fenced"
                    );
                    let state = State::unfenced();
                    return Ok(Ledger::with(store, epoch, drawn, slot, state));
                }
            }
        }
        Err(CheckpointError::LedgerBusy { path: store.full(LEDGER_DIR), tries: JOIN_TRIES })
    }

    /// What the ledger of `store`'s job commits, read without joining it
    /// (tools that only look).
    pub async fn read(store: &CheckpointStore) -> Result<Committed, CheckpointError> {
        let entries = read_entries(store).await?;
        let legacy_below = legacy_below(store, &entries).await?;
        let (committed, _) = committed_by(&entries, legacy_below);
        Ok(committed)
    }

    /// A ledger that fences nothing and admits every checkpoint (tests of
    /// the loop's own behaviour).
    #[cfg(test)]
    pub(crate) fn unfenced(store: &CheckpointStore) -> Ledger {
        let state = State::unfenced();
        Ledger::with(store, 0, 0, &LedgerSlot::default(), state)
    }

    fn with(store: &CheckpointStore, epoch: u64, fresh_incarnation: u64, slot: &LedgerSlot, state: State) -> Ledger {
        let state = Arc::new(tokio::sync::Mutex::new(state));
        Ledger { store: store.clone(), epoch, fresh_incarnation, slot: slot.clone(), state }
    }

    /// The incarnation this attempt writes under if it has no checkpoint
    /// of its own to restore: that of the attempt before, if it committed
    /// nothing, else the one drawn at the join.
    pub fn fresh_incarnation(&self) -> u64 {
        self.fresh_incarnation
    }

    /// The checkpoints a restore may use, as of the join and this attempt's commits.
    pub async fn committed(&self) -> Committed {
        self.state.lock().await.committed.clone()
    }

    /// Commits checkpoint `id` (its `_metadata` is written): appends the
    /// entry after this attempt's newest. `Superseded` when another attempt
    /// holds that name; then nothing of this attempt may be committed.
    pub async fn commit(&self, id: u64) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().await;
        let Some(mut seq) = state.seq else { return Ok(()) };
        let own = epoch_tag(self.epoch);
        loop {
            seq += 1;
            let legacy_below = state.committed.legacy_below;
            let entry = Entry {
                seq,
                epoch: own.clone(),
                checkpoint: Some(id),
                legacy_below,
                at_ms: crate::job::coordinate::wall_ms(),
                incarnation: None,
            };
            let found = match append(&self.store, &entry).await? {
                Created::Created => {
                    // The name was free, but it may have been freed by a
                    // newer attempt's trim: then the base is above it.
                    let base = list(&self.store).await?.base;
                    if seq < base {
                        let _ = self.store.op.delete(&entry_path(seq)).await;
                        return Err(CheckpointError::Superseded {
                            epoch: own,
                            by: format!("a newer attempt that trimmed the ledger past entry {seq}"),
                            path: self.store.full(&base_path(base)),
                        });
                    }
                    crate::faults::stop_point(crate::faults::StopPoint::LedgerCommitted);
                    entry
                }
                Created::Unsupported => entry,
                Created::Exists => read_entry(&self.store, seq).await?,
            };
            if found.epoch != own {
                return Err(superseded(&self.store, self.epoch, &found));
            }
            // Ours: this commit, or an earlier one whose wait timed out
            // after its entry was written.
            state.seq = Some(seq);
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, self.epoch));
            if let Some(committed) = found.checkpoint {
                if let Some(ids) = state.committed.ids.as_mut() {
                    ids.insert(committed, own.clone());
                }
                state.seqs.insert(committed, seq);
                if committed == id {
                    return Ok(());
                }
            }
        }
    }

    /// Deletes the entries before that of the oldest checkpoint still kept
    /// (`oldest_kept`), the newest entry never.
    pub async fn trim(&self, oldest_kept: u64) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().await;
        let Some(tail) = state.seq else { return Ok(()) };
        let floor = state.seqs.range(oldest_kept..).next().map_or(tail, |(_, seq)| *seq).min(tail);
        let listing = list(&self.store).await?;
        if listing.base >= floor {
            return Ok(());
        }
        // The base goes first: an entry a stale attempt re-creates in the
        // trimmed range is below it, and nobody takes it for valid.
        create(&self.store, &base_path(floor), b"{}".to_vec()).await?;
        let gone = listing.seqs.iter().filter(|s| **s < floor).map(|s| entry_path(*s));
        let old_bases = listing.bases.iter().filter(|b| **b < floor).map(|b| base_path(*b));
        for path in gone.chain(old_bases) {
            self.store.op.delete(&path).await.map_err(|source| CheckpointError::Io {
                action: "delete",
                path: self.store.full(&path),
                source: Box::new(source),
            })?;
        }
        let gone: Vec<u64> = state.seqs.iter().filter(|(_, seq)| **seq < floor).map(|(id, _)| *id).collect();
        for id in gone {
            state.seqs.remove(&id);
            if let Some(ids) = state.committed.ids.as_mut() {
                ids.remove(&id);
            }
        }
        Ok(())
    }
}

/// Where the ledger began: carried in every entry; for a ledger not begun
/// yet, above every checkpoint already in storage.
async fn legacy_below(store: &CheckpointStore, entries: &[Entry]) -> Result<u64, CheckpointError> {
    match entries.last() {
        Some(e) => Ok(e.legacy_below),
        None => Ok(store.checkpoint_ids().await?.first().map_or(1, |newest| newest + 1)),
    }
}

/// The checkpoints `entries` commit, and the seq of each one's entry.
fn committed_by(entries: &[Entry], legacy_below: u64) -> (Committed, BTreeMap<u64, u64>) {
    let mut ids = BTreeMap::new();
    let mut seqs = BTreeMap::new();
    for e in entries {
        if let Some(id) = e.checkpoint {
            ids.insert(id, e.epoch.clone());
            seqs.insert(id, e.seq);
        }
    }
    (Committed { ids: Some(ids), legacy_below }, seqs)
}

fn superseded(store: &CheckpointStore, epoch: u64, by: &Entry) -> CheckpointError {
    CheckpointError::Superseded { epoch: epoch_tag(epoch), by: by.epoch.clone(), path: store.full(&entry_path(by.seq)) }
}

async fn append(store: &CheckpointStore, entry: &Entry) -> Result<Created, CheckpointError> {
    let path = entry_path(entry.seq);
    let bytes = serde_json::to_vec(entry)
        .map_err(|e| CheckpointError::BadLedgerEntry { path: store.full(&path), reason: e.to_string() })?;
    create(store, &path, bytes).await
}

async fn create(store: &CheckpointStore, path: &str, bytes: Vec<u8>) -> Result<Created, CheckpointError> {
    store.create_new(path, bytes, None).await
}

/// The ledger's files: entry seqs, oldest first, and the base, below
/// which entries were trimmed (a re-created one there is not valid).
struct Listing {
    seqs: Vec<u64>,
    base: u64,
    bases: Vec<u64>,
}

impl Listing {
    /// Entries at or above the base, oldest first.
    fn valid(&self) -> impl Iterator<Item = u64> + '_ {
        self.seqs.iter().copied().filter(|s| *s >= self.base)
    }
}

fn base_path(base: u64) -> String {
    format!("{LEDGER_DIR}/base-{base:020}")
}

async fn list(store: &CheckpointStore) -> Result<Listing, CheckpointError> {
    let listed = match store.op.list(&format!("{LEDGER_DIR}/")).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Listing { seqs: Vec::new(), base: 0, bases: Vec::new() })
        }
        Err(source) => {
            return Err(CheckpointError::Io { action: "list", path: store.full(LEDGER_DIR), source: Box::new(source) })
        }
    };
    // Temporary files of a create cut short have a suffix and do not parse.
    let parse = |name: &str| (name.len() == 20).then(|| name.parse::<u64>().ok()).flatten();
    let mut seqs: Vec<u64> = listed.iter().filter_map(|e| parse(e.name())).collect();
    seqs.sort_unstable();
    let bases: Vec<u64> = listed.iter().filter_map(|e| e.name().strip_prefix("base-").and_then(parse)).collect();
    let base = bases.iter().copied().max().unwrap_or(0);
    Ok(Listing { seqs, base, bases })
}

#[cfg(test)]
async fn entry_seqs(store: &CheckpointStore) -> Result<Vec<u64>, CheckpointError> {
    Ok(list(store).await?.valid().collect())
}

async fn read_entry(store: &CheckpointStore, seq: u64) -> Result<Entry, CheckpointError> {
    let path = entry_path(seq);
    let bytes = store.op.read(&path).await.map_err(|source| CheckpointError::Io {
        action: "read",
        path: store.full(&path),
        source: Box::new(source),
    })?;
    let entry: Entry = serde_json::from_slice(&bytes.to_vec())
        .map_err(|e| CheckpointError::BadLedgerEntry { path: store.full(&path), reason: e.to_string() })?;
    if entry.seq != seq {
        let reason = format!("it says it is entry {}", entry.seq);
        return Err(CheckpointError::BadLedgerEntry { path: store.full(&path), reason });
    }
    Ok(entry)
}

/// Every entry, oldest first. An entry trimmed between the listing and
/// the read is passed over.
async fn read_entries(store: &CheckpointStore) -> Result<Vec<Entry>, CheckpointError> {
    let mut entries = Vec::new();
    for seq in list(store).await?.valid() {
        match read_entry(store, seq).await {
            Ok(entry) => entries.push(entry),
            Err(CheckpointError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testing::{store, write_checkpoint};

    fn slot() -> LedgerSlot {
        LedgerSlot::default()
    }

    #[tokio::test]
    async fn an_attempt_that_another_joined_after_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let old = Ledger::join(&store, 1, 0x100 + 1, &slot()).await.unwrap();
        old.commit(1).await.unwrap();
        let new = Ledger::join(&store, 2, 0x100 + 2, &slot()).await.unwrap();
        assert!(new.committed().await.admits(1), "what the old attempt committed before is restorable");
        let err = old.commit(2).await.unwrap_err();
        assert!(matches!(&err, CheckpointError::Superseded { by, .. } if by.contains(&epoch_tag(2))), "{err}");
        assert!(err.to_string().contains("superseded"), "{err}");
        new.commit(2).await.unwrap();
        let after = Ledger::join(&store, 3, 0x100 + 3, &slot()).await.unwrap().committed().await;
        assert!(after.admits(1) && after.admits(2));
        assert!(!after.admits(3), "nothing committed checkpoint 3");
    }

    #[tokio::test]
    async fn a_process_restarting_in_place_rejoins_unless_another_attempt_joined_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mine = slot();
        Ledger::join(&store, 1, 0x100 + 1, &mine).await.unwrap().commit(1).await.unwrap();
        let again = Ledger::join(&store, 2, 0x100 + 2, &mine).await.unwrap();
        again.commit(2).await.unwrap();
        Ledger::join(&store, 9, 0x100 + 9, &slot()).await.unwrap();
        let err = Ledger::join(&store, 3, 0x100 + 3, &mine).await.unwrap_err();
        assert!(matches!(&err, CheckpointError::Superseded { by, .. } if by.contains(&epoch_tag(9))), "{err}");
    }

    #[tokio::test]
    async fn a_commit_whose_entry_landed_after_its_wait_gave_up_is_taken_as_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ledger = Ledger::join(&store, 1, 0x100 + 1, &slot()).await.unwrap();
        // The entry of checkpoint 1 is there, the ledger never heard back.
        let landed =
            Entry { seq: 2, epoch: epoch_tag(1), checkpoint: Some(1), legacy_below: 1, at_ms: 0, incarnation: None };
        assert_eq!(append(&store, &landed).await.unwrap(), Created::Created);
        ledger.commit(2).await.unwrap();
        let committed = ledger.committed().await;
        assert!(committed.admits(1) && committed.admits(2));
        assert_eq!(entry_seqs(&store).await.unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn checkpoints_from_before_the_ledger_count_and_later_uncommitted_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_checkpoint(&store, 4, b"x").await;
        let ledger = Ledger::join(&store, 1, 0x100 + 1, &slot()).await.unwrap();
        write_checkpoint(&store, 5, b"y").await;
        let committed = ledger.committed().await;
        assert!(committed.admits(4), "written before the ledger began");
        assert!(!committed.admits(5), "written after, never committed");
        let mut foreign = store.read_metadata(4).await.unwrap();
        foreign.epoch = 7;
        assert!(committed.mismatch(&foreign).is_none(), "a legacy checkpoint has no committer to differ from");
        ledger.commit(6).await.unwrap();
        foreign.id = 6;
        assert!(ledger.committed().await.mismatch(&foreign).is_some());
    }

    #[tokio::test]
    async fn trimming_keeps_the_entries_of_kept_checkpoints_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ledger = Ledger::join(&store, 1, 0x100 + 1, &slot()).await.unwrap();
        for id in 1..=5 {
            ledger.commit(id).await.unwrap();
        }
        ledger.trim(4).await.unwrap();
        assert_eq!(entry_seqs(&store).await.unwrap(), vec![5, 6]);
        let rejoined = Ledger::join(&store, 2, 0x100 + 2, &slot()).await.unwrap().committed().await;
        assert!(rejoined.admits(4) && rejoined.admits(5) && !rejoined.admits(3));
        ledger.trim(99).await.unwrap();
        assert_eq!(entry_seqs(&store).await.unwrap(), vec![6, 7], "this attempt's newest entry stays");
    }

    #[tokio::test]
    async fn an_attempt_whose_next_entry_a_newer_one_trimmed_away_still_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let old = Ledger::join(&store, 1, 0x100 + 1, &slot()).await.unwrap();
        old.commit(1).await.unwrap();
        let new = Ledger::join(&store, 2, 0x100 + 2, &slot()).await.unwrap();
        for id in 2..=4 {
            new.commit(id).await.unwrap();
        }
        // Retention keeps checkpoints 3 and 4: the entries before them go,
        // the old attempt's and the new one's join among them.
        new.trim(3).await.unwrap();
        assert_eq!(entry_seqs(&store).await.unwrap(), vec![5, 6]);
        let err = old.commit(5).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Superseded { .. }), "{err}");
        assert_eq!(entry_seqs(&store).await.unwrap(), vec![5, 6], "its re-created entry is gone again");
        let committed = Ledger::read(&store).await.unwrap();
        assert!(committed.admits(3) && committed.admits(4) && !committed.admits(5));
    }

    #[tokio::test]
    async fn a_fresh_start_carries_on_the_incarnation_of_an_attempt_that_committed_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert_eq!(Ledger::join(&store, 1, 0xa, &slot()).await.unwrap().fresh_incarnation(), 0xa);
        // Killed before its first checkpoint: the next two carry on under it.
        assert_eq!(Ledger::join(&store, 2, 0xb, &slot()).await.unwrap().fresh_incarnation(), 0xa);
        let third = Ledger::join(&store, 3, 0xc, &slot()).await.unwrap();
        assert_eq!(third.fresh_incarnation(), 0xa);
        third.commit(1).await.unwrap();
        assert_eq!(
            Ledger::join(&store, 4, 0xd, &slot()).await.unwrap().fresh_incarnation(),
            0xd,
            "an attempt that committed a checkpoint hands on nothing"
        );
    }

    #[tokio::test]
    async fn a_ledger_entry_written_before_incarnations_were_recorded_hands_on_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let old = br#"{"seq":1,"epoch":"0000000000000001","legacyBelow":1,"atMs":0}"#.to_vec();
        assert_eq!(create(&store, &entry_path(1), old).await.unwrap(), Created::Created);
        assert_eq!(Ledger::join(&store, 2, 0xb, &slot()).await.unwrap().fresh_incarnation(), 0xb);
    }

    #[tokio::test]
    async fn concurrent_joins_each_get_their_own_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let joins = (1..=8).map(|epoch| {
            let store = store.clone();
            tokio::spawn(async move { Ledger::join(&store, epoch, 0x100 + epoch, &slot()).await.map(|_| ()) })
        });
        for join in futures::future::join_all(joins).await {
            join.unwrap().unwrap();
        }
        assert_eq!(entry_seqs(&store).await.unwrap(), (1..=8).collect::<Vec<_>>());
    }
}
