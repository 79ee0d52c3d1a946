//! The plain data every other module shares: the routed message and its per-subscriber
//! delivery, what a session records about subscriptions and messages in flight, queue
//! limits, ids, peer address keys, wall-clock time, and tables that give back the room a
//! peak left them (`capacity`). It depends on nothing else in the
//! crate except the configuration's types, so the store, the mailbox, the router and the
//! session machine can all use it without using each other.

pub mod capacity;
pub mod ids;
pub mod limits;
pub mod message;
pub mod peer;
pub mod session_record;

pub use capacity::ShrinkSparse;
pub use ids::{AMQP_QUEUE_OWNER_PREFIX, next_session_id, session_ids_above};
pub use limits::QueueLimits;
pub use message::{
    Charge, Delivery, Message, MessageId, Millis, Properties, message_ids_above, next_message_id,
    now_millis,
};
pub use peer::address_key;
pub use session_record::{Inflight, Stage, SubscriptionRecord};
