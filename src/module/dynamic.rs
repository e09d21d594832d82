//! The peers `upstream_healthcheck_dynamic` reserves in nginx's round robin: placeholders
//! added to the upstream's servers while its block is parsed, then, at run time, given the
//! address of an etcd-learned peer or marked down when free.
//!
//! nginx's round robin lays the placeholders out with the static servers (primary, `down`), and
//! the upstream's `zone` copies them into shared memory like any peer, with room for any
//! address (`ngx_sockaddr_t`) and its text (`NGX_SOCKADDR_STRLEN`) in every nginx version this
//! module builds for. The list never changes length, so per-request `tried` bitmaps stay
//! valid; a deleted peer is only marked down, so requests in flight finish on it, and its
//! memory is reused by a later add.

use core::mem::size_of;
use core::ptr;
use std::net::SocketAddr;

use ngx::ffi::{
    in6_addr, in_addr, ngx_addr_t, ngx_array_push, ngx_conf_t, ngx_http_upstream_server_t,
    ngx_http_upstream_srv_conf_t, ngx_pcalloc, ngx_rwlock_unlock, ngx_rwlock_wlock, ngx_sockaddr_t,
    ngx_str_t, ngx_uint_t, sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6,
};

use crate::membership::{parse_addr, Member};
use crate::module::peers::Target;

/// The name nginx keeps for a placeholder until etcd gives it an address; never shown.
static PLACEHOLDER: &[u8] = b"0.0.0.0:0";

/// Appends `max` placeholders to the upstream's servers: `down`, weight 1, nginx's default
/// `max_fails=1 fail_timeout=10`. Returns the index of the first, or why it could not.
///
/// # Safety
/// `cf` must be the context of the directive being parsed inside `uscf`'s block.
pub unsafe fn reserve(
    cf: *mut ngx_conf_t,
    uscf: &mut ngx_http_upstream_srv_conf_t,
    max: usize,
) -> Result<usize, String> {
    let no_memory = || "no memory for the reserved peers".to_string();
    // SAFETY: nginx creates the servers array before it parses the upstream block.
    let Some(servers) = (unsafe { uscf.servers.as_mut() }) else {
        return Err("no servers array in the upstream".to_string());
    };
    let at = servers.nelts;
    // SAFETY: cf->pool lives as long as the configuration; zeroed memory is valid for both.
    let (addrs, sockaddrs) = unsafe {
        (
            ngx_pcalloc((*cf).pool, max * size_of::<ngx_addr_t>()) as *mut ngx_addr_t,
            ngx_pcalloc((*cf).pool, max * size_of::<sockaddr_in>()) as *mut sockaddr_in,
        )
    };
    if addrs.is_null() || sockaddrs.is_null() {
        return Err(no_memory());
    }
    let name = ngx_str_t {
        len: PLACEHOLDER.len(),
        // nginx only reads it (the zone copies it into its own buffer).
        data: PLACEHOLDER.as_ptr() as *mut u8,
    };
    for i in 0..max {
        // SAFETY: servers is an array of ngx_http_upstream_server_t; the new element is
        // zeroed before its fields are set; addrs and sockaddrs have max entries.
        unsafe {
            let s = ngx_array_push(servers) as *mut ngx_http_upstream_server_t;
            if s.is_null() {
                return Err(no_memory());
            }
            ptr::write_bytes(s, 0, 1);
            let sa = sockaddrs.add(i);
            (*sa).sin_family = AF_INET as _;
            let a = addrs.add(i);
            (*a).sockaddr = sa.cast();
            (*a).socklen = size_of::<sockaddr_in>() as socklen_t;
            (*a).name = name;
            (*s).name = name;
            (*s).addrs = a;
            (*s).naddrs = 1;
            (*s).weight = 1;
            (*s).max_fails = 1;
            (*s).fail_timeout = 10;
            (*s).down = 1;
        }
    }
    Ok(at)
}

/// Index, among the upstream's primary peers as nginx lays them out, of the first placeholder
/// added at `servers[at]`.
///
/// # Safety
/// `uscf` must be a parsed upstream whose servers array is valid.
pub unsafe fn first_reserved(uscf: &ngx_http_upstream_srv_conf_t, at: usize) -> usize {
    // SAFETY: per the contract.
    let Some(servers) = (unsafe { uscf.servers.as_ref() }) else {
        return 0;
    };
    // SAFETY: the array holds nelts servers.
    let all = unsafe {
        core::slice::from_raw_parts(
            servers.elts as *const ngx_http_upstream_server_t,
            servers.nelts,
        )
    };
    all.iter()
        .take(at)
        .filter(|s| s.backup() == 0)
        .map(|s| s.naddrs)
        .sum()
}

/// Writes `addr` into nginx's sockaddr buffer of a zone peer.
///
/// # Safety
/// `buf` must have room for an `ngx_sockaddr_t`.
unsafe fn write_sockaddr(buf: *mut u8, addr: SocketAddr) -> socklen_t {
    // SAFETY: per the contract; both layouts fit in ngx_sockaddr_t.
    unsafe {
        ptr::write_bytes(buf, 0, size_of::<ngx_sockaddr_t>());
        match addr {
            SocketAddr::V4(v4) => {
                let sa = buf as *mut sockaddr_in;
                (*sa).sin_family = AF_INET as _;
                (*sa).sin_port = v4.port().to_be();
                (*sa).sin_addr = in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                };
                size_of::<sockaddr_in>() as socklen_t
            }
            SocketAddr::V6(v6) => {
                let sa = buf as *mut sockaddr_in6;
                (*sa).sin6_family = AF_INET6 as _;
                (*sa).sin6_port = v6.port().to_be();
                let mut a: in6_addr = core::mem::zeroed();
                a.__in6_u.__u6_addr8 = v6.ip().octets();
                (*sa).sin6_addr = a;
                size_of::<sockaddr_in6>() as socklen_t
            }
        }
    }
}

/// Makes a reserved peer what its member says: the member's address (a peer that gets a new
/// address starts with no failures and no weight debt), or down when the slot is free. Runs
/// under the zone lock, so workers write the same peer in the order of the members' changes.
///
/// # Safety
/// The target's peers must be live zone peers of the running cycle.
pub unsafe fn sync_peer(t: &Target, m: &Member) {
    // SAFETY: per the contract.
    let (Some(rr), Some(list)) = (unsafe { t.rr.as_mut() }, unsafe { t.list.as_mut() }) else {
        return;
    };
    if list.shpool.is_null() {
        return; // not a zone peer: `zone` is required, checked at nginx -t
    }
    let want = m.used.then(|| m.addr());
    // Only the holder of the zone lock (held here) changes a reserved peer's address, so it
    // is read without the list's lock; nothing to do is the common case of a sweep.
    match want {
        Some(addr) if rr.name.as_bytes() == addr.as_bytes() => return,
        None if rr.down != 0 => return,
        _ => {}
    }
    // SAFETY: zone peers are shared by the workers and written under the list's write lock.
    unsafe { ngx_rwlock_wlock(&mut list.rwlock) };
    match want.and_then(parse_addr) {
        None => rr.down = 1,
        Some((sa, text)) => {
            // SAFETY: the zone gave every peer an ngx_sockaddr_t and a name buffer of
            // NGX_SOCKADDR_STRLEN bytes (far more than membership::ADDR_MAX).
            unsafe {
                rr.socklen = write_sockaddr(rr.sockaddr.cast(), sa);
                ptr::copy_nonoverlapping(text.as_ptr(), rr.name.data, text.len());
            }
            rr.name.len = text.len();
            rr.fails = 0;
            rr.accessed = 0;
            rr.checked = 0;
            rr.current_weight = 0;
            rr.effective_weight = rr.weight;
            // Every peer may be tried: the count nginx made left the placeholders out.
            list.tries = list.tries.max(list.number as ngx_uint_t);
            list.set_weighted(1);
        }
    }
    // SAFETY: taken above.
    unsafe { ngx_rwlock_unlock(&mut list.rwlock) };
}
