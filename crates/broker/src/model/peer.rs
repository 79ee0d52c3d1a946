//! Peer addresses as the per-address limits count them.

use std::net::IpAddr;

/// The key for an address: IPv4 as is, IPv6 by its /64 prefix (one host usually holds a
/// whole /64), an IPv4-mapped IPv6 address as the IPv4 one.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}
