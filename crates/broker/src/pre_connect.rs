//! What a connection may cost before it is known who it is: until CONNECT is read and
//! authenticated, its read buffer is bounded by `mqtt.max_connect_size` (checked from the
//! fixed header, through the decoder's packet size limit, before the body is buffered),
//! and the read buffers of all such connections together by `mqtt.max_pre_connect_bytes`.
//! A read that would take the total past the budget closes its connection.
//!
//! The budget is counted in [`Stats::pre_connect_bytes`] as the buffers' capacity, which
//! is what they occupy, and the same bytes in the broker's memory budget
//! (`limits.max_memory`, see `memory`). Buffers grow by doubling, so a CONNECT trickled in byte by byte
//! is copied O(size) times in all, not once per byte.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use midge_proto::DecodeError;
use tokio::io::{AsyncRead, ReadBuf};

use crate::broker::Broker;
use crate::config::MqttConfig;
use crate::stats::Stats;

/// Most bytes taken in one read.
const READ_CHUNK: usize = 16 * 1024;
/// A buffer up to this size may use the whole budget; growing beyond it may use only
/// [`LARGE_SHARE`] of it. Ordinary CONNECTs (tens to hundreds of bytes, a few KiB with a
/// will or a token as password) thus still get in while large partial CONNECTs hold the
/// rest of the budget.
const SMALL: usize = 4 * 1024;
/// The share of the budget, in quarters, that buffers beyond [`SMALL`] may fill.
const LARGE_SHARE: u64 = 3;
/// The first allocation, so that a trickled CONNECT does not reallocate for every byte.
const FIRST_ALLOCATION: usize = 256;

/// Why a CONNECT was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The first packet is not CONNECT.
    NotConnect,
    /// The CONNECT announces more than the limit.
    TooLarge,
    /// The partial CONNECT does not fit in what is left of the budget.
    OverBudget,
    /// No complete CONNECT within the connect timeout.
    Timeout,
}

/// What one read brought.
#[derive(Debug)]
pub enum Read {
    /// This many bytes were appended.
    Bytes(usize),
    /// End of stream or a read error.
    Closed,
    /// The bytes read did not fit in the budget and were dropped; close the connection.
    OverBudget,
}

/// One connection's share of the pre-CONNECT budget: what it counted in
/// [`Stats::pre_connect_bytes`], given back when dropped (once the connection is
/// authenticated, or closed).
#[derive(Debug)]
pub struct PreConnect {
    broker: Arc<Broker>,
    held: u64,
    /// `mqtt.connect_limit()` of the connection's configuration.
    limit: usize,
    /// `mqtt.max_pre_connect_bytes` of the connection's configuration.
    budget: u64,
}

impl PreConnect {
    /// A connection that has buffered nothing yet, under the `[mqtt]` settings it was
    /// accepted with.
    pub fn new(broker: &Arc<Broker>, mqtt: &MqttConfig) -> Self {
        Self {
            broker: broker.clone(),
            held: 0,
            limit: mqtt.connect_limit() as usize,
            budget: mqtt.max_pre_connect_bytes,
        }
    }

    /// Reads what is there into `rbuf` (at most up to the CONNECT size limit), growing it
    /// only within the budget.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        rbuf: &mut BytesMut,
    ) -> Read {
        std::future::poll_fn(|cx| self.poll_read(reader, rbuf, cx)).await
    }

    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        rbuf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Read> {
        let limit = self.limit;
        // The decoder refuses a CONNECT above `limit` from its fixed header, so while it
        // waits for more, what is missing fits in `limit - rbuf.len()`.
        let room = limit.saturating_sub(rbuf.len()).min(READ_CHUNK);
        if room == 0 {
            return Poll::Ready(Read::Closed);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack[..room]);
        if ready!(Pin::new(reader).poll_read(cx, &mut buf)).is_err() {
            return Poll::Ready(Read::Closed);
        }
        let filled = buf.filled();
        if filled.is_empty() {
            return Poll::Ready(Read::Closed);
        }
        let needed = rbuf.len() + filled.len();
        if needed > rbuf.capacity() {
            let capacity = needed
                .max(rbuf.capacity() * 2)
                .max(FIRST_ALLOCATION)
                .min(limit);
            if !self.reserve((capacity - rbuf.capacity()) as u64, capacity > SMALL) {
                return Poll::Ready(Read::OverBudget);
            }
            // Allocated here rather than by `extend_from_slice`, so the capacity is the
            // one counted.
            let mut grown = BytesMut::with_capacity(capacity);
            grown.extend_from_slice(rbuf);
            *rbuf = grown;
        }
        rbuf.extend_from_slice(filled);
        Poll::Ready(Read::Bytes(filled.len()))
    }

    /// Counts `bytes` more against the budget, unless that would pass it (or, for a
    /// buffer beyond [`SMALL`], pass its [`LARGE_SHARE`]).
    fn reserve(&mut self, bytes: u64, large: bool) -> bool {
        let stats = &self.broker.stats;
        let budget = self.budget;
        let limit = match budget {
            0 => u64::MAX,
            _ if large => budget / 4 * LARGE_SHARE,
            _ => budget,
        };
        let reserved =
            stats
                .pre_connect_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(bytes).filter(|&total| total <= limit)
                });
        match reserved {
            Ok(before) => {
                stats
                    .pre_connect_bytes_maximum
                    .fetch_max(before + bytes, Ordering::Relaxed);
                self.held += bytes;
                self.broker.memory.charge(bytes);
                true
            }
            Err(_) => false,
        }
    }

    /// Counts a refusal by its reason.
    pub fn count(&self, refused: Refused) {
        let stats = &self.broker.stats;
        let counter = match refused {
            Refused::NotConnect => &stats.pre_connect_dropped_not_connect,
            Refused::TooLarge => &stats.pre_connect_dropped_too_large,
            Refused::OverBudget => &stats.pre_connect_dropped_over_budget,
            Refused::Timeout => &stats.pre_connect_dropped_timeout,
        };
        Stats::add(counter, 1);
    }

    /// The pre-CONNECT reason for a CONNECT that did not decode, if it is one.
    pub fn classify(rbuf: &[u8], error: &DecodeError) -> Option<Refused> {
        match error {
            _ if rbuf.first().is_some_and(|b| b >> 4 != 1) => Some(Refused::NotConnect),
            DecodeError::PacketTooLarge { .. } => Some(Refused::TooLarge),
            _ => None,
        }
    }
}

impl Drop for PreConnect {
    fn drop(&mut self) {
        if self.held > 0 {
            self.broker
                .stats
                .pre_connect_bytes
                .fetch_sub(self.held, Ordering::Relaxed);
            self.broker.memory.release(self.held);
        }
    }
}
