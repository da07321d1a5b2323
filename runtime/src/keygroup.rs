//! Key groups: the unit in which keyed state is partitioned and moved.
//!
//! A key hashes to one of `max_parallelism` key groups; subtask `i` of `p`
//! owns a contiguous range of them (Flink's assignment), so changing `p`
//! moves whole key groups between subtasks and never splits one.

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// An inclusive range of key groups owned by one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}

impl KeyGroupRange {
    /// The range subtask `subtask` of `parallelism` owns out of `max_parallelism` groups.
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, subtask: u32) -> KeyGroupRange {
        let (m, p, i) = (max_parallelism as u64, parallelism as u64, subtask as u64);
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p;
        KeyGroupRange { start: start as u16, end: end as u16 }
    }

    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            (self.end - self.start) as usize + 1
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, group: u16) -> bool {
        group >= self.start && group <= self.end
    }

    pub fn overlaps(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// A stable 64-bit hash of a key: the same in every process and run, which
/// a key group assignment stored in checkpoints requires.
pub fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    // FxHash's low bits are weak for small integers; finish with a mixer.
    mix64(h.finish())
}

/// The key group of a key hash.
pub fn key_group_of_hash(hash: u64, max_parallelism: u32) -> u16 {
    ((hash >> 16) % max_parallelism as u64) as u16
}

/// Which of `parallelism` subtasks owns `group`.
pub fn subtask_for_key_group(group: u16, max_parallelism: u32, parallelism: u32) -> usize {
    (group as usize * parallelism as usize) / max_parallelism as usize
}

/// SplitMix64's finaliser: a cheap bijective mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_U64: [u16; 6] = [0, 80, 79, 23, 71, 127];
    const PINNED_STR: [u16; 3] = [60, 11, 65];

    #[test]
    fn subtask_ranges_cover_every_key_group_once() {
        for m in [1u32, 7, 128, 1000] {
            for p in 1..=m.min(17) {
                let mut next = 0u32;
                for i in 0..p {
                    let r = KeyGroupRange::for_subtask(m, p, i);
                    assert_eq!(r.start as u32, next, "m={m} p={p} i={i}");
                    for g in r.start..=r.end {
                        assert_eq!(subtask_for_key_group(g, m, p), i as usize, "m={m} p={p} g={g}");
                    }
                    next = r.end as u32 + 1;
                }
                assert_eq!(next, m);
            }
        }
    }

    #[test]
    fn key_groups_of_known_keys_never_change() {
        // Checkpoints store state by key group: a change of hash function
        // would silently orphan every existing checkpoint's state.
        let groups: Vec<u16> = (0u64..6).map(|k| key_group_of_hash(key_hash(&k), 128)).collect();
        let names: Vec<u16> =
            ["k0", "k1", "user-42"].iter().map(|k| key_group_of_hash(key_hash(&k.to_string()), 128)).collect();
        assert_eq!((groups, names), (PINNED_U64.to_vec(), PINNED_STR.to_vec()));
    }

    #[test]
    fn keys_spread_over_key_groups() {
        let spread: std::collections::HashSet<u16> =
            (0u64..1000).map(|k| key_group_of_hash(key_hash(&k), 128)).collect();
        assert!(spread.len() > 120, "keys cluster in {} groups", spread.len());
    }
}
