//! Per-publisher sequence tracking at a subscriber: which sequence numbers arrived, so
//! loss, duplication and reordering are counted exactly.
//!
//! One bit per sequence number of the stream (publishers number from 0 without gaps), so
//! memory is one bit per delivered message and a check is an index and a mask.

/// What one subscriber saw of one publisher's messages.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    seen: Vec<u64>,
    /// Distinct sequence numbers received.
    unique: u64,
    /// Deliveries of a sequence number already received.
    duplicated: u64,
    /// Deliveries of a new sequence number below the highest one received before it.
    reordered: u64,
    /// One past the highest sequence number received.
    next: u64,
}

impl Stream {
    /// Records the delivery of sequence number `seq`.
    pub fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            // Doubling keeps the amortised cost of growth constant per message.
            let len = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(len, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq + 1;
        }
    }

    /// Distinct sequence numbers received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Deliveries of a sequence number already received.
    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    /// New sequence numbers that came after a higher one.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Adds `other`'s received set to this one (for a `$share` group, whose members each
    /// see part of a publisher's stream): returns how many of `other`'s sequence numbers
    /// this stream had already (delivered to two members: duplicates).
    pub fn union(&mut self, other: &Stream) -> u64 {
        if other.seen.len() > self.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        let mut both = 0;
        for (mine, theirs) in self.seen.iter_mut().zip(other.seen.iter()) {
            both += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.unique += other.unique - both;
        self.next = self.next.max(other.next);
        both
    }
}

/// One subscriber's [`Stream`]s, one per publisher it hears from. Dense for a few
/// publishers (an index per message); a map beyond [`DENSE_UP_TO`]: in `device -N 5000`
/// each of 5,000 subscribers hears one of 5,000 publishers, and dense streams would be
/// 1.4 GB written while the run starts, which stalled the generator's one thread for
/// long enough to show as the broker's latency.
#[derive(Debug)]
pub enum Streams {
    /// Indexed by publisher.
    Dense(Vec<Stream>),
    /// Only the publishers heard from.
    Sparse(std::collections::HashMap<usize, Stream>),
}

/// Publishers up to which [`Streams`] are dense.
pub const DENSE_UP_TO: usize = 256;

impl Streams {
    /// Streams for `publishers` publishers, numbered from 0.
    pub fn new(publishers: usize) -> Self {
        if publishers <= DENSE_UP_TO {
            Self::Dense(vec![Stream::default(); publishers])
        } else {
            Self::Sparse(std::collections::HashMap::new())
        }
    }

    /// The stream of `publisher` (below the count given to [`Streams::new`]).
    pub fn get_mut(&mut self, publisher: usize) -> &mut Stream {
        match self {
            Self::Dense(streams) => &mut streams[publisher],
            Self::Sparse(streams) => streams.entry(publisher).or_default(),
        }
    }

    /// The stream of `publisher`, if anything was heard from it.
    pub fn get(&self, publisher: usize) -> Option<&Stream> {
        match self {
            Self::Dense(streams) => streams.get(publisher),
            Self::Sparse(streams) => streams.get(&publisher),
        }
    }

    /// Every stream (of a publisher heard from, at least).
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Stream> + '_> {
        match self {
            Self::Dense(streams) => Box::new(streams.iter()),
            Self::Sparse(streams) => Box::new(streams.values()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_the_same_dense_or_sparse() {
        for publishers in [3, DENSE_UP_TO + 1] {
            let mut streams = Streams::new(publishers);
            for seq in [0, 1, 1, 3, 2] {
                streams.get_mut(publishers - 1).record(seq);
            }
            streams.get_mut(0).record(0);
            let last = streams.get(publishers - 1).expect("heard from");
            assert_eq!(
                (last.unique(), last.duplicated(), last.reordered()),
                (4, 1, 1)
            );
            assert_eq!(streams.iter().map(Stream::unique).sum::<u64>(), 5);
            // Dense streams hold every publisher; sparse ones only those heard from.
            let heard = streams.iter().filter(|s| s.unique() > 0).count();
            assert_eq!(heard, 2);
        }
        assert!(matches!(Streams::new(DENSE_UP_TO), Streams::Dense(_)));
        assert!(matches!(Streams::new(DENSE_UP_TO + 1), Streams::Sparse(_)));
        assert!(Streams::new(DENSE_UP_TO + 1).get(5).is_none());
    }

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut s = Stream::default();
        for seq in 0..1000 {
            s.record(seq);
        }
        assert_eq!((s.unique(), s.duplicated(), s.reordered()), (1000, 0, 0));
    }

    #[test]
    fn a_gap_is_loss_a_repeat_is_a_duplicate_a_late_one_is_reordered() {
        let mut s = Stream::default();
        for seq in [0, 1, 3, 4, 4, 2, 1, 200] {
            s.record(seq);
        }
        // Sent 0..=200: 6 distinct arrived.
        assert_eq!(s.unique(), 6);
        assert_eq!(201 - s.unique(), 195, "lost");
        assert_eq!(s.duplicated(), 2, "4 and 1 again");
        assert_eq!(s.reordered(), 1, "2 after 4");
    }

    #[test]
    fn union_of_shared_members_counts_cross_member_duplicates() {
        let mut a = Stream::default();
        let mut b = Stream::default();
        for seq in (0..100).step_by(2) {
            a.record(seq);
        }
        for seq in (1..100).step_by(2) {
            b.record(seq);
        }
        b.record(10); // also delivered to a
        let both = a.union(&b);
        assert_eq!(both, 1);
        assert_eq!(a.unique(), 100);
    }
}
