//! The subscription trie: one node per filter level, with `+` and `#` children kept apart
//! from literal levels so matching a topic touches only the branches that can match.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use midge_proto::SubscriptionOptions;

use super::snapshot::{Snapshot, Subscriber, SubscriberSet};
use crate::mailbox::Mailbox;
use crate::small_map::SmallMap;

/// A match found by [`Trie::collect`].
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) identifier: Option<u32>,
    /// The full `$share/{group}/{filter}` for a shared-subscription target.
    pub(crate) shared: Option<Arc<str>>,
}

impl Target {
    /// A plain subscription's target.
    pub(crate) fn plain(s: &Subscriber) -> Self {
        Self {
            mailbox: s.mailbox.clone(),
            options: s.options,
            identifier: s.identifier,
            shared: None,
        }
    }

    /// A shared group member's target (`full_filter`: the group's `$share/...`).
    fn member(s: &Subscriber, full_filter: &Arc<str>) -> Self {
        Self {
            shared: Some(full_filter.clone()),
            ..Self::plain(s)
        }
    }
}

/// What [`Trie::collect`] found: targets one by one, and the plain subscriptions of
/// filters with [`SNAPSHOT_FROM`] or more as whole [`Snapshot`]s.
#[derive(Debug, Default)]
pub(crate) struct Matches {
    pub(crate) targets: Vec<Target>,
    pub(crate) sets: Vec<Snapshot>,
}

impl Matches {
    /// Every target, the snapshots' subscriptions as plain targets (for tests and the
    /// merging of overlapping subscriptions).
    pub(crate) fn into_targets(self) -> Vec<Target> {
        let mut targets = self.targets;
        for set in &self.sets {
            targets.extend(set.iter().map(Target::plain));
        }
        targets
    }
}

/// Which subscriptions a match collects: a cluster node delivers to its shared groups
/// apart from its plain subscriptions (see `cluster::shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Plain subscriptions and one member of each shared group: a single node.
    All,
    /// Plain subscriptions only.
    Plain,
    /// One member of each shared group only.
    Shared,
}

/// How a shared group picks its member for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShareStrategy {
    RoundRobin,
    Random,
}

#[derive(Debug)]
struct SharedGroup {
    /// `$share/{group}/{filter}`, carried on deliveries for hand-over.
    full_filter: Arc<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Picks the next member in turn, preferring connected ones so a message does not wait
    /// in an offline member's queue while another member could take it.
    fn pick(&self, strategy: ShareStrategy, random: u64) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = match strategy {
            ShareStrategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            ShareStrategy::Random => (random % n as u64) as usize,
        };
        let online = (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.mailbox.is_online());
        online.or(Some(&self.members[start]))
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Boxed nodes: the map's table (sized for growth) then holds pointers, not nodes.
    /// A `SmallMap`: most nodes have no child or one (every leaf of a filter is a node),
    /// and a `HashMap` is 48 bytes where this is 24.
    children: SmallMap<Box<str>, Box<Node>>,
    plus: Option<Box<Node>>,
    /// Subscribers of `<this level>/#`.
    hash: Option<Box<Subscribers>>,
    /// Subscribers of the filter that ends at this node.
    here: Subscribers,
}

/// A filter's plain subscriptions are matched as one shared slice (a [`Snapshot`]) from
/// this many on: routing a message to them then costs one reference count, not one per
/// subscriber.
pub(crate) const SNAPSHOT_FROM: usize = 64;

#[derive(Debug, Default)]
struct Subscribers {
    direct: SmallMap<Arc<str>, Subscriber>,
    /// Boxed: few filters have shared groups or many subscribers, and this sits in every
    /// trie node (8 bytes where an empty map would be 48). Present exactly when there are
    /// shared groups or at least [`SNAPSHOT_FROM`] plain subscribers.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    /// Shared groups by name.
    groups: HashMap<Box<str>, SharedGroup>,
    /// `direct` as a [`Snapshot`], once a match built it (only from [`SNAPSHOT_FROM`]).
    snapshot: OnceLock<Snapshot>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.extra.is_none()
    }

    /// After a change to `direct` or the groups: drops the snapshot, and keeps `extra`
    /// only where it is needed.
    fn changed(&mut self) {
        let large = self.direct.len() >= SNAPSHOT_FROM;
        match &mut self.extra {
            Some(extra) if large || !extra.groups.is_empty() => {
                extra.snapshot = OnceLock::new();
            }
            Some(_) => self.extra = None,
            None if large => self.extra = Some(Box::default()),
            None => {}
        }
    }

    fn groups(&self) -> impl Iterator<Item = &SharedGroup> {
        self.extra.iter().flat_map(|extra| extra.groups.values())
    }

    /// Returns how many plain subscription sets added targets (0 or 1).
    fn collect(
        &self,
        strategy: ShareStrategy,
        random: u64,
        reach: Reach,
        out: &mut Matches,
    ) -> usize {
        let mut plain_sets = 0;
        if reach != Reach::Shared && !self.direct.is_empty() {
            plain_sets = 1;
            if let Some(extra) = self.extra.as_ref()
                && self.direct.len() >= SNAPSHOT_FROM
            {
                let snapshot = extra.snapshot.get_or_init(|| {
                    Arc::new(self.direct.values().cloned().collect::<SubscriberSet>())
                });
                out.sets.push(snapshot.clone());
            } else {
                out.targets.extend(self.direct.values().map(Target::plain));
            }
        }
        if reach == Reach::Plain {
            return plain_sets;
        }
        for group in self.groups() {
            if let Some(s) = group.pick(strategy, random) {
                out.targets.push(Target::member(s, &group.full_filter));
            }
        }
        plain_sets
    }

    /// Adds or replaces; returns true if the client already had this subscription.
    fn insert(&mut self, group: Option<(&str, &str)>, subscriber: Subscriber) -> bool {
        let client = subscriber.mailbox.client_id().clone();
        match group {
            None => {
                let existed = self.direct.insert(client, subscriber).is_some();
                self.changed();
                existed
            }
            Some((name, full_filter)) => {
                let group = self
                    .extra
                    .get_or_insert_default()
                    .groups
                    .entry(name.into())
                    .or_insert_with(|| SharedGroup {
                        full_filter: full_filter.into(),
                        members: Vec::new(),
                        next: AtomicUsize::new(0),
                    });
                match group
                    .members
                    .iter_mut()
                    .find(|m| m.mailbox.client_id() == &client)
                {
                    Some(existing) => {
                        *existing = subscriber;
                        true
                    }
                    None => {
                        group.members.push(subscriber);
                        false
                    }
                }
            }
        }
    }

    fn remove(
        &mut self,
        group: Option<&str>,
        client_id: &str,
        only: Option<&Arc<Mailbox>>,
    ) -> bool {
        let matches = |s: &Subscriber| only.is_none_or(|m| Arc::ptr_eq(m, &s.mailbox));
        match group {
            None => {
                if !self.direct.get(client_id).is_some_and(matches) {
                    return false;
                }
                let removed = self.direct.remove(client_id).is_some();
                self.changed();
                removed
            }
            Some(name) => {
                let Some(extra) = &mut self.extra else {
                    return false;
                };
                let Some(group) = extra.groups.get_mut(name) else {
                    return false;
                };
                let before = group.members.len();
                group
                    .members
                    .retain(|m| !(&**m.mailbox.client_id() == client_id && matches(m)));
                let removed = group.members.len() != before;
                if group.members.is_empty() {
                    extra.groups.remove(name);
                    // Keeps the snapshot: the plain subscriptions did not change.
                    if extra.groups.is_empty() && self.direct.len() < SNAPSHOT_FROM {
                        self.extra = None;
                    }
                }
                removed
            }
        }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.here.is_empty()
    }

    fn subscribers_mut<'a>(&mut self, levels: impl Iterator<Item = &'a str>) -> &mut Subscribers {
        let mut node = self;
        for level in levels {
            node = match level {
                "#" => return node.hash.get_or_insert_default(),
                "+" => node.plus.get_or_insert_default(),
                literal => node
                    .children
                    .get_or_insert_with(literal, || (literal.into(), Box::default())),
            };
        }
        &mut node.here
    }

    /// Removes a subscriber below this node, pruning nodes left empty.
    fn remove(
        &mut self,
        levels: &[&str],
        group: Option<&str>,
        client_id: &str,
        only: Option<&Arc<Mailbox>>,
    ) -> bool {
        let Some((&level, rest)) = levels.split_first() else {
            return self.here.remove(group, client_id, only);
        };
        match level {
            "#" => {
                let Some(hash) = self.hash.as_mut() else {
                    return false;
                };
                let removed = hash.remove(group, client_id, only);
                if hash.is_empty() {
                    self.hash = None;
                }
                removed
            }
            "+" => {
                let Some(plus) = self.plus.as_mut() else {
                    return false;
                };
                let removed = plus.remove(rest, group, client_id, only);
                if plus.is_empty() {
                    self.plus = None;
                }
                removed
            }
            literal => {
                let Some(child) = self.children.get_mut(literal) else {
                    return false;
                };
                let removed = child.remove(rest, group, client_id, only);
                if child.is_empty() {
                    self.children.remove(literal);
                }
                removed
            }
        }
    }

    fn collect(
        &self,
        levels: &[&str],
        strategy: ShareStrategy,
        random: u64,
        reach: Reach,
        out: &mut Matches,
    ) -> usize {
        let mut plain_sets = 0;
        // `#` matches this level and everything below, including nothing: `a/#` matches `a`.
        if let Some(hash) = &self.hash {
            plain_sets += hash.collect(strategy, random, reach, out);
        }
        let Some((level, rest)) = levels.split_first() else {
            return plain_sets + self.here.collect(strategy, random, reach, out);
        };
        if let Some(child) = self.children.get(*level) {
            plain_sets += child.collect(rest, strategy, random, reach, out);
        }
        if let Some(plus) = &self.plus {
            plain_sets += plus.collect(rest, strategy, random, reach, out);
        }
        plain_sets
    }
}

/// Topic levels split without allocating (see [`Trie::collect`]); deeper topics allocate.
const STACK_LEVELS: usize = 16;

/// See the module documentation. Not synchronised: the router wraps it in a lock.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    root: Node,
    count: usize,
}

/// A filter split into its shared group (if any) and the levels to store it under.
fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match midge_proto::topic::parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

impl Subscribers {
    fn visit(&self, filter: &str, f: &mut dyn FnMut(&str, &Subscriber)) {
        for s in self.direct.values() {
            f(filter, s);
        }
        for group in self.groups() {
            for member in &group.members {
                f(&group.full_filter, member);
            }
        }
    }
}

impl Node {
    /// Calls `f` with every subscription below this node; `levels` is the path to it.
    fn visit<'a>(&'a self, levels: &mut Vec<&'a str>, f: &mut dyn FnMut(&str, &Subscriber)) {
        if !self.here.is_empty() {
            self.here.visit(&levels.join("/"), f);
        }
        if let Some(hash) = &self.hash {
            levels.push("#");
            hash.visit(&levels.join("/"), f);
            levels.pop();
        }
        if let Some(plus) = &self.plus {
            levels.push("+");
            plus.visit(levels, f);
            levels.pop();
        }
        for (name, child) in &self.children {
            levels.push(name);
            child.visit(levels, f);
            levels.pop();
        }
    }
}

impl Trie {
    /// Calls `f` with every subscription: its filter (the full `$share/...` filter for a
    /// group member) and its subscriber, in no particular order.
    pub(crate) fn visit(&self, f: &mut dyn FnMut(&str, &Subscriber)) {
        self.root.visit(&mut Vec::new(), f);
    }

    /// Number of subscriptions (each shared-group membership counts once).
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces a subscription. `filter` is validated already and may be a
    /// `$share/` filter. Returns true if it replaced an existing one.
    pub(crate) fn insert(&mut self, filter: &str, subscriber: Subscriber) -> bool {
        let (group, inner) = split_filter(filter);
        let subscribers = self.root.subscribers_mut(inner.split('/'));
        let existed = subscribers.insert(group.map(|g| (g, filter)), subscriber);
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Removes `client_id`'s subscription to `filter` (only if it points at `only`, when
    /// given); returns true if there was one.
    pub(crate) fn remove(
        &mut self,
        filter: &str,
        client_id: &str,
        only: Option<&Arc<Mailbox>>,
    ) -> bool {
        let (group, inner) = split_filter(filter);
        let levels: Vec<&str> = inner.split('/').collect();
        let removed = self.root.remove(&levels, group, client_id, only);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// The shared group behind `full_filter` (`$share/{group}/{filter}`), if it has members.
    fn group(&self, full_filter: &str) -> Option<&SharedGroup> {
        let (Some(group), inner) = split_filter(full_filter) else {
            return None;
        };
        let mut node = &self.root;
        let mut subscribers = None;
        let mut levels = inner.split('/').peekable();
        while let Some(level) = levels.next() {
            let next = match level {
                "#" => {
                    subscribers = node.hash.as_deref();
                    break;
                }
                "+" => node.plus.as_deref(),
                literal => node.children.get(literal).map(|n| &**n),
            };
            node = next?;
            if levels.peek().is_none() {
                subscribers = Some(&node.here);
            }
        }
        subscribers?.extra.as_ref()?.groups.get(group)
    }

    /// The members of the shared group behind `full_filter` other than `exclude`, for
    /// handing over deliveries whose member left: the connected ones, or, when none is,
    /// all of them (a message then waits in an offline member's queue).
    pub(crate) fn shared_members(&self, full_filter: &str, exclude: &str, out: &mut Vec<Target>) {
        let Some(group) = self.group(full_filter) else {
            return;
        };
        let candidates = || {
            group
                .members
                .iter()
                .filter(|m| &**m.mailbox.client_id() != exclude)
        };
        let any_online = candidates().any(|m| m.mailbox.is_online());
        out.extend(
            candidates()
                .filter(|m| !any_online || m.mailbox.is_online())
                .map(|m| Target::member(m, &group.full_filter)),
        );
    }

    /// One member of the shared group behind `full_filter`, picked as for a routed
    /// message; None if the group has no member here.
    pub(crate) fn pick_shared(
        &self,
        full_filter: &str,
        strategy: ShareStrategy,
        random: u64,
    ) -> Option<Target> {
        let group = self.group(full_filter)?;
        group
            .pick(strategy, random)
            .map(|m| Target::member(m, &group.full_filter))
    }

    /// Every subscription matching `topic`, with one member picked per shared group.
    /// Topics starting with `$` are not matched by a leading wildcard [MQTT-4.7.2-1].
    /// Returns how many filters' plain subscriptions added targets: with at most one, no
    /// session is among the plain targets twice (a filter holds one subscription per
    /// client).
    pub(crate) fn collect(
        &self,
        topic: &str,
        strategy: ShareStrategy,
        random: u64,
        reach: Reach,
        out: &mut Matches,
    ) -> usize {
        // Split on the stack: most topics have few levels, and this runs for every message.
        let mut on_stack = [""; STACK_LEVELS];
        let mut count = 0;
        let mut split = topic.split('/');
        for (slot, level) in on_stack.iter_mut().zip(&mut split) {
            *slot = level;
            count += 1;
        }
        let on_heap: Vec<&str>;
        let levels: &[&str] = if count == STACK_LEVELS && split.clone().next().is_some() {
            on_heap = topic.split('/').collect();
            &on_heap
        } else {
            &on_stack[..count]
        };
        if topic.starts_with('$') {
            if let Some((first, rest)) = levels.split_first()
                && let Some(child) = self.root.children.get(*first)
            {
                return child.collect(rest, strategy, random, reach, out);
            }
            0
        } else {
            self.root.collect(levels, strategy, random, reach, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_proto::QoS;

    fn sub(mailbox: &Arc<Mailbox>, qos: QoS) -> Subscriber {
        Subscriber {
            mailbox: mailbox.clone(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            identifier: None,
        }
    }

    fn matched(trie: &Trie, topic: &str) -> Vec<String> {
        let mut out = Matches::default();
        trie.collect(topic, ShareStrategy::RoundRobin, 0, Reach::All, &mut out);
        let mut ids: Vec<String> = out
            .into_targets()
            .iter()
            .map(|t| t.mailbox.client_id().to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn matches_literals_and_wildcards() {
        let mut trie = Trie::default();
        let filters = ["a/b", "a/+", "a/#", "#", "+/b", "a/b/c", "+", "/+"];
        for f in filters {
            trie.insert(f, sub(&Mailbox::new(f.into()), QoS::AtMostOnce));
        }
        assert_eq!(matched(&trie, "a/b"), ["#", "+/b", "a/#", "a/+", "a/b"]);
        assert_eq!(matched(&trie, "a"), ["#", "+", "a/#"]);
        assert_eq!(matched(&trie, "a/b/c"), ["#", "a/#", "a/b/c"]);
        assert_eq!(matched(&trie, "/x"), ["#", "/+"]);
        assert_eq!(trie.len(), filters.len());
    }

    /// Topics up to `STACK_LEVELS` levels are split on the stack, deeper ones on the heap:
    /// both match the same, at the boundary and past it.
    #[test]
    fn deep_topics_match_on_either_side_of_the_stack_split() {
        for depth in [STACK_LEVELS - 1, STACK_LEVELS, STACK_LEVELS + 1, 200] {
            let topic = vec!["l"; depth].join("/");
            let mut last_plus = vec!["l"; depth];
            last_plus[depth - 1] = "+";
            let mut trie = Trie::default();
            let filters = [
                topic.clone(),
                last_plus.join("/"),
                format!("{topic}/#"),
                "l/#".to_owned(),
                format!("{topic}/l"),
            ];
            for f in &filters {
                trie.insert(f, sub(&Mailbox::new(f.as_str().into()), QoS::AtMostOnce));
            }
            let mut want = vec![
                filters[0].clone(),
                filters[1].clone(),
                filters[2].clone(),
                filters[3].clone(),
            ];
            want.sort();
            assert_eq!(matched(&trie, &topic), want, "depth {depth}");
            assert_eq!(
                matched(&trie, &format!("{topic}/l")).len(),
                3,
                "depth {depth} + 1"
            );
        }
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let mut trie = Trie::default();
        for f in ["#", "+/broker/uptime", "$SYS/#", "$SYS/broker/+"] {
            trie.insert(f, sub(&Mailbox::new(f.into()), QoS::AtMostOnce));
        }
        assert_eq!(
            matched(&trie, "$SYS/broker/uptime"),
            ["$SYS/#", "$SYS/broker/+"]
        );
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut trie = Trie::default();
        let m = Mailbox::new("c".into());
        assert!(!trie.insert("a/b/c", sub(&m, QoS::AtMostOnce)));
        assert!(trie.insert("a/b/c", sub(&m, QoS::AtLeastOnce)));
        assert!(!trie.insert("a/#", sub(&m, QoS::AtMostOnce)));
        assert_eq!(trie.len(), 2);
        assert!(trie.remove("a/b/c", "c", None));
        assert!(!trie.remove("a/b/c", "c", None));
        assert!(trie.remove("a/#", "c", None));
        assert_eq!(trie.len(), 0);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn remove_can_be_limited_to_one_mailbox() {
        let mut trie = Trie::default();
        let old = Mailbox::new("c".into());
        let new = Mailbox::new("c".into());
        trie.insert("t", sub(&new, QoS::AtMostOnce));
        trie.insert("$share/g/t", sub(&new, QoS::AtMostOnce));
        assert!(!trie.remove("t", "c", Some(&old)));
        assert!(!trie.remove("$share/g/t", "c", Some(&old)));
        assert_eq!(trie.len(), 2);
        assert!(trie.remove("t", "c", Some(&new)));
        assert!(trie.remove("$share/g/t", "c", Some(&new)));
    }

    /// A filter keeps a snapshot (and the box holding it) only while it has
    /// [`SNAPSHOT_FROM`] plain subscribers or more; every change drops the snapshot.
    #[test]
    fn a_filter_keeps_a_snapshot_only_while_large() {
        let mut trie = Trie::default();
        let mailboxes: Vec<_> = (0..SNAPSHOT_FROM)
            .map(|i| Mailbox::new(format!("c{i}").into()))
            .collect();
        for m in &mailboxes[1..] {
            trie.insert("a", sub(m, QoS::AtMostOnce));
        }
        let here = |trie: &Trie| -> bool {
            trie.root
                .children
                .get("a")
                .is_some_and(|a| a.here.extra.is_some())
        };
        assert!(!here(&trie), "below SNAPSHOT_FROM: no box");
        trie.insert("a", sub(&mailboxes[0], QoS::AtMostOnce));
        assert!(here(&trie));

        let mut out = Matches::default();
        assert_eq!(
            trie.collect("a", ShareStrategy::RoundRobin, 0, Reach::All, &mut out),
            1
        );
        assert!(out.targets.is_empty());
        assert_eq!(out.sets.len(), 1);
        assert_eq!(out.sets[0].len(), SNAPSHOT_FROM);
        let first = out.sets[0].clone();
        // Matching again shares the snapshot; a change makes a new one.
        let mut again = Matches::default();
        trie.collect("a", ShareStrategy::RoundRobin, 0, Reach::All, &mut again);
        assert!(Arc::ptr_eq(&first, &again.sets[0]));
        trie.insert("a", sub(&mailboxes[0], QoS::AtLeastOnce));
        let mut changed = Matches::default();
        trie.collect("a", ShareStrategy::RoundRobin, 0, Reach::All, &mut changed);
        assert!(!Arc::ptr_eq(&first, &changed.sets[0]));
        assert!(
            changed.sets[0]
                .iter()
                .any(|s| s.options.qos == QoS::AtLeastOnce)
        );

        // A shared group keeps the box; without one, below the threshold, it goes. The
        // group's member is a target of its own beside the 63 plain ones.
        trie.insert("$share/g/a", sub(&mailboxes[1], QoS::AtMostOnce));
        assert!(trie.remove("a", "c0", None));
        assert!(here(&trie), "the group needs it");
        let mut small = Matches::default();
        trie.collect("a", ShareStrategy::RoundRobin, 0, Reach::All, &mut small);
        assert!(small.sets.is_empty());
        assert_eq!(small.targets.len(), SNAPSHOT_FROM);
        assert!(trie.remove("$share/g/a", "c1", None));
        assert!(!here(&trie));
        assert_eq!(matched(&trie, "a").len(), SNAPSHOT_FROM - 1);
    }

    #[test]
    fn shared_group_round_robins_across_members() {
        let mut trie = Trie::default();
        let members: Vec<_> = ["m1", "m2", "m3"]
            .iter()
            .map(|id| Mailbox::new((*id).into()))
            .collect();
        for m in &members {
            m.set_online(true);
            trie.insert("$share/g/jobs/+", sub(m, QoS::AtLeastOnce));
        }
        let mut picked = Vec::new();
        for _ in 0..6 {
            let mut out = Matches::default();
            trie.collect("jobs/1", ShareStrategy::RoundRobin, 0, Reach::All, &mut out);
            let out = out.into_targets();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].shared.as_deref(), Some("$share/g/jobs/+"));
            picked.push(out[0].mailbox.client_id().to_string());
        }
        assert_eq!(picked, ["m1", "m2", "m3", "m1", "m2", "m3"]);
    }

    #[test]
    fn shared_group_prefers_online_members() {
        let mut trie = Trie::default();
        let offline = Mailbox::new("off".into());
        let online = Mailbox::new("on".into());
        online.set_online(true);
        trie.insert("$share/g/t", sub(&offline, QoS::AtLeastOnce));
        trie.insert("$share/g/t", sub(&online, QoS::AtLeastOnce));
        for _ in 0..4 {
            assert_eq!(matched(&trie, "t"), ["on"]);
        }
        assert!(trie.remove("$share/g/t", "on", None));
        assert_eq!(matched(&trie, "t"), ["off"]);
    }

    #[test]
    fn groups_are_independent_and_coexist_with_plain_subscriptions() {
        let mut trie = Trie::default();
        for (f, id) in [("$share/a/t", "a1"), ("$share/b/t", "b1"), ("t", "plain")] {
            trie.insert(f, sub(&Mailbox::new(id.into()), QoS::AtMostOnce));
        }
        assert_eq!(matched(&trie, "t"), ["a1", "b1", "plain"]);
    }
}
