//! Probe sockets: the pending error, errno, addresses and idle connections, as both modules'
//! probes handle them.

use core::ffi::c_void;
use core::mem::size_of;

use ngx::ffi::{
    getsockopt, ngx_connection_t, ngx_event_t, ngx_handle_read_event, ngx_socket_errno, recv,
    sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t, AF_INET, AF_INET6, EAGAIN,
    ECONNREFUSED, EINTR, MSG_PEEK, NGX_OK, SOL_SOCKET, SO_ERROR,
};
use upstream_healthcheck_core::outcome::Failure;

/// Sets this thread's errno (nginx leaves it as a failed call set it).
pub fn set_errno(v: i32) {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = v };
}

/// The text of an errno, without Rust's ` (os error N)`.
pub fn strerror(err: i32) -> String {
    std::io::Error::from_raw_os_error(err)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Puts `port` into an IPv4 or IPv6 address.
pub fn set_port(sa: &mut sockaddr_storage, port: u16) {
    // SAFETY: the family says which layout the storage holds; both fit in sockaddr_storage.
    unsafe {
        match sa.ss_family as u32 {
            AF_INET => (*(sa as *mut _ as *mut sockaddr_in)).sin_port = port.to_be(),
            AF_INET6 => (*(sa as *mut _ as *mut sockaddr_in6)).sin6_port = port.to_be(),
            _ => {}
        }
    }
}

/// The socket's pending error (`SO_ERROR`), 0 when none.
pub fn socket_error(c: &ngx_connection_t) -> i32 {
    let mut err: i32 = 0;
    let mut len = size_of::<i32>() as socklen_t;
    // SAFETY: fd is the connection's socket; err and len are valid out-parameters.
    let rc = unsafe {
        getsockopt(
            c.fd,
            SOL_SOCKET as i32,
            SO_ERROR as i32,
            &mut err as *mut i32 as *mut c_void,
            &mut len,
        )
    };
    if rc == -1 {
        ngx_socket_errno()
    } else {
        err
    }
}

/// The failure an I/O error of an established probe connection counts as.
pub fn io_failure(err: i32) -> Failure {
    if err == ECONNREFUSED as i32 {
        Failure::Refused
    } else {
        Failure::Reset
    }
}

/// Whether a read event of an idle connection is spurious: nothing to read yet and the peer
/// did not close (the event is re-armed then). Otherwise the peer closed the connection, sent
/// something unasked, or nginx asks for it back (`close` set): the caller closes it.
///
/// # Safety
/// `ev` must be the read event of an open connection, whose `data` is that connection.
pub unsafe fn idle_wakeup_is_spurious(ev: *mut ngx_event_t) -> bool {
    // SAFETY: per the contract; a one-byte peek leaves any data in place.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let mut b = 0u8;
        (*c).close() == 0
            && recv(
                (*c).fd,
                &mut b as *mut u8 as *mut c_void,
                1,
                MSG_PEEK as i32,
            ) == -1
            && matches!(ngx_socket_errno() as u32, EAGAIN | EINTR)
            && {
                (*ev).set_ready(0);
                ngx_handle_read_event(ev, 0) == NGX_OK as isize
            }
    }
}
