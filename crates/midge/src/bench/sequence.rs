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

#[cfg(test)]
mod tests {
    use super::*;

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
