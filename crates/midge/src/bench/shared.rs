//! What the load tasks (load.rs's MQTT ones, amqp.rs's AMQP ones) share: the counters,
//! the payload header, and what a finished publisher or subscriber hands back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::HEADER_LEN;
use super::histogram::Histogram;
use super::sequence::Streams;

/// A QoS 0 publisher waiting this long for deliveries that do not come counts the missing
/// messages as gone (the broker dropped them) instead of waiting forever.
pub(super) const STALL: Duration = Duration::from_secs(1);

/// What the tasks share: counters only, each written with one atomic add per batch.
pub(super) struct Shared {
    pub(super) clock: Instant,
    /// Per publisher: deliveries of its messages counted at the subscribers.
    pub(super) delivered: Box<[AtomicU64]>,
    /// Per publisher: woken when deliveries of its messages are counted.
    pub(super) wake: Box<[Notify]>,
    pub(super) delivered_total: AtomicU64,
    pub(super) sent_total: AtomicU64,
    /// The measured window, in nanoseconds of `clock`.
    pub(super) window_start_ns: u64,
    pub(super) window_end_ns: AtomicU64,
}

impl Shared {
    pub(super) fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }
}

/// The payload's header: send time in ns of the shared clock, publisher id, sequence.
pub(super) fn read_header(payload: &[u8]) -> Option<(u64, u32, u32)> {
    let header = payload.get(..HEADER_LEN)?;
    Some((
        u64::from_le_bytes(header[0..8].try_into().ok()?),
        u32::from_le_bytes(header[8..12].try_into().ok()?),
        u32::from_le_bytes(header[12..16].try_into().ok()?),
    ))
}

/// A finished publisher.
pub(super) struct Published {
    pub(super) sent: u64,
    pub(super) stalls: u64,
    /// The in-flight bound used: --inflight, capped by the broker's Receive Maximum.
    pub(super) inflight: u64,
    /// The connection (MQTT or AMQP), held open until the subscribers are done.
    pub(super) client: Box<dyn std::any::Any + Send>,
}

/// A finished subscriber.
pub(super) struct Received {
    pub(super) streams: Streams,
    pub(super) latency: Histogram,
    pub(super) delivered_window: u64,
    pub(super) delivered_total: u64,
    pub(super) unexpected: u64,
}

/// What a subscriber counts while it reads: each delivery into its [`Received`], and the
/// deliveries per publisher, published to [`Shared`] once per read rather than per message.
pub(super) struct Tally {
    /// Deliveries per publisher in this read.
    batch: Vec<u64>,
    /// The publishers with deliveries in this read.
    touched: Vec<usize>,
    /// Deliveries in this read.
    count: u64,
}

impl Tally {
    pub(super) fn new(publishers: usize) -> Self {
        Self {
            batch: vec![0; publishers],
            touched: Vec::with_capacity(publishers),
            count: 0,
        }
    }

    /// Counts one delivered payload, read at `now` (`in_window`: inside the measured
    /// window). A payload without a valid header counts as unexpected.
    pub(super) fn record(
        &mut self,
        payload: &[u8],
        now: u64,
        in_window: bool,
        shared: &Shared,
        done: &mut Received,
    ) {
        let publishers = self.batch.len();
        let Some((sent_at, publisher, seq)) =
            read_header(payload).filter(|&(_, publisher, _)| (publisher as usize) < publishers)
        else {
            done.unexpected += 1;
            return;
        };
        let publisher = publisher as usize;
        done.streams.get_mut(publisher).record(u64::from(seq));
        if self.batch[publisher] == 0 {
            self.touched.push(publisher);
        }
        self.batch[publisher] += 1;
        self.count += 1;
        if in_window {
            done.delivered_window += 1;
        }
        if sent_at >= shared.window_start_ns {
            done.latency.record(now.saturating_sub(sent_at));
        }
    }

    /// Publishes this read's counts to `shared` and wakes the publishers waiting for them.
    pub(super) fn flush(&mut self, shared: &Shared, done: &mut Received) {
        for publisher in self.touched.drain(..) {
            shared.delivered[publisher].fetch_add(self.batch[publisher], Relaxed);
            self.batch[publisher] = 0;
            shared.wake[publisher].notify_one();
        }
        done.delivered_total += self.count;
        shared.delivered_total.fetch_add(self.count, Relaxed);
        self.count = 0;
    }
}
