//! Publish rate limits per connection (`limits.publish_rate_per_client`, messages per
//! second, and `limits.publish_bytes_per_client`, payload bytes per second). Each PUBLISH
//! takes from token buckets that refill at the rate and hold one second of it. What an
//! empty bucket does is `limits.publish_rate_action`:
//!
//! - `throttle` (the default): the connection stops handling packets and reading from its
//!   socket until it has refilled, so TCP pushes back on the client. No packet is refused
//!   or dropped, and other clients are not slowed.
//! - `disconnect`: the PUBLISH that overdrew the bucket is not handled and the connection
//!   is closed, MQTT 5 with DISCONNECT 0x96 (message rate too high).
//!
//! A bucket may go into debt (a PUBLISH larger than one second of the byte rate); the
//! pause then lasts until the debt is paid back.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::{LimitsConfig, PublishRateAction};

/// A token bucket: `rate` tokens a second, at most `rate` (one second's worth) held.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` tokens (going into debt if need be); returns how long until the bucket
    /// is out of debt, if it is in debt.
    fn take(&mut self, n: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// What [`PublishRate::publish`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Within the rate (or already paused, and counted then).
    No,
    /// Over the rate: the connection is paused from now on (`throttle`).
    Paused,
    /// Over the rate: close the connection (`disconnect`).
    Disconnect,
}

/// What [`PublishRate::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Not paused: read and handle packets.
    Open,
    /// Paused: neither read nor handle packets; the task is woken when the pause ends.
    Paused,
    /// A pause just ended: handle what is already read before reading more.
    Resumed,
}

/// One connection's buckets. Boxed in the connection, and only when a limit is set.
#[derive(Debug)]
pub struct PublishRate {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Set while paused; woken when the pause ends.
    sleep: Option<Pin<Box<Sleep>>>,
    /// `limits.publish_rate_action`.
    action: PublishRateAction,
}

impl PublishRate {
    /// The buckets `[limits]` asks for; `None` when both limits are off.
    pub fn new(limits: &LimitsConfig) -> Option<Box<Self>> {
        let now = Instant::now();
        let messages = (limits.publish_rate_per_client > 0)
            .then(|| Bucket::new(u64::from(limits.publish_rate_per_client), now));
        let bytes = (limits.publish_bytes_per_client.0 > 0)
            .then(|| Bucket::new(limits.publish_bytes_per_client.0, now));
        (messages.is_some() || bytes.is_some()).then(|| {
            Box::new(Self {
                messages,
                bytes,
                sleep: None,
                action: limits.publish_rate_action,
            })
        })
    }

    /// Counts a PUBLISH with `payload` bytes, and says what to do when a bucket is empty.
    pub fn publish(&mut self, payload: usize) -> Over {
        let now = Instant::now();
        let wait_messages = self.messages.as_mut().and_then(|b| b.take(1.0, now));
        let wait_bytes = self
            .bytes
            .as_mut()
            .and_then(|b| b.take(payload as f64, now));
        let Some(wait) = wait_messages.max(wait_bytes) else {
            return Over::No;
        };
        if self.action == PublishRateAction::Disconnect {
            return Over::Disconnect;
        }
        let until = now + wait;
        match &mut self.sleep {
            Some(sleep) if sleep.deadline() >= until => Over::No,
            Some(sleep) => {
                sleep.as_mut().reset(until);
                Over::No
            }
            None => {
                self.sleep = Some(Box::pin(tokio::time::sleep_until(until)));
                Over::Paused
            }
        }
    }

    /// Whether the connection is paused (stop handling packets).
    pub fn is_paused(&self) -> bool {
        self.sleep.is_some()
    }

    /// Whether the connection may read, registering the task to be woken when a pause
    /// ends.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Throttle {
        match &mut self.sleep {
            None => Throttle::Open,
            Some(sleep) => match sleep.as_mut().poll(cx) {
                Poll::Pending => Throttle::Paused,
                Poll::Ready(()) => {
                    self.sleep = None;
                    Throttle::Resumed
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn limits(messages: u32, bytes: u64) -> LimitsConfig {
        LimitsConfig {
            publish_rate_per_client: messages,
            publish_bytes_per_client: ByteSize(bytes),
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn off_unless_a_limit_is_set() {
        assert!(PublishRate::new(&limits(0, 0)).is_none());
        assert!(PublishRate::new(&limits(1, 0)).is_some());
        assert!(PublishRate::new(&limits(0, 1)).is_some());
    }

    #[test]
    fn a_second_of_rate_then_paced() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10, start);
        for _ in 0..10 {
            assert_eq!(bucket.take(1.0, start), None);
        }
        let wait = bucket.take(1.0, start).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // A tenth of a second later the debt is paid and one more costs another tenth.
        let later = start + Duration::from_millis(100);
        let wait = bucket.take(1.0, later).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // An idle bucket fills up to one second's worth, not more.
        let idle = later + Duration::from_secs(60);
        for _ in 0..9 {
            assert_eq!(bucket.take(1.0, idle), None);
        }
    }

    #[test]
    fn a_large_publish_pauses_for_its_bytes() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1000, start);
        let wait = bucket.take(3000.0, start).unwrap();
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_until_refilled() {
        let mut rate = PublishRate::new(&limits(2, 0)).unwrap();
        assert_eq!(rate.publish(10), Over::No);
        assert_eq!(rate.publish(10), Over::No);
        assert!(!rate.is_paused());
        assert_eq!(rate.publish(10), Over::Paused);
        assert!(rate.is_paused());
        // Still paused: counted once, however many more arrive before the pause ends
        // (each lengthens it: two in debt at 2/s is a second).
        assert_eq!(rate.publish(10), Over::No);
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rate.poll(&mut cx), Throttle::Paused);
        tokio::time::advance(Duration::from_millis(990)).await;
        assert_eq!(rate.poll(&mut cx), Throttle::Paused);
        tokio::time::advance(Duration::from_millis(11)).await;
        assert_eq!(rate.poll(&mut cx), Throttle::Resumed);
        assert_eq!(rate.poll(&mut cx), Throttle::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn disconnects_instead_of_pausing_when_asked() {
        let mut limits = limits(0, 100);
        limits.publish_rate_action = PublishRateAction::Disconnect;
        let mut rate = PublishRate::new(&limits).unwrap();
        assert_eq!(rate.publish(60), Over::No);
        assert_eq!(rate.publish(40), Over::No);
        assert_eq!(rate.publish(1), Over::Disconnect);
        assert!(!rate.is_paused());
        // A second later the bucket has refilled: a connection that keeps to its rate is
        // never closed.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..9 {
            assert_eq!(rate.publish(10), Over::No);
        }
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
