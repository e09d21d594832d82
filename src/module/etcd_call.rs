//! One HTTP request to etcd's gateway on nginx's event loop: a non-blocking connection of its
//! own (`ngx_event_connect_peer`), the request sent, the answer read (`etcd::http`) and handed
//! to the caller's callback: whole, or for a stream (the watch) one JSON message at a time.

use core::ffi::c_void;
use core::mem::{size_of, zeroed};
use core::ptr;
use std::net::SocketAddr;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_cycle, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_log_t, ngx_peer_connection_t,
    ngx_socket_errno, ngx_str_t, recv, send, sockaddr, sockaddr_storage, socklen_t, EAGAIN, EINTR,
    MSG_NOSIGNAL, NGX_AGAIN, NGX_LOG_EMERG, NGX_OK,
};
use serde_json::Value;

use crate::etcd::http::ResponseReader;
use crate::etcd::proto::{parse_body, take_json_values};
use crate::module::log::hc_debug;
use upstream_healthcheck_glue::socket::{socket_error, strerror};

/// What a call hands its callback.
pub enum CallEvent {
    /// One message of a stream (a `200` answer of a stream call).
    Message(Value),
    /// The call ended: the answer's parsed body, or why there is none. Always the last event.
    Done(Result<Value, String>),
}

/// What the callback wants after a stream message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Close the call now, without a `Done`.
    Stop,
}

pub type Callback = Box<dyn FnMut(CallEvent) -> Flow>;

/// A call in flight; owned by its connection's `data` until it ends or is aborted.
pub struct Call {
    pc: ngx_peer_connection_t,
    /// The connection's log: the cycle's, quietened (as probes' are), so that nginx logs no
    /// line per failed attempt; failures are reported once per outage.
    log: ngx_log_t,
    sockaddr: sockaddr_storage,
    name: ngx_str_t,
    name_text: String,
    request: Vec<u8>,
    sent: usize,
    reader: ResponseReader,
    stream: bool,
    on: Callback,
}

/// Starts a call of `request` (a whole HTTP request) to `addr`, timing out after `timeout_ms`
/// (a stream: until its answer starts). The callback runs from the event loop only, never
/// from inside `start`; an error here means it never runs. `cancelable`: the call's timer
/// does not keep an exiting worker alive.
pub fn start(
    addr: SocketAddr,
    request: Vec<u8>,
    stream: bool,
    timeout_ms: u64,
    cancelable: bool,
    on: Callback,
) -> Result<*mut Call, String> {
    let name_text = addr.to_string();
    let mut call = Box::new(Call {
        // SAFETY: all-zero is the idle state of ngx_peer_connection_t, as nginx's own
        // ngx_pcalloc'ed ones start.
        pc: unsafe { zeroed() },
        // SAFETY: the cycle's log is valid for the cycle; the copy is this call's own.
        log: unsafe { *(*ngx_cycle).log },
        // SAFETY: all-zero is a valid (empty) sockaddr_storage.
        sockaddr: unsafe { zeroed() },
        name: ngx_str_t::default(),
        name_text,
        request,
        sent: 0,
        reader: ResponseReader::new(),
        stream,
        on,
    });
    let len = write_sockaddr(&mut call.sockaddr, addr);
    call.pc.sockaddr = &mut call.sockaddr as *mut _ as *mut sockaddr;
    call.pc.socklen = len;
    call.name.data = call.name_text.as_ptr() as *mut u8;
    call.name.len = call.name_text.len();
    call.pc.name = &mut call.name;
    call.pc.get = Some(ngx_event_get_peer);
    call.log.log_level = call.log.log_level.min(NGX_LOG_EMERG as _);
    call.log.next = ptr::null_mut();
    call.pc.log = &mut call.log;
    call.pc.set_log_error(2); // NGX_ERROR_INFO
    let p = Box::into_raw(call);
    // SAFETY: p is the fresh call; pc is set up for a TCP connect.
    let rc = unsafe { ngx_event_connect_peer(&mut (*p).pc) };
    // SAFETY: p is live; it is freed here when the connect failed at once.
    unsafe {
        let c = (*p).pc.connection;
        if (rc != NGX_OK as isize && rc != NGX_AGAIN as isize) || c.is_null() {
            let err = ngx_socket_errno();
            drop(Box::from_raw(p));
            return Err(format!("connect() to {addr} failed ({})", strerror(err)));
        }
        (*c).data = p as *mut c_void;
        (*(*c).read).handler = Some(on_event);
        (*(*c).write).handler = Some(on_event);
        (*(*c).read).set_cancelable(u32::from(cancelable) as _);
        (*(*c).write).set_cancelable(u32::from(cancelable) as _);
        ngx::ffi::ngx_add_timer((*c).read, timeout_ms as _);
        if rc == NGX_OK as isize {
            // Connected at once: the write event reports it (the socket is writable).
            ngx::ffi::ngx_post_event((*c).write, &raw mut ngx::ffi::ngx_posted_events);
        }
    }
    Ok(p)
}

/// Writes `addr` into `ss`; its length.
fn write_sockaddr(ss: &mut sockaddr_storage, addr: SocketAddr) -> socklen_t {
    let (src, len) = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let mut buf = [0u8; size_of::<libc::sockaddr_in6>()];
            // SAFETY: sockaddr_in fits in the buffer.
            unsafe { ptr::write_unaligned(buf.as_mut_ptr() as *mut libc::sockaddr_in, sin) };
            (buf, size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            let mut buf = [0u8; size_of::<libc::sockaddr_in6>()];
            // SAFETY: sockaddr_in6 fits in the buffer.
            unsafe { ptr::write_unaligned(buf.as_mut_ptr() as *mut libc::sockaddr_in6, sin6) };
            (buf, size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: sockaddr_storage is larger than either address.
    unsafe { ptr::copy_nonoverlapping(src.as_ptr(), ss as *mut _ as *mut u8, len) };
    len as socklen_t
}

/// Closes a call without calling its callback.
///
/// # Safety
/// `p` must be a live call (not ended, not aborted before).
pub unsafe fn abort(p: *mut Call) {
    // SAFETY: per the contract, the call owns its open connection.
    unsafe {
        let call = Box::from_raw(p);
        if !call.pc.connection.is_null() {
            ngx_close_connection(call.pc.connection);
        }
    }
}

/// What advancing a call came to.
enum Step {
    Wait,
    Done(Result<Value, String>),
    /// The callback asked to stop.
    Stopped,
}

/// Read and write handler of call connections.
extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls handlers with the connection's own events; data is the connection
    // whose data is the call, live until it ends here or is aborted.
    let p = unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        (*c).data as *mut Call
    };
    // SAFETY: ev is the live event nginx called this handler with.
    let step = if unsafe { (*ev).timedout() } != 0 {
        Step::Done(Err("etcd did not answer in time".to_owned()))
    } else {
        // SAFETY: p is the live call.
        unsafe { drive(&mut *p) }
    };
    // SAFETY: p is live; after this it is freed (ended).
    unsafe {
        match step {
            Step::Wait => {}
            Step::Stopped => abort(p),
            Step::Done(result) => {
                let mut call = Box::from_raw(p);
                ngx_close_connection(call.pc.connection);
                call.pc.connection = ptr::null_mut();
                (call.on)(CallEvent::Done(result));
            }
        }
    }
}

/// Advances the call as far as the socket allows.
///
/// # Safety
/// `call` must be live with an open connection.
unsafe fn drive(call: &mut Call) -> Step {
    let c = call.pc.connection;
    // SAFETY: per the contract.
    let conn = unsafe { &mut *c };
    let name = call.name_text.clone();
    let failed =
        |what: &str, err: i32| Step::Done(Err(format!("{what} {name} failed ({})", strerror(err))));
    while call.sent < call.request.len() {
        let err = socket_error(conn);
        if err != 0 {
            return failed("connect() to", err);
        }
        let rest = &call.request[call.sent..];
        // SAFETY: the connection's socket; rest is valid for its length.
        let n = unsafe {
            send(
                conn.fd,
                rest.as_ptr() as *const c_void,
                rest.len(),
                MSG_NOSIGNAL as i32,
            )
        };
        if n > 0 {
            call.sent += n as usize;
            continue;
        }
        let err = ngx_socket_errno();
        if err == EINTR as i32 {
            continue;
        }
        if err != EAGAIN as i32 {
            return failed("send() to", err);
        }
        // SAFETY: the live connection's write event.
        unsafe {
            (*conn.write).set_ready(0);
            if ngx_handle_write_event(conn.write, 0) != NGX_OK as isize {
                return failed("send() to", err);
            }
        }
        return Step::Wait;
    }
    let mut buf = [0u8; 16384];
    loop {
        // SAFETY: the connection's socket; buf is valid for its length.
        let n = unsafe { recv(conn.fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0) };
        if n > 0 {
            if let Err(e) = call.reader.feed(&buf[..n as usize]) {
                return Step::Done(Err(e));
            }
            match deliver(call, c) {
                Step::Wait => continue,
                other => return other,
            }
        }
        if n == 0 {
            if let Err(e) = call.reader.eof() {
                return Step::Done(Err(e));
            }
            return match deliver(call, c) {
                Step::Wait => Step::Done(Err("etcd ended the stream".to_owned())),
                other => other,
            };
        }
        let err = ngx_socket_errno();
        if err == EINTR as i32 {
            continue;
        }
        if err != EAGAIN as i32 {
            return failed("recv() from", err);
        }
        // SAFETY: the live connection's read event.
        unsafe {
            (*conn.read).set_ready(0);
            if ngx_handle_read_event(conn.read, 0) != NGX_OK as isize {
                return failed("recv() from", err);
            }
        }
        return Step::Wait;
    }
}

/// Hands what the answer holds so far to the callback; `c` is the call's open connection.
fn deliver(call: &mut Call, c: *mut ngx_connection_t) -> Step {
    let Some(status) = call.reader.status() else {
        return Step::Wait;
    };
    if call.stream && status == 200 {
        // SAFETY: the call's open connection: a stream, once started, has no timeout.
        unsafe {
            if (*(*c).read).timer_set() != 0 {
                ngx::ffi::ngx_del_timer((*c).read);
            }
        }
        let values = match take_json_values(&mut call.reader.body) {
            Ok(v) => v,
            Err(e) => return Step::Done(Err(e)),
        };
        for v in values {
            hc_debug!("etcd stream message: {v}");
            if (call.on)(CallEvent::Message(v)) == Flow::Stop {
                return Step::Stopped;
            }
        }
        if call.reader.complete() {
            return Step::Done(Err("etcd ended the stream".to_owned()));
        }
        return Step::Wait;
    }
    if !call.reader.complete() {
        return Step::Wait;
    }
    Step::Done(parse_body(status, &call.reader.body))
}
