//! Session incarnation ids: unique in the process, and above every id found in the store at
//! start, so the store can tell a replaced session's late changes from its successor's.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh session id.
pub fn next_session_id() -> u64 {
    NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Makes every later session id greater than `id` (ids found in the store at start).
pub fn session_ids_above(id: u64) {
    NEXT_SESSION_ID.fetch_max(id.saturating_add(1), Ordering::Relaxed);
}

/// The router names subscribers by client id; an AMQP queue's id starts with U+0000, which
/// no MQTT client id may contain [MQTT-1.5.4-2], so the two never collide. The store tells
/// a queue's session from an MQTT session by it too.
pub const AMQP_QUEUE_OWNER_PREFIX: &str = "\u{0}amqp-queue:";
