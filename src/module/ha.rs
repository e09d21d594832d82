//! HA standby detection: whether this host holds the keepalived address on an interface.

use core::ptr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when one of this host's interfaces has `addr`.
pub fn host_has_address(addr: IpAddr) -> bool {
    let mut list: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: getifaddrs fills list with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return false;
    }
    let mut found = false;
    let mut cur = list;
    // SAFETY: walking the list getifaddrs returned; each ifa_addr is null or a sockaddr of
    // the family it names.
    unsafe {
        while let Some(ifa) = cur.as_ref() {
            if let Some(sa) = ifa.ifa_addr.as_ref() {
                let ip = match i32::from(sa.sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                };
                if ip == Some(addr) {
                    found = true;
                    break;
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}
