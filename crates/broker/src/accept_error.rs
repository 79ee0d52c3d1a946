//! What an accept loop does when `accept(2)` fails.

use std::time::Duration;

/// How long an accept loop pauses after `accept(2)` failed with `error`, if at all.
///
/// Only when the system is short of something (descriptors, socket buffers, memory): the
/// connection stays queued, and accepting again at once would fail again and spin. Any
/// other error concerns the one connection being accepted (aborted or reset while queued,
/// refused by a firewall, or one of the network errors Linux passes on from it, which
/// accept(2) says to treat like EAGAIN): the next one is accepted at once, so a client
/// that aborts its connects cannot make a listener stop accepting for 100 ms each time.
pub(crate) fn back_off(error: &std::io::Error) -> Option<Duration> {
    const RESOURCE: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    error
        .raw_os_error()
        .is_some_and(|code| RESOURCE.contains(&code))
        .then_some(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shortage_of_resources_pauses_accepting() {
        use std::io::{Error, ErrorKind};
        for short in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let error = Error::from_raw_os_error(short);
            assert_eq!(
                back_off(&error),
                Some(Duration::from_millis(100)),
                "{error}"
            );
        }
        for one_connection in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EPERM,
            libc::EPROTO,
            libc::EINTR,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
        ] {
            let error = Error::from_raw_os_error(one_connection);
            assert_eq!(back_off(&error), None, "{error}");
        }
        assert_eq!(back_off(&Error::from(ErrorKind::Other)), None);
    }
}
