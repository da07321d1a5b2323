//! Flink's state primitives for the current key. A keyed process function
//! declares its per-key state as a struct of these; the whole struct is
//! looked up once per record, which is cheaper than one lookup per state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One value per key (Flink's `ValueState`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueState<T>(Option<T>);

impl<T> Default for ValueState<T> {
    fn default() -> Self {
        ValueState(None)
    }
}

impl<T> ValueState<T> {
    pub fn value(&self) -> Option<&T> {
        self.0.as_ref()
    }
    pub fn update(&mut self, v: T) {
        self.0 = Some(v);
    }
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// A list per key (Flink's `ListState`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListState<T>(Vec<T>);

impl<T> Default for ListState<T> {
    fn default() -> Self {
        ListState(Vec::new())
    }
}

impl<T> ListState<T> {
    pub fn add(&mut self, v: T) {
        self.0.push(v);
    }
    pub fn get(&self) -> &[T] {
        &self.0
    }
    pub fn update(&mut self, values: Vec<T>) {
        self.0 = values;
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A map per key (Flink's `MapState`); ordered so snapshots are deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapState<K: Ord, V>(BTreeMap<K, V>);

impl<K: Ord, V> Default for MapState<K, V> {
    fn default() -> Self {
        MapState(BTreeMap::new())
    }
}

impl<K: Ord, V> MapState<K, V> {
    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.get(k)
    }
    pub fn put(&mut self, k: K, v: V) {
        self.0.insert(k, v);
    }
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.0.remove(k)
    }
    pub fn contains(&self, k: &K) -> bool {
        self.0.contains_key(k)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter()
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}
