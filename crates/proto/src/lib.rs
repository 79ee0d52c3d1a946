//! midge-proto: the MQTT 3.1, 3.1.1 and 5.0 wire format.
//!
//! - [`Packet`]: one model for all three protocol versions. v3 packets decode with
//!   properties absent; reason codes map to v3 return codes at the edge.
//! - [`Decoder`]: streaming decode from a `BytesMut` (partial packets, several packets per
//!   read), enforcing a maximum packet size from the fixed header, before the body arrives.
//!   Payloads are `Bytes` slices of the buffer, not copies.
//! - [`Packet::encode`] and [`OutgoingPublish::encode`]: encoding, shortest v5 forms.
//! - [`topic`]: topic name and filter validation, `$share` parsing, matching.
//!
//! No I/O, no clocks, no async: everything here is a pure function of bytes.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(missing_debug_implementations)]

mod decode;
mod encode;
mod error;
mod packet;
mod reason;
pub mod topic;
mod wire;

pub use decode::Decoder;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use reason::ReasonCode;

/// The largest remaining length the variable-byte encoding can express (spec 1.5.5).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// The largest packet the format allows: fixed header (5 bytes) plus remaining length.
pub const MAX_PACKET_SIZE: u32 = MAX_REMAINING_LENGTH as u32 + 5;
/// The largest subscription identifier (variable byte integer maximum).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;
