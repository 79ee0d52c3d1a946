//! midge-client: a small async MQTT client on [`midge_proto`].
//!
//! Two layers, usable apart:
//! - [`Transport`] opens a byte stream to a broker — TCP, TLS, WebSocket or secure
//!   WebSocket — and [`PacketReader`] / [`PacketWriter`] frame MQTT packets over any
//!   `AsyncRead` / `AsyncWrite` (for tools that drive the protocol themselves, such as a
//!   benchmark or a bridge).
//! - [`Client`] speaks the protocol on top: CONNECT/CONNACK, publish with the complete
//!   QoS 1 and QoS 2 acknowledgement flows, subscribe, unsubscribe, receiving (answering
//!   the broker's QoS 1/2 publishes), keep-alive pings and DISCONNECT. One operation at a
//!   time: each call returns when its exchange is complete.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(missing_debug_implementations)]

mod client;
mod error;
mod framed;
mod transport;
pub mod ws;

pub use client::{Client, ConnectOptions};
pub use error::Error;
pub use framed::{PacketReader, PacketWriter};
pub use midge_proto;
pub use transport::{BoxStream, ByteStream, Scheme, TlsOptions, Transport};
