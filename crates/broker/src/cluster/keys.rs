//! Keys and timings the cluster's KV buckets share: the client-id key (`midge_owners`,
//! `midge_sessions`, `midge_wills`) and the node heartbeat. Below the modules that use
//! them, so those need not import each other.

use std::fmt::Write as _;
use std::time::Duration;

/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is no longer listed.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// Escaped client ids longer than this are keyed by their SHA-256 instead: the key is
/// part of a subject (`$KV.midge_owners.<key>`), which NATS limits to its control line.
pub(crate) const MAX_KEY_LEN: usize = 1024;

/// The owners bucket's key for `client_id`: bytes outside `[A-Za-z0-9_-]` as `=XX`, the
/// empty id as `=`; past [`MAX_KEY_LEN`], `=H` and the SHA-256 of the id in hex (which no
/// escape produces: `H` is not a hex digit).
pub fn owner_key(client_id: &str) -> String {
    if client_id.is_empty() {
        return "=".to_owned();
    }
    let mut key = String::with_capacity(client_id.len());
    for &b in client_id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(key, "={b:02X}");
        }
        if key.len() > MAX_KEY_LEN {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(client_id.as_bytes());
            let mut hashed = String::from("=H");
            for b in digest {
                let _ = write!(hashed, "{b:02x}");
            }
            return hashed;
        }
    }
    key
}
