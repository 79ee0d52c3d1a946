//! Any bytes, as a client sends them to the broker: the server-side decoder learns the
//! protocol version (3.1, 3.1.1 or 5) from the first CONNECT. Decoding must not panic,
//! must give the same packets however the bytes are split into reads, and every packet
//! must encode again and decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_fuzz::check_stream;
use midge_proto::Decoder;

/// Small enough that the "packet too large" path is reached by inputs of libFuzzer's
/// default maximum length (4096 bytes).
const MAX_PACKET_SIZE: u32 = 2048;

fuzz_target!(|data: &[u8]| {
    // The split is derived from the input, so each input is still plain wire bytes
    // (seeds and crashes read as MQTT streams).
    let chunk = 1 + data.len() % 13;
    check_stream(Decoder::new(MAX_PACKET_SIZE), data, chunk);
});
