//! One stream probe on nginx's event loop: tcp (connect; then send and read until the
//! expectation is met or refuted, when given) or udp (a connected socket: send a datagram, wait
//! for an answer; an ICMP port unreachable ends it at once as refused). A probe ends with an
//! outcome for the peer, or with a local error that gives no verdict.

use core::ffi::c_void;
use core::mem::{size_of, zeroed};
use core::ptr;
use std::time::Instant;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_peer_connection_t,
    ngx_socket_errno, ngx_str_t, recv, send, sockaddr, sockaddr_storage, socklen_t, EAGAIN, EINTR,
    MSG_NOSIGNAL, NGX_AGAIN, NGX_DECLINED, NGX_OK,
};
use upstream_healthcheck_core::outcome::{classify_connect_errno, ConnectError, Failure, Outcome};
use upstream_healthcheck_core::policy::connection_reusable;
use upstream_healthcheck_core::schedule::timeout_is_verdict;
use upstream_healthcheck_core::stream::{Expect, Judgement, StreamType, EXPECT_WINDOW};

use upstream_healthcheck_glue::socket::{io_failure, set_errno, set_port, socket_error, strerror};

use crate::keepalive;
use crate::worker::{exiting, finish, with_any_worker, Worker};
use upstream_healthcheck_glue::hc_debug;

/// How a probe ended.
pub enum Ended {
    /// The peer answered (or failed to): this counts towards its verdict.
    Outcome(Outcome),
    /// The probe could not run for a reason of this host: no verdict.
    Local(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Sending,
    Reading,
}

/// A probe in flight; owned by its connection's `data` until it ends, and listed in the
/// worker's `probes` at `index`.
pub struct Probe {
    index: usize,
    slot: usize,
    started: Instant,
    stage: Stage,
    kind: StreamType,
    send: &'static [u8],
    expect: Option<&'static Expect>,
    sent: usize,
    /// The answer so far (tcp), at most the expectation's window.
    answer: Vec<u8>,
    timeout_ms: u64,
    /// `keepalive=N`: probes one connection may carry (0: a connection per probe).
    keepalive: u32,
    /// Probes the connection carried before this one.
    carried: u32,
    /// The connection was kept idle from an earlier probe.
    reused: bool,
    sockaddr: sockaddr_storage,
    name: ngx_str_t,
    pc: ngx_peer_connection_t,
}

/// What to do after advancing a probe.
enum Next {
    Wait,
    End(Ended),
    /// A kept connection turned out closed by the peer before any answer: connect anew.
    Reconnect,
}

fn failed(f: Failure) -> Next {
    Next::End(Ended::Outcome(Outcome::failed(f, None)))
}

/// A failure of the connection itself: on a kept connection before any answer, the peer
/// closed it while idle, so the probe connects anew instead.
fn broken(probe: &Probe, f: Failure) -> Next {
    if probe.reused && probe.answer.is_empty() {
        Next::Reconnect
    } else {
        failed(f)
    }
}

fn passed() -> Next {
    Next::End(Ended::Outcome(Outcome::ok(None)))
}

/// Starts the probe of `slot`: `None` when it is in flight (it reports to `worker::finish`
/// when it ends), or how it ended at once and whether its connection was kept.
pub fn start(w: &mut Worker, slot: usize) -> Option<(Ended, bool)> {
    let (up, check, peer) = w.check_of(slot)?;
    let rr = w.targets[slot].rr;
    if rr.is_null() {
        let why = format!(
            "peer {} of stream upstream \"{}\" was not found among nginx's peers",
            peer.name, up.name
        );
        return Some((Ended::Local(why), false));
    }
    let mut probe = Box::new(Probe {
        index: 0,
        slot,
        started: Instant::now(),
        stage: Stage::Connecting,
        kind: check.kind,
        send: &check.send,
        expect: check.expect.as_ref(),
        sent: 0,
        answer: Vec::new(),
        timeout_ms: check.params.timeout_ms,
        keepalive: check.params.keepalive,
        carried: 0,
        reused: false,
        // SAFETY: all-zero is a valid (empty) sockaddr_storage.
        sockaddr: unsafe { zeroed() },
        name: ngx_str_t::default(),
        // SAFETY: all-zero is the idle state of ngx_peer_connection_t.
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
    if probe.kind == StreamType::Udp {
        probe.pc.type_ = libc::SOCK_DGRAM;
    }
    let idle = keepalive::take(w, slot);
    let p = Box::into_raw(probe);
    // SAFETY: p is the fresh probe, owned here until it is listed below or freed; an idle
    // connection is open and now the probe's.
    let next = unsafe {
        match idle {
            Some(idle) => {
                (*p).reused = true;
                (*p).carried = idle.carried;
                (*p).stage = Stage::Sending;
                attach(p, idle.c);
                drive(p, idle.c)
            }
            None => connect(p),
        }
    };
    // SAFETY: p is live.
    let next = match next {
        Next::Reconnect => unsafe { reconnect(p) },
        next => next,
    };
    match next {
        Next::End(ended) => {
            // SAFETY: p ended before anyone else saw it; its connection may be kept.
            let kept = unsafe { release(p, &ended, Some(w)) };
            Some((ended, kept))
        }
        Next::Reconnect => {
            // SAFETY: p ended before anyone else saw it (reconnect never answers Reconnect, so
            // no new connection is in flight).
            unsafe { release(p, &Ended::Local(String::new()), None) };
            Some((Ended::Local("reconnect loop".into()), false))
        }
        Next::Wait => {
            // SAFETY: p is live and in flight: the worker's list owns it from here.
            unsafe { (*p).index = w.probes.len() };
            w.probes.push(p);
            None
        }
    }
}

/// Opens the probe's connection and drives it as far as it goes at once.
///
/// # Safety
/// `p` must be a live probe without a connection.
unsafe fn connect(p: *mut Probe) -> Next {
    // SAFETY: per the contract.
    let probe = unsafe { &mut *p };
    set_errno(0);
    // SAFETY: pc is fully set up; the probe stays alive meanwhile.
    let rc = unsafe { ngx_event_connect_peer(&mut probe.pc) };
    let c = probe.pc.connection;
    if rc == NGX_DECLINED as isize {
        probe.pc.connection = ptr::null_mut();
        let err = ngx_socket_errno();
        return Next::End(match classify_connect_errno(err) {
            ConnectError::Peer(f) => Ended::Outcome(Outcome::failed(f, None)),
            ConnectError::Local => {
                Ended::Local(format!("connect() failed ({err}: {})", strerror(err)))
            }
        });
    }
    if (rc != NGX_OK as isize && rc != NGX_AGAIN as isize) || c.is_null() {
        probe.pc.connection = ptr::null_mut();
        return Next::End(Ended::Local(
            "no socket or no free connection, worker_connections are not enough".to_string(),
        ));
    }
    // SAFETY: c is the probe's new connection, with no timer.
    unsafe { attach(p, c) };
    if rc == NGX_OK as isize {
        // Connected at once (udp): it may end right here.
        // SAFETY: p and c are the live probe and its connection.
        return unsafe { drive(p, c) };
    }
    Next::Wait
}

/// Makes `c` the probe's connection: its handlers, its data and what is left of the timeout.
///
/// # Safety
/// `p` must be a live probe and `c` an open connection with no timer.
unsafe fn attach(p: *mut Probe, c: *mut ngx_connection_t) {
    // SAFETY: per the contract.
    unsafe {
        let probe = &mut *p;
        probe.pc.connection = c;
        (*c).data = p as *mut c_void;
        (*c).log = probe.pc.log;
        (*(*c).read).log = probe.pc.log;
        (*(*c).write).log = probe.pc.log;
        (*(*c).read).handler = Some(on_event);
        (*(*c).write).handler = Some(on_event);
        (*(*c).read).set_cancelable(1);
        (*(*c).write).set_cancelable(1);
        let spent = probe.started.elapsed().as_millis() as u64;
        let left = probe.timeout_ms.saturating_sub(spent).max(1);
        ngx::ffi::ngx_add_timer((*c).read, left as _);
    }
}

/// Closes a kept connection found closed and connects anew, within the same probe.
///
/// # Safety
/// `p` must be a live probe whose connection is open.
unsafe fn reconnect(p: *mut Probe) -> Next {
    // SAFETY: per the contract.
    let probe = unsafe { &mut *p };
    // SAFETY: the probe's own open connection; it is gone after this.
    unsafe { ngx_close_connection(probe.pc.connection) };
    probe.pc.connection = ptr::null_mut();
    probe.reused = false;
    probe.carried = 0;
    probe.sent = 0;
    probe.answer.clear();
    probe.stage = Stage::Connecting;
    // SAFETY: per the contract, now without a connection.
    match unsafe { connect(p) } {
        Next::Reconnect => Next::End(Ended::Local("reconnect loop".into())),
        next => next,
    }
}

/// Read and write handler of probe connections.
extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls handlers with the connection's own events; data is the connection
    // whose data is the probe, live until `end`.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let p = (*c).data as *mut Probe;
        let next = if (*ev).timedout() != 0 {
            let late = (*p).started.elapsed().as_millis() as u64;
            let late = late.saturating_sub((*p).timeout_ms);
            if timeout_is_verdict(late) {
                failed(Failure::Timeout)
            } else {
                Next::End(Ended::Local(format!(
                    "a probe's timeout fired {late} ms late, this worker was held up"
                )))
            }
        } else {
            drive(p, c)
        };
        let next = match next {
            Next::Reconnect => reconnect(p),
            next => next,
        };
        if let Next::End(ended) = next {
            end(p, ended);
        }
    }
}

/// Ends a probe in flight: off the worker's list, connection closed, result recorded.
///
/// # Safety
/// `p` must be a live probe on the worker's list.
unsafe fn end(p: *mut Probe, ended: Ended) {
    // SAFETY: per the contract.
    let (slot, started, index) = unsafe { ((*p).slot, (*p).started, (*p).index) };
    with_any_worker(|w| {
        if index < w.probes.len() && w.probes[index] == p {
            w.probes.swap_remove(index);
            if let Some(&moved) = w.probes.get(index) {
                // SAFETY: every listed probe is live.
                unsafe { (*moved).index = index };
            }
        }
    });
    let mut ended = Some(ended);
    crate::worker::with_worker(|w| {
        let Some(ended) = ended.take() else { return };
        // SAFETY: p is off the list and referenced nowhere else now.
        let kept = unsafe { release(p, &ended, Some(w)) };
        finish(w, slot, ended, started, kept)
    });
    if let Some(ended) = ended {
        // SAFETY: p is off the list and referenced nowhere else now; with no worker there is
        // nowhere to keep the connection or record the result.
        unsafe { release(p, &ended, None) };
    }
}

/// Frees a probe that ended: its connection is kept idle in `w` when it passed and may carry
/// another probe (`keepalive=N`, true then), closed (with its timer and events) otherwise.
///
/// # Safety
/// `p` must be a live probe referenced nowhere else.
unsafe fn release(p: *mut Probe, ended: &Ended, w: Option<&mut Worker>) -> bool {
    // SAFETY: per the contract; p came from Box::into_raw.
    let probe = unsafe { Box::from_raw(p) };
    let c = probe.pc.connection;
    if c.is_null() {
        return false;
    }
    let carried = probe.carried.saturating_add(1);
    let passed = matches!(ended, Ended::Outcome(o) if o.failure.is_none());
    let reusable = probe.kind == StreamType::Tcp && !probe.send.is_empty() && passed;
    match w {
        Some(w) if !exiting() && connection_reusable(reusable, carried, probe.keepalive) => {
            // SAFETY: the probe's own open connection; its timer goes, the worker keeps it.
            unsafe {
                if (*(*c).read).timer_set() != 0 {
                    ngx::ffi::ngx_del_timer((*c).read);
                }
                keepalive::park(w, probe.slot, c, carried);
            }
            true
        }
        _ => {
            // SAFETY: the probe's own open connection.
            unsafe { ngx_close_connection(c) };
            false
        }
    }
}

/// Closes a probe in flight without a verdict (the worker is exiting).
///
/// # Safety
/// `p` must be a live probe taken off the worker's list.
pub unsafe fn abort(p: *mut Probe) {
    // SAFETY: per the contract.
    unsafe { release(p, &Ended::Local(String::new()), None) };
}

/// After the send: what a probe without an expectation concludes, or read on.
fn after_send(probe: &mut Probe) -> Option<Next> {
    if probe.expect.is_none() && probe.kind == StreamType::Tcp {
        return Some(passed());
    }
    probe.stage = Stage::Reading;
    None
}

/// Advances the probe as far as the socket allows.
///
/// # Safety
/// `p` and `c` must be the live probe and its connection.
unsafe fn drive(p: *mut Probe, c: *mut ngx_connection_t) -> Next {
    // SAFETY: per the contract.
    let (probe, conn) = unsafe { (&mut *p, &mut *c) };
    if probe.stage == Stage::Connecting {
        // SAFETY: events of a live connection.
        let (rev, wev) = unsafe { (&*conn.read, &*conn.write) };
        if probe.kind == StreamType::Tcp && rev.ready() == 0 && wev.ready() == 0 {
            return Next::Wait;
        }
        let err = socket_error(conn);
        if err != 0 {
            hc_debug!("stream probe connect() failed ({err})");
            return failed(io_failure(err));
        }
        probe.stage = if !probe.send.is_empty() {
            Stage::Sending
        } else if probe.expect.is_some() {
            Stage::Reading
        } else {
            return passed();
        };
    }
    if probe.stage == Stage::Sending {
        while probe.sent < probe.send.len() {
            let rest = &probe.send[probe.sent..];
            // SAFETY: fd is the connection's socket; rest is readable.
            let n = unsafe {
                send(
                    conn.fd,
                    rest.as_ptr() as *const c_void,
                    rest.len(),
                    MSG_NOSIGNAL as i32,
                )
            };
            if n >= 0 {
                probe.sent += n as usize;
                continue;
            }
            let err = ngx_socket_errno();
            if err == EINTR as i32 {
                continue;
            }
            if err == EAGAIN as i32 {
                // SAFETY: the connection's write event.
                unsafe {
                    (*conn.write).set_ready(0);
                    if ngx_handle_write_event(conn.write, 0) != NGX_OK as isize {
                        return Next::End(Ended::Local("cannot wait for the socket".into()));
                    }
                }
                return Next::Wait;
            }
            return broken(probe, io_failure(err));
        }
        if let Some(next) = after_send(probe) {
            return next;
        }
    }
    // Reading.
    let mut buf = [0u8; EXPECT_WINDOW];
    loop {
        let room = match probe.kind {
            StreamType::Tcp => EXPECT_WINDOW - probe.answer.len().min(EXPECT_WINDOW),
            StreamType::Udp => EXPECT_WINDOW,
        }
        .max(1);
        // SAFETY: fd is the connection's socket; buf has room for `room` bytes.
        let n = unsafe { recv(conn.fd, buf.as_mut_ptr() as *mut c_void, room, 0) };
        if n < 0 {
            let err = ngx_socket_errno();
            if err == EINTR as i32 {
                continue;
            }
            if err == EAGAIN as i32 {
                // SAFETY: the connection's read event.
                unsafe {
                    (*conn.read).set_ready(0);
                    if ngx_handle_read_event(conn.read, 0) != NGX_OK as isize {
                        return Next::End(Ended::Local("cannot wait for the socket".into()));
                    }
                }
                return Next::Wait;
            }
            hc_debug!("stream probe recv() failed ({err})");
            return broken(probe, io_failure(err));
        }
        let got = &buf[..n as usize];
        if probe.kind == StreamType::Udp {
            // A datagram is a whole answer.
            return match probe.expect.map_or(Judgement::Met, |e| e.judge(got, true)) {
                Judgement::Met => passed(),
                _ => failed(Failure::Mismatch),
            };
        }
        let closed = n == 0;
        probe.answer.extend_from_slice(got);
        let Some(expect) = probe.expect else {
            return passed();
        };
        if closed && probe.answer.is_empty() && probe.reused {
            return Next::Reconnect;
        }
        match expect.judge(&probe.answer, closed) {
            Judgement::Met => return passed(),
            Judgement::Refuted if closed && probe.answer.is_empty() => {
                return failed(Failure::Closed)
            }
            Judgement::Refuted => return failed(Failure::Mismatch),
            Judgement::NeedMore => {}
        }
    }
}
