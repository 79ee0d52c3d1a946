//! What the session machine asks of the rest of the broker: the narrow interface it uses
//! instead of [`Broker`](crate::Broker), so it depends on nothing above it.
//!
//! [`Broker`](crate::Broker) implements it for the single node (the router and retained
//! store in this process). A test drives a session with a fake, and a cluster router can
//! stand behind the same interface (forwarding publishes, adding remote interest).

use std::sync::Arc;

use midge_proto::SubscriptionOptions;

use crate::config::MqttConfig;
use crate::mailbox::Mailbox;
use crate::model::{Delivery, Message, Millis, QueueLimits};
use crate::stats::Stats;

/// See the module documentation.
pub trait SessionEnv {
    /// The MQTT settings in force (limits, retain availability, aliases, in-flight window).
    fn mqtt(&self) -> &MqttConfig;

    /// Queue limits in force (retained messages sent at SUBSCRIBE count against them).
    fn queue_limits(&self) -> QueueLimits;

    /// The broker's counters, for what the session counts at once rather than per
    /// wake-up (retained messages refused at SUBSCRIBE).
    fn stats(&self) -> &Stats;

    /// Publishes a client's message: the retained store first, if it is retained, then
    /// routing. Returns how many sessions it was queued for.
    fn publish(&self, message: Message) -> usize;

    /// Whether the broker is over its memory budget (`limits.max_memory`): QoS 1/2
    /// publishes are refused then. No default: an environment that forgot it would never
    /// refuse.
    fn memory_pressure(&self) -> bool;

    /// Counts a publish refused under memory pressure.
    fn refused_for_memory(&self);

    /// Subscribes the session whose deliveries go to `mailbox`. Returns whether the
    /// session already had this filter (for Retain Handling 1).
    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool;

    /// Removes `client_id`'s subscription to `filter`, if any.
    fn unsubscribe(&self, filter: &str, client_id: &str);

    /// Gives deliveries queued for a shared subscription that `leaving` no longer has to
    /// other members of their groups. Returns, for each, whether another member took it.
    /// Called with no mailbox lock held.
    fn hand_over(&self, deliveries: &[Delivery], leaving: &str) -> Vec<bool>;

    /// Retained messages matching `filter`, not expired at `now` (sent at SUBSCRIBE).
    fn retained(&self, filter: &str, now: Millis) -> Vec<Arc<Message>>;
}
