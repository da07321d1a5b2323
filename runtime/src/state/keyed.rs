//! Keyed state of one operator subtask: a hash table per owned key group.
//!
//! A snapshot copies the tables (a memcpy-like clone for plain state) while
//! the task waits, then encodes them on a blocking thread while the task
//! goes on processing; this is Flink's heap backend's synchronous/async
//! split without its copy-on-write tables, which would cost every update.
//!
//! The tables are hashbrown's raw `HashTable`, not a `HashMap`: the key's
//! hash is computed once for both its key group and its slot, and a key
//! is cloned only when it is new, where `HashMap::entry` clones it on every
//! access (an allocation per record for string keys).

use std::hash::Hash;

use hashbrown::HashTable;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::snapshot::{decode, encode, CodecError};
use crate::keygroup::{key_group_of_hash, key_hash, KeyGroupRange};

type StateTable<K, S> = HashTable<(K, S)>;

pub struct KeyedStateBackend<K, S> {
    range: KeyGroupRange,
    max_parallelism: u32,
    groups: Vec<StateTable<K, S>>,
}

/// A copy of keyed state taken at a barrier, to be encoded off the task.
pub struct KeyedSnapshot<K, S> {
    range: KeyGroupRange,
    groups: Vec<StateTable<K, S>>,
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
        KeyedStateBackend { range, max_parallelism, groups: (0..range.len()).map(|_| HashTable::new()).collect() }
    }

    /// Restores from encoded key groups; groups outside the range are ignored.
    pub fn restore<'a>(&mut self, blobs: impl IntoIterator<Item = (u16, &'a [u8])>) -> Result<(), CodecError> {
        for (group, bytes) in blobs {
            if !self.range.contains(group) {
                continue;
            }
            let entries: Vec<(K, S)> = decode(bytes)?;
            let table = &mut self.groups[(group - self.range.start) as usize];
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

    fn table_mut(&mut self, hash: u64) -> Option<&mut StateTable<K, S>> {
        let i = self.index(hash)?;
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
        self.groups[self.index(hash)?].find(slot_hash(hash), |(k, _)| k == key).map(|(_, s)| s)
    }

    /// Drops the state of `key`, so keys that are done cost nothing.
    pub fn remove(&mut self, key: &K) -> Option<S> {
        let hash = key_hash(key);
        let table = self.table_mut(hash)?;
        let found = table.find_entry(slot_hash(hash), |(k, _)| k == key).ok()?;
        Some(found.remove().0 .1)
    }

    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.groups.iter().flat_map(|g| g.iter().map(|(k, s)| (k, s)))
    }

    /// The synchronous part of a snapshot.
    pub fn snapshot(&self) -> KeyedSnapshot<K, S> {
        KeyedSnapshot { range: self.range, groups: self.groups.clone() }
    }
}

impl<K: Serialize, S: Serialize> KeyedSnapshot<K, S> {
    /// The asynchronous part: one encoded blob per non-empty key group.
    pub fn encode(self) -> Result<Vec<(u16, Vec<u8>)>, CodecError> {
        let mut out = Vec::new();
        for (i, map) in self.groups.into_iter().enumerate() {
            if map.is_empty() {
                continue;
            }
            let entries: Vec<(K, S)> = map.into_iter().collect();
            out.push((self.range.start + i as u16, encode(&entries)?));
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
        let blobs: Vec<(u16, Vec<u8>)> = old.iter().flat_map(|b| b.snapshot().encode().unwrap()).collect();
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
