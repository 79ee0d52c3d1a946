//! midge-broker: the midge MQTT broker as an embeddable library.
//!
//! [`Server::start`] binds the configured listeners and serves MQTT 3.1, 3.1.1 and 5.0 on
//! each. Inside: [`connection`] drives one socket through the sans-I/O [`session`] machine;
//! the [`registry`] maps client ids to sessions; the [`router`] matches topics against the
//! subscription trie and queues deliveries on session [`mailbox`]es; [`retain`] keeps
//! retained messages. See ARCHITECTURE.md for the flows.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(missing_debug_implementations)]

pub(crate) mod accept_error;
pub mod admin;
pub mod amqp;
pub mod amqp_queues;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod conn_limit;
pub mod connection;
pub mod listener;
pub mod log_limit;
pub mod mailbox;
pub mod memory;
pub mod model;
pub mod pre_connect;
pub mod publish_rate;
pub mod registry;
pub mod retain;
pub mod router;
pub mod session;
pub mod small_map;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;

pub use broker::Broker;
pub use config::Config;
pub use listener::{ReloadError, Server, StartError};
