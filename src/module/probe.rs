//! One probe connection on nginx's event loop: connect, send the request, read the status line.

use core::ffi::c_void;
use core::mem::{size_of, zeroed};
use core::ptr;
use std::time::Instant;

use ngx::ffi::{
    getsockopt, ngx_close_connection, ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_peer_connection_t,
    ngx_socket_errno, ngx_str_t, recv, send, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage,
    socklen_t, AF_INET, AF_INET6, EAGAIN, ECONNREFUSED, EINTR, MSG_NOSIGNAL, NGX_AGAIN, NGX_OK,
    SOL_SOCKET, SO_ERROR,
};

use crate::config::{CheckType, ValidStatuses};
use crate::module::worker::{is_stale, Worker};
use crate::outcome::{Failure, Outcome};
use crate::status_line::{judge, Progress, StatusLineParser};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Sending,
    Reading,
}

/// A probe in flight; owned by its connection's `data` until it ends, and listed in the
/// worker's `probes`.
pub struct Probe {
    worker: *mut Worker,
    slot: usize,
    started: Instant,
    stage: Stage,
    check_type: CheckType,
    request: &'static [u8],
    valid: &'static ValidStatuses,
    sent: usize,
    parser: StatusLineParser,
    sockaddr: sockaddr_storage,
    name: ngx_str_t,
    pc: ngx_peer_connection_t,
}

/// Starts the probe of `slot`. It reports to `Worker::finish` exactly once, possibly before
/// this function returns.
pub fn start(w: &mut Worker, slot: usize, started: Instant) {
    let Some((_, check, _)) = w.check_of(slot) else {
        return;
    };
    let rr = w.targets[slot].rr;
    if rr.is_null() {
        w.finish(slot, Outcome::failed(Failure::Refused, None), started);
        return;
    }
    let worker: *mut Worker = w;
    let mut probe = Box::new(Probe {
        worker,
        slot,
        started,
        stage: Stage::Connecting,
        check_type: check.params.check_type,
        request: &check.request,
        valid: &check.valid,
        sent: 0,
        parser: StatusLineParser::new(),
        // SAFETY: all-zero is a valid (empty) sockaddr_storage.
        sockaddr: unsafe { zeroed() },
        name: ngx_str_t::default(),
        // SAFETY: all-zero is the idle state of ngx_peer_connection_t, as nginx's own
        // ngx_pcalloc'ed ones start.
        pc: unsafe { zeroed() },
    });

    // SAFETY: rr is a live peer; its sockaddr is socklen bytes long and fits the storage.
    unsafe {
        let rr = &*rr;
        let len = (rr.socklen as usize).min(size_of::<sockaddr_storage>());
        ptr::copy_nonoverlapping(
            rr.sockaddr as *const u8,
            &mut probe.sockaddr as *mut _ as *mut u8,
            len,
        );
        probe.name = rr.name;
        if let Some(port) = check.params.port {
            set_port(&mut probe.sockaddr, port);
        }
        probe.pc.sockaddr = &mut probe.sockaddr as *mut _ as *mut sockaddr;
        probe.pc.socklen = len as socklen_t;
    }
    probe.pc.name = &mut probe.name;
    probe.pc.get = Some(ngx_event_get_peer);
    probe.pc.log = &mut w.probe_log;
    probe.pc.set_log_error(1); // NGX_ERROR_ERR

    let p = Box::into_raw(probe);
    // SAFETY: p is a valid probe; pc is fully set up for a TCP connect.
    let rc = unsafe { ngx_event_connect_peer(&mut (*p).pc) };
    // SAFETY: as above.
    let c = unsafe { (*p).pc.connection };
    if (rc != NGX_OK as isize && rc != NGX_AGAIN as isize) || c.is_null() {
        // Refused at once (ECONNREFUSED on loopback), or no connection could be made.
        // SAFETY: nginx closed the connection itself on failure; p is ours.
        unsafe { end(p, ptr::null_mut(), Outcome::failed(Failure::Refused, None)) };
        return;
    }
    // SAFETY: p stays valid until end or abort take it off this list.
    unsafe { (*(*p).worker).probes.push(p) };
    // SAFETY: c is the new connection; its events and log belong to this probe now.
    unsafe {
        (*c).data = p as *mut c_void;
        (*(*c).read).handler = Some(on_event);
        (*(*c).write).handler = Some(on_event);
        (*(*c).read).set_cancelable(1);
        (*(*c).write).set_cancelable(1);
        ngx::ffi::ngx_add_timer((*c).read, check.params.timeout_ms as _);
        if rc == NGX_OK as isize {
            drive(p, c);
        }
    }
}

/// Puts `port` into an IPv4 or IPv6 address.
fn set_port(sa: &mut sockaddr_storage, port: u16) {
    // SAFETY: the family says which layout the storage holds; both fit in sockaddr_storage.
    unsafe {
        match sa.ss_family as u32 {
            AF_INET => (*(sa as *mut _ as *mut sockaddr_in)).sin_port = port.to_be(),
            AF_INET6 => (*(sa as *mut _ as *mut sockaddr_in6)).sin6_port = port.to_be(),
            _ => {}
        }
    }
}

/// Read and write handler of probe connections.
extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls handlers with the connection's own events; data is the connection
    // whose data is the probe, set in start and live until end.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let p = (*c).data as *mut Probe;
        if (*ev).timedout() != 0 {
            end(p, c, Outcome::failed(Failure::Timeout, None));
            return;
        }
        drive(p, c);
    }
}

fn socket_error(c: &ngx_connection_t) -> i32 {
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

fn io_failure(err: i32) -> Failure {
    if err == ECONNREFUSED as i32 {
        Failure::Refused
    } else {
        Failure::Reset
    }
}

/// Advances the probe as far as the socket allows.
///
/// # Safety
/// `p` and `c` must be the live probe and its connection.
unsafe fn drive(p: *mut Probe, c: *mut ngx_connection_t) {
    // SAFETY: per the contract.
    let (probe, conn) = unsafe { (&mut *p, &mut *c) };
    if probe.stage == Stage::Connecting {
        // SAFETY: events of a live connection.
        let (rev, wev) = unsafe { (&*conn.read, &*conn.write) };
        if rev.ready() == 0 && wev.ready() == 0 {
            return;
        }
        let err = socket_error(conn);
        if err != 0 {
            // SAFETY: ending the live probe.
            unsafe { end(p, c, Outcome::failed(io_failure(err), None)) };
            return;
        }
        if probe.check_type == CheckType::Tcp {
            // SAFETY: as above.
            unsafe { end(p, c, Outcome::ok(None)) };
            return;
        }
        probe.stage = Stage::Sending;
    }

    if probe.stage == Stage::Sending {
        while probe.sent < probe.request.len() {
            let rest = &probe.request[probe.sent..];
            // SAFETY: fd is a connected socket; rest is a valid buffer.
            let n = unsafe {
                send(
                    conn.fd,
                    rest.as_ptr() as *const c_void,
                    rest.len(),
                    MSG_NOSIGNAL as i32,
                )
            };
            if n > 0 {
                probe.sent += n as usize;
                continue;
            }
            // SAFETY: the live probe, its connection and its write event.
            if !unsafe { io_error(p, c, conn.write) } {
                return;
            }
        }
        probe.stage = Stage::Reading;
    }

    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: fd is a connected socket; buf is writable for its length.
        let n = unsafe { recv(conn.fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0) };
        if n > 0 {
            let outcome = match probe.parser.feed(&buf[..n as usize]) {
                Progress::NeedMore => continue,
                Progress::Status(status) => judge(status, probe.valid),
                Progress::Invalid(_) => Outcome::failed(Failure::BadResponse, None),
            };
            // SAFETY: ending the live probe.
            unsafe { end(p, c, outcome) };
            return;
        }
        if n == 0 {
            // SAFETY: as above.
            unsafe { end(p, c, Outcome::failed(Failure::Closed, None)) };
            return;
        }
        // SAFETY: the live probe, its connection and its read event.
        if !unsafe { io_error(p, c, conn.read) } {
            return;
        }
    }
}

/// Deals with a send or recv on `ev`'s side that moved no data: true when interrupted (try
/// again at once); otherwise waits for the event (EAGAIN) or ends the probe, and gives false.
///
/// # Safety
/// `p` and `c` must be the live probe and its connection, `ev` one of its events.
unsafe fn io_error(p: *mut Probe, c: *mut ngx_connection_t, ev: *mut ngx_event_t) -> bool {
    let err = ngx_socket_errno();
    if err == EINTR as i32 {
        return true;
    }
    // SAFETY: per the contract.
    unsafe {
        if err != EAGAIN as i32 {
            end(p, c, Outcome::failed(io_failure(err), None));
            return false;
        }
        (*ev).set_ready(0);
        let rc = if (*ev).write() != 0 {
            ngx_handle_write_event(ev, 0)
        } else {
            ngx_handle_read_event(ev, 0)
        };
        if rc != NGX_OK as isize {
            end(p, c, Outcome::failed(Failure::Reset, None));
        }
    }
    false
}

/// Closes the connection (which also removes its timer and events), frees the probe and
/// reports the outcome.
///
/// # Safety
/// `p` must be a live probe from `start`; `c` its connection or null.
unsafe fn end(p: *mut Probe, c: *mut ngx_connection_t, outcome: Outcome) {
    // SAFETY: per the contract; after this the probe and connection are gone.
    unsafe {
        if !c.is_null() {
            ngx_close_connection(c);
        }
        let probe = Box::from_raw(p);
        let w = &mut *probe.worker;
        w.probes.retain(|&q| q != p);
        if !is_stale(w) {
            w.finish(probe.slot, outcome, probe.started);
        }
    }
}

/// Closes a probe without a verdict, as the worker exits.
///
/// # Safety
/// `p` must be a live probe that has been taken off the worker's list.
pub unsafe fn abort(p: *mut Probe) {
    // SAFETY: per the contract, the probe and its connection are live.
    unsafe {
        let probe = Box::from_raw(p);
        if !probe.pc.connection.is_null() {
            ngx_close_connection(probe.pc.connection);
        }
    }
}
