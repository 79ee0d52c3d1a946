//! Giving back the room a table or queue grew to at a peak. Rust's collections keep their
//! capacity when entries leave, so a table that held a storm's worth of entries would hold
//! its memory for good (a storm of 1,000 connections left the store writer's message index
//! at 0.67 MB and the router's copy table at 0.41 MB, both nearly empty).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Tables with room for this many entries or fewer keep it: shrinking them saves little.
const KEEP_UP_TO: usize = 1024;

/// The capacity a collection of `len` entries with room for `capacity` (more than
/// `keep_up_to`) shrinks to once it is at most a quarter full: room for twice its entries.
/// It cannot thrash: growing back takes doubling, shrinking again another quartering.
fn shrunk(len: usize, capacity: usize, keep_up_to: usize) -> Option<usize> {
    (capacity > keep_up_to && len <= capacity / 4).then_some(len * 2)
}

/// A collection that can give back room it no longer needs.
pub trait ShrinkSparse {
    /// Shrinks the collection if it has room for more than `keep_up_to` entries and is at
    /// most a quarter full. Cheap when it is not: two loads and a comparison.
    fn shrink_sparse_above(&mut self, keep_up_to: usize);

    /// [`ShrinkSparse::shrink_sparse_above`] for tables: those with room for
    /// [`KEEP_UP_TO`] entries or fewer keep it.
    fn shrink_sparse(&mut self) {
        self.shrink_sparse_above(KEEP_UP_TO);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> ShrinkSparse for HashMap<K, V, S> {
    fn shrink_sparse_above(&mut self, keep_up_to: usize) {
        if let Some(to) = shrunk(self.len(), self.capacity(), keep_up_to) {
            self.shrink_to(to);
        }
    }
}

impl<K: Eq + Hash, S: BuildHasher> ShrinkSparse for HashSet<K, S> {
    fn shrink_sparse_above(&mut self, keep_up_to: usize) {
        if let Some(to) = shrunk(self.len(), self.capacity(), keep_up_to) {
            self.shrink_to(to);
        }
    }
}

impl<T> ShrinkSparse for VecDeque<T> {
    fn shrink_sparse_above(&mut self, keep_up_to: usize) {
        if let Some(to) = shrunk(self.len(), self.capacity(), keep_up_to) {
            self.shrink_to(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_emptied_after_a_peak_gives_its_room_back() {
        let mut map: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        let peak = map.capacity();
        map.retain(|k, _| *k < 10);
        map.shrink_sparse();
        assert!(
            map.capacity() <= 2 * KEEP_UP_TO,
            "{} of {peak}",
            map.capacity()
        );
        assert_eq!(map.len(), 10);
        assert_eq!(map.get(&9), Some(&9));

        let mut set: HashSet<u64> = (0..100_000).collect();
        set.retain(|k| *k < 3_000);
        set.shrink_sparse();
        assert!(
            set.capacity() >= 6_000 && set.capacity() < 12_000,
            "{}",
            set.capacity()
        );
        assert!(set.contains(&2_999));
    }

    #[test]
    fn small_or_well_filled_tables_keep_their_room() {
        let mut small: HashMap<u64, u64> = (0..800).map(|i| (i, i)).collect();
        small.clear();
        let before = small.capacity();
        small.shrink_sparse();
        assert_eq!(small.capacity(), before);

        let mut full: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        full.retain(|k, _| *k < 40_000);
        let before = full.capacity();
        full.shrink_sparse();
        assert_eq!(full.capacity(), before, "40 % full is not sparse");
    }

    #[test]
    fn a_shrunk_table_keeps_its_room_until_it_is_sparse_again() {
        let mut map: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 5_000);
        map.shrink_sparse();
        let shrunk_to = map.capacity();
        assert!((10_000..20_000).contains(&shrunk_to), "{shrunk_to}");
        // Just over a quarter full: kept.
        let keep = (shrunk_to / 4 + 10) as u64;
        map.retain(|k, _| *k < keep);
        let before = map.capacity();
        map.shrink_sparse();
        assert_eq!(map.capacity(), before);
        assert_eq!(map.len(), keep as usize);
        assert!((0..keep).all(|k| map.get(&k) == Some(&k)));
    }
}
