//! The decoder with its protocol version preset, as the client side uses it (and as the
//! broker's decoder is after CONNECT): the first byte picks 3.1, 3.1.1 or 5, the rest is
//! the byte stream. Same checks as `decode_stream`: no panic, split-independence, round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_fuzz::{VERSIONS, check_stream};
use midge_proto::Decoder;

const MAX_PACKET_SIZE: u32 = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let version = VERSIONS[usize::from(selector) % VERSIONS.len()];
    let chunk = 1 + usize::from(selector >> 2) % 13;
    check_stream(
        Decoder::with_version(version, MAX_PACKET_SIZE),
        bytes,
        chunk,
    );
});
