//! AMQP 0-9-1 wire format for midge: the protocol header, frames (method, content header,
//! body, heartbeat), field tables, and the methods of the classes midge serves
//! (connection, channel, exchange, queue, basic, confirm). No I/O, no clocks, no async,
//! as `midge-proto` is for MQTT.
//!
//! Why our own codec and not `amq-protocol` (lapin's): that crate is generated from the
//! spec's JSON for every class and method, client and server side, and brings `nom`,
//! `cookie-factory`, `amq-protocol-types`/`-uri`/`-tcp` (whose TLS features default to
//! native-tls/openssl and must be switched off crate by crate); midge needs the server's
//! half of six classes. Writing it is a few hundred lines in the style of `midge-proto`:
//! every length checked before it is read, a bounded nesting depth for field tables, and
//! errors that carry the AMQP reply code the connection closes with. No byte sequence
//! panics the decoder; `tests` throw random bytes and mutated frames at it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod frame;
mod method;
mod table;
mod wire;

pub use error::{DecodeError, reply};
pub use frame::{
    ContentHeader, FRAME_END, FRAME_MIN_SIZE, Frame, FramePayload, HeaderCheck, PROTOCOL_HEADER,
    check_protocol_header, decode_frame, encode_content, encode_frame, encode_heartbeat,
    encode_method,
};
pub use method::{BasicProperties, Method, class, name_of};
pub use table::{FieldTable, FieldValue, MAX_TABLE_DEPTH};
