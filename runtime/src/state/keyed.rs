//! Keyed state of one operator subtask: a hash table per owned key group.
//!
//! A snapshot freezes the tables (one per key group) instead of copying
//! them: the synchronous part of a checkpoint moves each table into an
//! `Arc` the snapshot shares, which costs the same for a kilobyte of state
//! as for gigabytes. The encoder, on a blocking thread, lets go of each
//! table once it is encoded. The task takes a frozen table back on its
//! first access to that key group: without a copy if the encoder is done
//! with it, else as a copy of that one group (copy-on-write per key group,
//! where Flink's heap backend copies per entry). The hot path pays one
//! branch on a flag per access.
//!
//! The tables are hashbrown's raw `HashTable`, not a `HashMap`: the key's
//! hash is computed once for both its key group and its slot, and a key
//! is cloned only when it is new, where `HashMap::entry` clones it on every
//! access (an allocation per record for string keys).

use std::hash::Hash;
use std::sync::Arc;

use hashbrown::HashTable;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::snapshot::{decode, encode, CodecError};
use crate::keygroup::{key_group_of_hash, key_hash, KeyGroupRange};

type StateTable<K, S> = HashTable<(K, S)>;

pub struct KeyedStateBackend<K, S> {
    range: KeyGroupRange,
    max_parallelism: u32,
    /// The live table of each key group; empty while the group is frozen.
    groups: Vec<StateTable<K, S>>,
    /// Tables handed to a snapshot and not touched since.
    frozen: Vec<Option<Arc<StateTable<K, S>>>>,
}

/// Keyed state as of a barrier, to be encoded off the task: the frozen
/// tables, shared with the backend until either lets go.
pub struct KeyedSnapshot<K, S> {
    range: KeyGroupRange,
    groups: Vec<Arc<StateTable<K, S>>>,
}

/// A table serialized as the sequence of its entries, as a `Vec<(K, S)>`
/// would be, without collecting one.
struct Entries<'a, K, S>(&'a StateTable<K, S>);

impl<K: Serialize, S: Serialize> Serialize for Entries<'_, K, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// The hash a key's slot is found by. Every key of a key group shares the
/// bits [`key_group_of_hash`] reads (16 and up); rotated, those bits sit
/// where no table of a realistic size looks.
fn slot_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

fn slot_of<K: Hash, S>(entry: &(K, S)) -> u64 {
    slot_hash(key_hash(&entry.0))
}

impl<K, S> KeyedStateBackend<K, S>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    S: Default + Clone + Serialize + DeserializeOwned,
{
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Self {
        let groups = (0..range.len()).map(|_| HashTable::new()).collect();
        KeyedStateBackend { range, max_parallelism, groups, frozen: (0..range.len()).map(|_| None).collect() }
    }

    /// Takes group `i`'s table back from the snapshot it was frozen for:
    /// the table itself once the snapshot let go of it, else a copy.
    #[cold]
    fn thaw(&mut self, i: usize) {
        if let Some(shared) = self.frozen[i].take() {
            self.groups[i] = Arc::try_unwrap(shared).unwrap_or_else(|still| (*still).clone());
        }
    }

    /// Group `i`'s table, frozen or not, for reading.
    fn table(&self, i: usize) -> &StateTable<K, S> {
        self.frozen[i].as_deref().unwrap_or(&self.groups[i])
    }

    /// Restores from encoded key groups; groups outside the range are ignored.
    pub fn restore<'a>(&mut self, blobs: impl IntoIterator<Item = (u16, &'a [u8])>) -> Result<(), CodecError> {
        for (group, bytes) in blobs {
            if !self.range.contains(group) {
                continue;
            }
            let entries: Vec<(K, S)> = decode(bytes)?;
            let i = (group - self.range.start) as usize;
            self.thaw(i);
            let table = &mut self.groups[i];
            table.reserve(entries.len(), slot_of);
            for (key, state) in entries {
                let hash = slot_hash(key_hash(&key));
                match table.find_mut(hash, |(k, _)| *k == key) {
                    Some(slot) => slot.1 = state,
                    None => {
                        table.insert_unique(hash, (key, state), slot_of);
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the table of the key group of `hash` is, if this subtask owns it.
    fn index(&self, hash: u64) -> Option<usize> {
        let group = key_group_of_hash(hash, self.max_parallelism);
        self.range.contains(group).then(|| (group - self.range.start) as usize)
    }

    #[inline]
    fn table_mut(&mut self, hash: u64) -> Option<&mut StateTable<K, S>> {
        let i = self.index(hash)?;
        if self.frozen[i].is_some() {
            self.thaw(i);
        }
        Some(&mut self.groups[i])
    }

    /// The state of `key`, created empty on first use. `None` when the key
    /// does not belong to this subtask, which means records were routed wrongly.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut S> {
        let hash = key_hash(key);
        let table = self.table_mut(hash)?;
        let slot = slot_hash(hash);
        let entry = match table.find_entry(slot, |(k, _)| k == key) {
            Ok(found) => found,
            Err(absent) => {
                let table = absent.into_table();
                table.insert_unique(slot, (key.clone(), S::default()), slot_of)
            }
        };
        Some(&mut entry.into_mut().1)
    }

    /// The state of `key` if it has any, without creating it.
    pub fn get_existing_mut(&mut self, key: &K) -> Option<&mut S> {
        let hash = key_hash(key);
        let table = self.table_mut(hash)?;
        table.find_mut(slot_hash(hash), |(k, _)| k == key).map(|(_, s)| s)
    }

    pub fn get(&self, key: &K) -> Option<&S> {
        let hash = key_hash(key);
        self.table(self.index(hash)?).find(slot_hash(hash), |(k, _)| k == key).map(|(_, s)| s)
    }

    /// Drops the state of `key`, so keys that are done cost nothing.
    pub fn remove(&mut self, key: &K) -> Option<S> {
        let hash = key_hash(key);
        let table = self.table_mut(hash)?;
        let found = table.find_entry(slot_hash(hash), |(k, _)| k == key).ok()?;
        Some(found.remove().0 .1)
    }

    pub fn len(&self) -> usize {
        (0..self.groups.len()).map(|i| self.table(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        (0..self.groups.len()).flat_map(|i| self.table(i).iter().map(|(k, s)| (k, s)))
    }

    /// The synchronous part of a snapshot: every table is frozen (a group
    /// untouched since the last snapshot is frozen already) and shared.
    pub fn snapshot(&mut self) -> KeyedSnapshot<K, S> {
        let groups = self
            .frozen
            .iter_mut()
            .zip(&mut self.groups)
            .map(|(frozen, live)| frozen.get_or_insert_with(|| Arc::new(std::mem::take(live))).clone())
            .collect();
        KeyedSnapshot { range: self.range, groups }
    }
}

impl<K: Serialize, S: Serialize> KeyedSnapshot<K, S> {
    /// The asynchronous part: one encoded blob per non-empty key group.
    pub fn encode(self) -> Result<Vec<(u16, Vec<u8>)>, CodecError> {
        let mut out = Vec::new();
        for (i, table) in self.groups.into_iter().enumerate() {
            if !table.is_empty() {
                out.push((self.range.start + i as u16, encode(&Entries(&table))?));
            }
            // Dropped here: the task takes this group back without a copy.
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redistributes_key_groups_when_parallelism_changes() {
        let m = 16;
        let mut old: Vec<KeyedStateBackend<u64, u64>> =
            (0..2).map(|i| KeyedStateBackend::new(KeyGroupRange::for_subtask(m, 2, i), m)).collect();
        for key in 0..1000u64 {
            let owner = old.iter_mut().find_map(|b| b.get_mut(&key)).unwrap();
            *owner = key * 10;
        }
        let blobs: Vec<(u16, Vec<u8>)> = old.iter_mut().flat_map(|b| b.snapshot().encode().unwrap()).collect();
        let mut new: Vec<KeyedStateBackend<u64, u64>> =
            (0..3).map(|i| KeyedStateBackend::new(KeyGroupRange::for_subtask(m, 3, i), m)).collect();
        for b in &mut new {
            b.restore(blobs.iter().map(|(g, v)| (*g, v.as_slice()))).unwrap();
        }
        assert_eq!(new.iter().map(|b| b.len()).sum::<usize>(), 1000);
        for key in 0..1000u64 {
            let values: Vec<u64> = new.iter().filter_map(|b| b.get(&key).copied()).collect();
            assert_eq!(values, vec![key * 10], "key {key}");
        }
    }

    fn restored(blobs: Vec<(u16, Vec<u8>)>) -> KeyedStateBackend<u64, u64> {
        let mut b = KeyedStateBackend::new(KeyGroupRange::for_subtask(16, 1, 0), 16);
        b.restore(blobs.iter().map(|(g, v)| (*g, v.as_slice()))).unwrap();
        b
    }

    #[test]
    fn a_snapshot_holds_the_state_of_its_barrier_while_the_task_goes_on_updating() {
        let mut b: KeyedStateBackend<u64, u64> = KeyedStateBackend::new(KeyGroupRange::for_subtask(16, 1, 0), 16);
        for key in 0..1000u64 {
            *b.get_mut(&key).unwrap() = key;
        }
        let at_barrier = b.snapshot();
        for key in 0..1000u64 {
            *b.get_mut(&key).unwrap() += 1;
        }
        b.remove(&7);
        let again = b.snapshot();
        let first = restored(at_barrier.encode().unwrap());
        let second = restored(again.encode().unwrap());
        assert_eq!((first.len(), second.len(), b.len()), (1000, 999, 999));
        for key in 0..1000u64 {
            assert_eq!(first.get(&key), Some(&key), "as of the first barrier");
            let now = (key != 7).then_some(key + 1);
            assert_eq!(second.get(&key).copied(), now, "as of the second");
            assert_eq!(b.get(&key).copied(), now, "live");
        }
    }

    #[test]
    fn a_group_the_encoder_let_go_of_is_taken_back_without_a_copy_and_an_untouched_one_is_not_copied_at_all() {
        let mut b: KeyedStateBackend<u64, u64> = KeyedStateBackend::new(KeyGroupRange::for_subtask(16, 1, 0), 16);
        for key in 0..1000u64 {
            *b.get_mut(&key).unwrap() = key;
        }
        let address = |b: &KeyedStateBackend<u64, u64>, key: u64| b.get(&key).unwrap() as *const u64;
        let before = address(&b, 1);
        // Untouched between two snapshots, a group is shared by both.
        let (first, second) = (b.snapshot(), b.snapshot());
        assert_eq!(address(&b, 1), before, "reading a frozen group reads it in place");
        assert_eq!(first.encode().unwrap(), second.encode().unwrap());
        *b.get_mut(&1).unwrap() += 1;
        assert_eq!(address(&b, 1), before, "the table came back, not a copy of it");
        // Touched while a snapshot still holds it: that group is copied.
        let held = b.snapshot();
        *b.get_mut(&1).unwrap() += 1;
        assert_ne!(address(&b, 1), before, "copied, the snapshot keeps the original");
        assert_eq!(restored(held.encode().unwrap()).get(&1), Some(&2));
        assert_eq!(b.get(&1), Some(&3));
    }

    #[test]
    fn refuses_a_key_of_another_subtask() {
        let m = 16;
        let mut b: KeyedStateBackend<u64, u64> = KeyedStateBackend::new(KeyGroupRange::for_subtask(m, 2, 0), m);
        let foreign = (0..100u64)
            .find(|k| !KeyGroupRange::for_subtask(m, 2, 0).contains(key_group_of_hash(key_hash(k), m)))
            .unwrap();
        assert!(b.get_mut(&foreign).is_none());
    }
}
