//! Retained messages: one per topic, in a tree of topic levels so a wildcard subscription
//! walks only the branches it matches.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::memory::MemoryBudget;
use crate::model::{Message, Millis};

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    fn remove(&mut self, levels: &[&str]) -> Option<Arc<Message>> {
        let Some((first, rest)) = levels.split_first() else {
            return self.message.take();
        };
        let child = self.children.get_mut(*first)?;
        let removed = child.remove(rest);
        if child.is_empty() {
            self.children.remove(*first);
        }
        removed
    }

    fn collect(&self, levels: &[&str], root: bool, now: Millis, out: &mut Vec<Arc<Message>>) {
        let Some((first, rest)) = levels.split_first() else {
            out.extend(self.message.iter().filter(|m| !m.is_expired(now)).cloned());
            return;
        };
        // [MQTT-4.7.2-1] wildcards at the first level do not match `$` topics.
        let visible = |name: &str| !(root && name.starts_with('$'));
        match *first {
            "#" => {
                // `a/#` matches `a` itself.
                if !root {
                    out.extend(self.message.iter().filter(|m| !m.is_expired(now)).cloned());
                }
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect_all(now, out);
                    }
                }
            }
            "+" => {
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect(rest, false, now, out);
                    }
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.collect(rest, false, now, out);
                }
            }
        }
    }

    fn collect_all(&self, now: Millis, out: &mut Vec<Arc<Message>>) {
        out.extend(self.message.iter().filter(|m| !m.is_expired(now)).cloned());
        for child in self.children.values() {
            child.collect_all(now, out);
        }
    }

    fn sweep(&mut self, now: Millis) -> usize {
        let mut removed = 0;
        if self.message.as_ref().is_some_and(|m| m.is_expired(now)) {
            self.message = None;
            removed += 1;
        }
        self.children.retain(|_, child| {
            removed += child.sweep(now);
            !child.is_empty()
        });
        removed
    }
}

#[derive(Debug, Default)]
struct Tree {
    root: Node,
    count: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RetainedStore {
    tree: RwLock<Tree>,
    /// What the retained messages count against (`limits.max_memory`): each its
    /// footprint, from when it is stored until the last reference to it goes
    /// (`model::Charge`). The tree's nodes, one per topic level, are not counted.
    budget: Option<Arc<MemoryBudget>>,
}

impl RetainedStore {
    /// An empty store whose messages count against `budget`.
    pub fn with_budget(budget: Arc<MemoryBudget>) -> Self {
        Self {
            tree: RwLock::default(),
            budget: Some(budget),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The retained messages as the broker uses them: the seam where a cluster keeps them
/// cluster-wide (replicating updates to other nodes, or asking them at subscribe).
/// [`RetainedStore`] is the single node's, in memory.
pub trait Retained: Send + Sync + fmt::Debug {
    /// Stores `message` as the retained message of its topic, or deletes the topic's
    /// retained message when the payload is empty [MQTT-3.3.1-6] [MQTT-3.3.1-10].
    /// Returns the stored copy.
    fn update(&self, message: &Message) -> Option<Arc<Message>>;

    /// Retained messages matching a (non-shared) filter, skipping expired ones.
    fn matching(&self, filter: &str, now: Millis) -> Vec<Arc<Message>>;

    /// Number of retained messages.
    fn len(&self) -> usize;

    /// True when nothing is retained.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired messages; returns how many.
    fn sweep_expired(&self, now: Millis) -> usize;
}

impl Retained for RetainedStore {
    fn update(&self, message: &Message) -> Option<Arc<Message>> {
        let levels: Vec<&str> = message.topic.split('/').collect();
        if message.payload.is_empty() {
            let removed = {
                let mut tree = self.write();
                let removed = tree.root.remove(&levels);
                if removed.is_some() {
                    tree.count -= 1;
                }
                removed
            };
            // Dropped (and given back to the budget) after the lock.
            drop(removed);
            return None;
        }
        // The payload and correlation data may be slices of a connection's read buffer; a
        // retained message can live for months, so it must not keep that whole buffer
        // alive.
        let mut stored = Message {
            retain: true,
            ..message.compacted()
        };
        if let Some(budget) = &self.budget
            && stored.charge.ledger().is_none()
        {
            // Not counted yet (read back from the store at start).
            stored.charge = crate::model::Charge::new(budget, stored.footprint());
        }
        let stored = Arc::new(stored);
        let replaced = {
            let mut tree = self.write();
            let mut node = &mut tree.root;
            for level in &levels {
                node = node.children.entry((*level).into()).or_default();
            }
            let replaced = node.message.replace(stored.clone());
            if replaced.is_none() {
                tree.count += 1;
            }
            replaced
        };
        drop(replaced);
        Some(stored)
    }

    fn matching(&self, filter: &str, now: Millis) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        self.read().root.collect(&levels, true, now, &mut out);
        out
    }

    fn len(&self) -> usize {
        self.read().count
    }

    fn sweep_expired(&self, now: Millis) -> usize {
        let mut tree = self.write();
        let removed = tree.root.sweep(now);
        tree.count -= removed;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn msg(topic: &str, payload: &'static str) -> Message {
        Message::internal(
            topic.into(),
            Bytes::from_static(payload.as_bytes()),
            true,
            0,
        )
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = store
            .matching(filter, 0)
            .iter()
            .map(|m| m.topic.clone())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn stores_replaces_and_deletes_with_empty_payload() {
        let store = RetainedStore::default();
        store.update(&msg("a/b", "1"));
        store.update(&msg("a/b", "2"));
        assert_eq!(store.len(), 1);
        assert_eq!(store.matching("a/b", 0)[0].payload, "2");
        store.update(&msg("a/b", ""));
        assert_eq!(store.len(), 0);
        assert!(store.matching("a/b", 0).is_empty());
    }

    #[test]
    fn wildcards_match_like_subscriptions() {
        let store = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "x/b", "$SYS/up", "/lead"] {
            store.update(&msg(t, "v"));
        }
        assert_eq!(topics(&store, "#"), ["/lead", "a", "a/b", "a/b/c", "x/b"]);
        assert_eq!(topics(&store, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&store, "+/b"), ["a/b", "x/b"]);
        assert_eq!(topics(&store, "+"), ["a"]);
        assert_eq!(topics(&store, "+/+"), ["/lead", "a/b", "x/b"]);
        assert_eq!(topics(&store, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(topics(&store, "a/b/c/#"), ["a/b/c"]);
    }

    #[test]
    fn expired_messages_are_not_returned_and_are_swept() {
        let store = RetainedStore::default();
        let mut m = msg("t", "v");
        m.expires_at = Some(1_000);
        store.update(&m);
        assert_eq!(store.matching("t", 999).len(), 1);
        assert!(store.matching("t", 1_000).is_empty());
        assert_eq!(store.sweep_expired(1_000), 1);
        assert_eq!(store.len(), 0);
    }

    /// A connection's read buffer (64 KiB) with one PUBLISH's payload and correlation data
    /// sliced from it, as the decoder leaves them.
    fn message_in_read_buffer() -> (Bytes, Message) {
        let mut buffer = BytesMut::zeroed(64 * 1024);
        buffer[..5].copy_from_slice(b"hello");
        buffer[5..9].copy_from_slice(b"corr");
        let buffer = buffer.freeze();
        let mut message = Message::internal("t".into(), buffer.slice(0..5), true, 0);
        message.properties.correlation_data = Some(buffer.slice(5..9));
        (buffer, message)
    }

    #[test]
    fn retained_copy_keeps_nothing_of_the_read_buffer() {
        let store = RetainedStore::default();
        let (buffer, message) = message_in_read_buffer();
        store.update(&message);
        // The connection is done with its buffer and the routed message.
        drop(message);
        // Before: the stored copy's correlation data still pointed into the buffer.
        assert!(
            buffer.is_unique(),
            "a retained message pins the read buffer"
        );
        let stored = &store.matching("t", 0)[0];
        assert_eq!(stored.payload, "hello");
        assert_eq!(
            stored.properties.correlation_data.as_deref(),
            Some(&b"corr"[..])
        );
    }

    #[test]
    fn retained_messages_count_against_the_budget() {
        let budget = Arc::new(MemoryBudget::unlimited());
        let store = RetainedStore::with_budget(budget.clone());
        store.update(&msg("a", "12345"));
        let one = budget.used();
        assert_eq!(one, msg("a", "12345").footprint());
        // Replacing counts the difference; deleting and expiring give it all back.
        store.update(&msg("a", "1"));
        assert_eq!(budget.used(), one - 4);
        store.update(&msg("a", ""));
        assert_eq!(budget.used(), 0);
        let mut m = msg("b", "v");
        m.expires_at = Some(10);
        store.update(&m);
        assert!(budget.used() > 0);
        assert_eq!(store.sweep_expired(10), 1);
        assert_eq!(budget.used(), 0);
    }
}
