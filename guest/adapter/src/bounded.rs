//! A map that keeps at most `capacity` entries, evicting the oldest first: the shape of every
//! cache in the kit. Keys come from what the runtime verified, never straight from a request,
//! so a fixed hash seed is safe (an attacker cannot choose keys that collide).

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    capacity: usize,
    map: HashMap<K, V, foldhash::fast::FixedState>,
    order: VecDeque<K>,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded { capacity: 0, map: HashMap::default(), order: VecDeque::new() }
    }
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Bounded { capacity, ..Bounded::default() }
    }

    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    /// Keeps `value` under `key` unless the key is held or the capacity is 0; returns how many
    /// old entries made room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> u64 {
        if self.capacity == 0 || self.map.contains_key(&key) {
            return 0;
        }
        self.map.insert(key.clone(), value);
        self.order.push_back(key);
        let mut evicted = 0;
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
                evicted += 1;
            }
        }
        evicted
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}
