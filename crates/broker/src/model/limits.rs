//! Bounds on a session's queue, taken from the configuration.

use crate::config::QueueFullPolicy;

/// Limits applied when pushing, taken from the configuration at push time.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most deliveries queued; 0 means unlimited.
    pub max_messages: usize,
    /// Most payload bytes queued; 0 means unlimited.
    pub max_bytes: usize,
    /// What happens to a QoS 1/2 delivery when the queue is full of QoS 1/2 deliveries.
    pub policy: QueueFullPolicy,
    /// Whether QoS 0 messages queue for offline sessions.
    pub queue_qos0_offline: bool,
}
