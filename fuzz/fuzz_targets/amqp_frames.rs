//! Any bytes, as an AMQP 0-9-1 client sends them to the broker: the protocol header, then
//! frames (method, content header, body, heartbeat) with their methods, field tables and
//! properties decoded. Decoding must not panic, must give the same frames however the
//! bytes are split into reads, and every frame must encode again to bytes that decode to
//! a frame encoding the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_fuzz::check_amqp_stream;

fuzz_target!(|data: &[u8]| {
    // The split and the frame-max are derived from the input, so each input is still
    // plain wire bytes (seeds and crashes read as AMQP streams).
    let chunk = 1 + data.len() % 13;
    // The spec's minimum frame-max (what midge allows before tune-ok) or no limit.
    let frame_max = if data.len() % 2 == 0 { 4096 } else { 0 };
    check_amqp_stream(data, chunk, frame_max);
});
