//! A map for the common case of one or a few entries: a session usually has one or two
//! subscriptions and a filter one or two subscribers, and a `HashMap` spends ~180 bytes
//! on its table for a single entry. Up to [`SMALL`] entries live in a `Vec` searched
//! linearly (the exact size, one allocation); beyond that, a boxed `HashMap`.
//! Iteration order is unspecified, as for a `HashMap`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map;
use std::hash::Hash;

/// Entries kept in the `Vec` before switching to a `HashMap`.
const SMALL: usize = 8;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SmallMap<K, V>(Repr<K, V>);

#[derive(Debug, Clone)]
enum Repr<K, V> {
    Small(Vec<(K, V)>),
    /// Boxed so the map is a `Vec`'s 24 bytes where it sits inline (every trie node).
    #[allow(clippy::box_collection)]
    Large(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self(Repr::Small(Vec::new()))
    }
}

impl<K: Hash + Eq, V> SmallMap<K, V> {
    /// An empty map; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match &mut self.0 {
            Repr::Small(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(old, value));
                }
                if v.len() == SMALL {
                    let mut map: HashMap<K, V> = v.drain(..).collect();
                    map.insert(key, value);
                    self.0 = Repr::Large(Box::new(map));
                } else {
                    // The first entry gets an allocation of exactly one, not Vec's four.
                    if v.is_empty() {
                        v.reserve_exact(1);
                    }
                    v.push((key, value));
                }
                None
            }
            Repr::Large(m) => m.insert(key, value),
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &mut self.0 {
            Repr::Small(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = v.swap_remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                }
                Some(value)
            }
            Repr::Large(m) => {
                let value = m.remove(key)?;
                // Back to the Vec at half the threshold, so a size hovering around the
                // threshold does not convert on every insert and remove.
                if m.len() <= SMALL / 2 {
                    let mut v = Vec::with_capacity(m.len());
                    v.extend(m.drain());
                    self.0 = Repr::Small(v);
                }
                Some(value)
            }
        }
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &self.0 {
            Repr::Small(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            Repr::Large(m) => m.get(key),
        }
    }

    /// The value for `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &mut self.0 {
            Repr::Small(v) => v
                .iter_mut()
                .find(|(k, _)| (*k).borrow() == key)
                .map(|(_, v)| v),
            Repr::Large(m) => m.get_mut(key),
        }
    }

    /// The value for `key`, inserted from `make` (the owned key and the value) when there
    /// is none.
    pub fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.contains_key(key) {
            let (owned, value) = make();
            self.insert(owned, value);
        }
        self.get_mut(key)
            .expect("the entry is there: found, or inserted just now")
    }

    /// True when `key` has an entry.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Entries, in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.0 {
            Repr::Small(v) => Iter::Small(v.iter()),
            Repr::Large(m) => Iter::Large(m.iter()),
        }
    }

    /// Keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// Borrowing iterator of a [`SmallMap`].
#[derive(Debug)]
pub enum Iter<'a, K, V> {
    /// Over the `Vec`.
    Small(std::slice::Iter<'a, (K, V)>),
    /// Over the `HashMap`.
    Large(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(i) => i.next().map(|(k, v)| (k, v)),
            Iter::Large(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Small(i) => i.size_hint(),
            Iter::Large(i) => i.size_hint(),
        }
    }
}

impl<'a, K: Hash + Eq, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Owning iterator of a [`SmallMap`].
#[derive(Debug)]
pub enum IntoIter<K, V> {
    /// Over the `Vec`.
    Small(std::vec::IntoIter<(K, V)>),
    /// Over the `HashMap`.
    Large(hash_map::IntoIter<K, V>),
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Small(i) => i.next(),
            IntoIter::Large(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            IntoIter::Small(i) => i.size_hint(),
            IntoIter::Large(i) => i.size_hint(),
        }
    }
}

impl<K, V> IntoIterator for SmallMap<K, V> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Repr::Small(v) => IntoIter::Small(v.into_iter()),
            Repr::Large(m) => IntoIter::Large(m.into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_small<K, V>(m: &SmallMap<K, V>) -> bool {
        matches!(m.0, Repr::Small(_))
    }

    fn sorted(m: &SmallMap<String, u32>) -> Vec<(String, u32)> {
        let mut all: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        all
    }

    #[test]
    fn insert_replaces_and_remove_returns_the_value() {
        let mut m = SmallMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert("a".to_owned(), 1), None);
        assert_eq!(m.insert("b".to_owned(), 2), None);
        assert_eq!(m.insert("a".to_owned(), 3), Some(1));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some(&3));
        assert!(m.contains_key("b"));
        assert!(!m.contains_key("c"));
        assert_eq!(m.remove("c"), None);
        assert_eq!(m.remove("a"), Some(3));
        assert_eq!(m.get("a"), None);
        assert_eq!(sorted(&m), vec![("b".to_owned(), 2)]);
        assert_eq!(m.remove("b"), Some(2));
        assert!(m.is_empty());
    }

    #[test]
    fn one_entry_allocates_room_for_one() {
        let mut m = SmallMap::new();
        m.insert(1u64, 1u64);
        let Repr::Small(v) = &m.0 else {
            panic!("one entry is small")
        };
        assert_eq!(v.capacity(), 1);
    }

    #[test]
    fn switches_to_a_hash_map_past_the_threshold_and_back() {
        let mut m = SmallMap::new();
        for i in 0..SMALL as u32 {
            m.insert(format!("k{i}"), i);
        }
        assert!(is_small(&m));
        // Replacing at the threshold does not switch.
        assert_eq!(m.insert("k0".to_owned(), 100), Some(0));
        assert!(is_small(&m));
        m.insert("k8".to_owned(), 8);
        assert!(!is_small(&m));
        assert_eq!(m.len(), SMALL + 1);
        assert_eq!(m.insert("k8".to_owned(), 80), Some(8));
        let expected: Vec<_> = (0..=SMALL as u32)
            .map(|i| {
                let v = match i {
                    0 => 100,
                    8 => 80,
                    i => i,
                };
                (format!("k{i}"), v)
            })
            .collect();
        assert_eq!(sorted(&m), expected);

        // Removing down to half the threshold goes back to the Vec with every entry.
        for i in 0..(SMALL / 2) as u32 {
            assert!(!is_small(&m));
            assert!(m.remove(format!("k{i}").as_str()).is_some());
        }
        assert!(!is_small(&m));
        assert_eq!(m.remove("k4"), Some(4));
        assert!(is_small(&m));
        assert_eq!(m.len(), SMALL / 2);
        assert_eq!(
            sorted(&m),
            vec![
                ("k5".to_owned(), 5),
                ("k6".to_owned(), 6),
                ("k7".to_owned(), 7),
                ("k8".to_owned(), 80)
            ]
        );
        assert_eq!(m.get("k8"), Some(&80));
        assert_eq!(m.insert("k5".to_owned(), 50), Some(5));
        assert_eq!(m.len(), SMALL / 2);
    }

    #[test]
    fn collects_and_iterates_owned_in_both_forms() {
        for n in [0u32, 3, 20] {
            let m: SmallMap<u32, u32> = (0..n).map(|i| (i, i * 2)).chain([(0, 7)]).collect();
            assert_eq!(m.len(), n.max(1) as usize);
            assert_eq!(m.keys().count(), m.len());
            assert_eq!(m.values().count(), m.len());
            let mut owned: Vec<_> = m.into_iter().collect();
            owned.sort();
            let mut expected: Vec<_> = (0..n).map(|i| (i, i * 2)).collect();
            if expected.is_empty() {
                expected.push((0, 7));
            } else {
                expected[0].1 = 7;
            }
            assert_eq!(owned, expected);
        }
    }

    /// In both forms: an entry is made once, and changed in place after.
    #[test]
    fn get_or_insert_with_makes_an_entry_once_and_get_mut_changes_it() {
        for n in [0usize, 20] {
            let mut m: SmallMap<Box<str>, u32> =
                (0..n).map(|i| (i.to_string().into(), 0)).collect();
            let mut made = 0;
            for _ in 0..3 {
                *m.get_or_insert_with("k", || {
                    made += 1;
                    ("k".into(), 10)
                }) += 1;
            }
            assert_eq!(made, 1);
            assert_eq!(m.get("k"), Some(&13));
            *m.get_mut("k").unwrap() = 5;
            assert_eq!(m.get("k"), Some(&5));
            assert_eq!(m.get_mut("absent"), None);
            assert_eq!(m.len(), n + 1);
        }
    }

    #[test]
    fn arc_str_keys_are_looked_up_by_str() {
        let mut m: SmallMap<std::sync::Arc<str>, u8> = SmallMap::new();
        m.insert("client".into(), 1);
        assert_eq!(m.get("client"), Some(&1));
        assert_eq!(m.remove("client"), Some(1));
        assert!(m.is_empty());
    }
}
