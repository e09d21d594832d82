//! One probe connection on nginx's event loop: connect, (for https) the TLS handshake, send the
//! request, read the status line.
//! A probe ends with an outcome for the peer, or with a local error that gives no verdict.

use core::ffi::c_void;
use core::mem::{size_of, zeroed};
use core::ptr;
use std::time::Instant;

use ngx::ffi::{
    getsockopt, ngx_close_connection, ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_peer_connection_t,
    ngx_socket_errno, ngx_str_t, recv, send, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage,
    socklen_t, AF_INET, AF_INET6, EAGAIN, ECONNREFUSED, EINTR, MSG_NOSIGNAL, NGX_AGAIN,
    NGX_DECLINED, NGX_OK, SOL_SOCKET, SO_ERROR,
};

use crate::config::{CheckType, ValidStatuses};
use crate::escape::LogEscaped;
use crate::module::log::hc_debug;
use crate::module::process::{with_any_worker, Worker};
use crate::module::tick;
use crate::module::tls::{self, ProbeTls, TlsContext};
use crate::outcome::{classify_connect_errno, ConnectError, Failure, Outcome};
use crate::status_line::{judge, Progress, StatusLineParser};

/// How a probe ended.
pub enum Ended {
    /// The peer answered (or failed to): this counts towards its verdict.
    Outcome(Outcome),
    /// The probe could not run for a reason of this host (the text says which): no verdict.
    Local(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    /// TLS: `handshaking` says whether nginx has it in hand already.
    Handshake,
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
    check_type: CheckType,
    request: &'static [u8],
    valid: &'static ValidStatuses,
    sent: usize,
    parser: StatusLineParser,
    sockaddr: sockaddr_storage,
    name: ngx_str_t,
    pc: ngx_peer_connection_t,
    /// The upstream's TLS context, for https.
    tls_ctx: Option<&'static TlsContext>,
    handshaking: bool,
    tls: ProbeTls,
}

impl Probe {
    /// The probe's TLS state, for nginx's session callback.
    pub fn tls_mut(&mut self) -> &mut ProbeTls {
        &mut self.tls
    }
}

/// Starts the probe of `slot`: `None` when it is in flight (it reports to `tick::finish` when
/// it ends), or how it ended at once.
pub fn start(w: &mut Worker, slot: usize) -> Option<Ended> {
    let (up, check, peer) = w.check_of(slot)?;
    let rr = w.targets[slot].rr;
    if rr.is_null() {
        return Some(Ended::Local(format!(
            "peer {} of upstream \"{}\" was not found among nginx's peers",
            peer.name, up.name
        )));
    }
    hc_debug!(
        "probe of {} in upstream \"{}\" starts",
        LogEscaped(peer.name),
        LogEscaped(&up.name)
    );
    let started = Instant::now();
    let mut probe = Box::new(Probe {
        index: 0,
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
        tls_ctx: check.tls.as_ref(),
        handshaking: false,
        tls: ProbeTls::default(),
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
    probe.pc.log = if probe.tls_ctx.is_some() {
        &mut w.tls_log
    } else {
        &mut w.probe_log
    };
    probe.pc.set_log_error(1); // NGX_ERROR_ERR

    // errno tells a refused connect from a local failure; nginx leaves it as connect() set it.
    set_errno(0);
    // SAFETY: pc is fully set up for a TCP or unix connect; probe stays alive meanwhile.
    let rc = unsafe { ngx_event_connect_peer(&mut probe.pc) };
    let c = probe.pc.connection;
    if rc == NGX_DECLINED as isize {
        // connect() failed at once (nginx closed the socket): refused on loopback, a missing
        // unix socket, or a local shortage such as no free source port.
        let err = ngx_socket_errno();
        hc_debug!(
            "probe of {} connect() failed ({err})",
            LogEscaped(peer.name)
        );
        return Some(match classify_connect_errno(err) {
            ConnectError::Peer(f) => Ended::Outcome(Outcome::failed(f, None)),
            ConnectError::Local => {
                Ended::Local(format!("connect() failed ({err}: {})", strerror(err)))
            }
        });
    }
    if (rc != NGX_OK as isize && rc != NGX_AGAIN as isize) || c.is_null() {
        // No socket or no free connection (nginx cleaned up): a shortage of this host.
        let err = ngx_socket_errno();
        return Some(Ended::Local(if err == 0 {
            "no free connection, worker_connections are not enough".to_string()
        } else {
            format!("no socket ({err}: {})", strerror(err))
        }));
    }
    // SAFETY: c is the new connection; its events and log belong to this probe now. The
    // probe's address is its box's, which stays the same once it is handed to the list.
    unsafe {
        (*c).data = &mut *probe as *mut Probe as *mut c_void;
        (*(*c).read).handler = Some(on_event);
        (*(*c).write).handler = Some(on_event);
        (*(*c).read).set_cancelable(1);
        (*(*c).write).set_cancelable(1);
        ngx::ffi::ngx_add_timer((*c).read, check.params.timeout_ms as _);
    }
    if let Some(ctx) = probe.tls_ctx {
        // SAFETY: c is the new connection and its data is the probe.
        if let Err(e) = unsafe { tls::attach(c, ctx, &w.tls_sessions, slot) } {
            // SAFETY: c is this probe's connection.
            unsafe { close(c) };
            return Some(Ended::Local(e));
        }
    }
    if rc == NGX_OK as isize {
        // Connected at once (a unix socket): the probe may end right here.
        let p: *mut Probe = &mut *probe;
        // SAFETY: p and c are the live probe and its connection, not yet shared with nginx's
        // handlers (no event can fire before we return to the event loop).
        if let Some(ended) = unsafe { drive(p, c) } {
            // SAFETY: c is this probe's connection.
            unsafe { close(c) };
            w.tls_sessions.update(slot, &mut probe.tls);
            return Some(ended);
        }
    }
    probe.index = w.probes.len();
    let p = Box::into_raw(probe);
    w.probes.push(p);
    // The connection's data owns the probe from now until end or abort.
    None
}

fn set_errno(v: i32) {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = v };
}

fn strerror(err: i32) -> String {
    std::io::Error::from_raw_os_error(err)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
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

/// nginx calls this when a handshake it had in hand is done, failed or timed out.
unsafe extern "C" fn on_handshake(c: *mut ngx_connection_t) {
    // SAFETY: nginx calls the handler with the probe's connection, whose data is the probe.
    unsafe {
        let p = (*c).data as *mut Probe;
        if let Some(ended) = drive(p, c) {
            end(p, c, ended);
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
        let ended = if (*ev).timedout() != 0 {
            Some(Ended::Outcome(Outcome::failed(Failure::Timeout, None)))
        } else {
            drive(p, c)
        };
        if let Some(ended) = ended {
            end(p, c, ended);
        }
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

/// Advances the probe as far as the socket allows; returns how it ended, if it did.
///
/// # Safety
/// `p` and `c` must be the live probe and its connection.
unsafe fn drive(p: *mut Probe, c: *mut ngx_connection_t) -> Option<Ended> {
    let failed = |f: Failure| Some(Ended::Outcome(Outcome::failed(f, None)));
    // SAFETY: per the contract.
    let (probe, conn) = unsafe { (&mut *p, &mut *c) };
    if probe.stage == Stage::Connecting {
        // SAFETY: events of a live connection.
        let (rev, wev) = unsafe { (&*conn.read, &*conn.write) };
        if rev.ready() == 0 && wev.ready() == 0 {
            return None;
        }
        let err = socket_error(conn);
        if err != 0 {
            hc_debug!("probe connect() failed ({err})");
            return Some(match classify_connect_errno(err) {
                ConnectError::Peer(f) => Ended::Outcome(Outcome::failed(f, None)),
                ConnectError::Local => {
                    Ended::Local(format!("connect() failed ({err}: {})", strerror(err)))
                }
            });
        }
        hc_debug!("probe connected");
        if probe.check_type == CheckType::Tcp {
            return Some(Ended::Outcome(Outcome::ok(None)));
        }
        probe.stage = match probe.tls_ctx {
            Some(_) => Stage::Handshake,
            None => Stage::Sending,
        };
    }

    if probe.stage == Stage::Handshake {
        let ctx = probe.tls_ctx?;
        let passed = if probe.handshaking {
            // SAFETY: the live connection, with TLS attached in start.
            unsafe { tls::finish(c, ctx) }
        } else {
            probe.handshaking = true;
            // SAFETY: as above.
            unsafe { tls::handshake(c, ctx, Some(on_handshake))? }
        };
        if let Err(outcome) = passed {
            return Some(Ended::Outcome(outcome));
        }
        hc_debug!("probe TLS handshake done");
        probe.tls.passed = true;
        // SAFETY: nginx's handshake handler had the events; they are the probe's again.
        unsafe {
            (*conn.read).handler = Some(on_event);
            (*conn.write).handler = Some(on_event);
        }
        probe.stage = Stage::Sending;
    }

    if probe.stage == Stage::Sending {
        while probe.sent < probe.request.len() {
            // SAFETY: the live, connected probe connection.
            match unsafe { conn_send(c, &probe.request[probe.sent..]) } {
                Io::Moved(n) => probe.sent += n,
                Io::Eof => return failed(Failure::Closed),
                Io::Wait => return None,
                Io::Failed(f) => return failed(f),
            }
        }
        probe.stage = Stage::Reading;
    }

    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: the live, connected probe connection.
        match unsafe { conn_recv(c, &mut buf) } {
            Io::Moved(n) => {
                let outcome = match probe.parser.feed(&buf[..n]) {
                    Progress::NeedMore => continue,
                    Progress::Status(status) => judge(status, probe.valid),
                    Progress::Invalid(_) => Outcome::failed(Failure::BadResponse, None),
                };
                return Some(Ended::Outcome(outcome));
            }
            Io::Eof => return failed(Failure::Closed),
            Io::Wait => return None,
            Io::Failed(f) => return failed(f),
        }
    }
}

/// What one send or recv on a probe connection did.
enum Io {
    /// This many bytes (more than 0) went out or came in.
    Moved(usize),
    /// The peer closed the connection.
    Eof,
    /// Nothing to do until the event fires again (it is armed).
    Wait,
    Failed(Failure),
}

/// Sends what it can of `data`: through nginx's TLS layer (`c->send` is `ngx_ssl_write` once
/// the handshake is done) or straight to the socket.
///
/// # Safety
/// `c` must be a live, connected probe connection.
unsafe fn conn_send(c: *mut ngx_connection_t, data: &[u8]) -> Io {
    // SAFETY: per the contract.
    unsafe {
        if !(*c).ssl.is_null() {
            let Some(send_fn) = (*c).send else {
                return Io::Failed(Failure::Reset);
            };
            let n = send_fn(c, data.as_ptr() as *mut u8, data.len());
            return tls_io(c, n, true);
        }
        loop {
            let n = send(
                (*c).fd,
                data.as_ptr() as *const c_void,
                data.len(),
                MSG_NOSIGNAL as i32,
            );
            if n > 0 {
                return Io::Moved(n as usize);
            }
            match io_error((*c).write) {
                Retry::Again => continue,
                Retry::Done(io) => return io,
            }
        }
    }
}

/// Reads what there is into `buf`, as `conn_send` writes.
///
/// # Safety
/// `c` must be a live, connected probe connection.
unsafe fn conn_recv(c: *mut ngx_connection_t, buf: &mut [u8]) -> Io {
    // SAFETY: per the contract.
    unsafe {
        if !(*c).ssl.is_null() {
            let Some(recv_fn) = (*c).recv else {
                return Io::Failed(Failure::Reset);
            };
            let n = recv_fn(c, buf.as_mut_ptr(), buf.len());
            return tls_io(c, n, false);
        }
        loop {
            let n = recv((*c).fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0);
            if n > 0 {
                return Io::Moved(n as usize);
            }
            if n == 0 {
                return Io::Eof;
            }
            match io_error((*c).read) {
                Retry::Again => continue,
                Retry::Done(io) => return io,
            }
        }
    }
}

/// The result `n` of nginx's `ngx_ssl_write` or `ngx_ssl_recv` on `c`. An error (an alert,
/// a reset) counts as a reset; the details went to nginx's (quietened) probe log.
///
/// # Safety
/// `c` must be a live probe connection with TLS.
unsafe fn tls_io(c: *mut ngx_connection_t, n: isize, write: bool) -> Io {
    if n > 0 {
        return Io::Moved(n as usize);
    }
    if n == 0 && !write {
        return Io::Eof;
    }
    if n == NGX_AGAIN as isize {
        // SAFETY: per the contract; nginx cleared the event's ready flag.
        let rc = unsafe {
            if write {
                ngx_handle_write_event((*c).write, 0)
            } else {
                ngx_handle_read_event((*c).read, 0)
            }
        };
        if rc != NGX_OK as isize {
            return Io::Failed(Failure::Reset);
        }
        return Io::Wait;
    }
    Io::Failed(Failure::Reset)
}

/// After a plain send or recv that moved no data: try again, or what it came to.
enum Retry {
    Again,
    Done(Io),
}

/// Deals with a send or recv on `ev`'s side that moved no data.
///
/// # Safety
/// `ev` must be an event of a live probe connection.
unsafe fn io_error(ev: *mut ngx_event_t) -> Retry {
    let err = ngx_socket_errno();
    if err == EINTR as i32 {
        return Retry::Again;
    }
    if err != EAGAIN as i32 {
        return Retry::Done(Io::Failed(io_failure(err)));
    }
    // SAFETY: per the contract.
    unsafe {
        (*ev).set_ready(0);
        let rc = if (*ev).write() != 0 {
            ngx_handle_write_event(ev, 0)
        } else {
            ngx_handle_read_event(ev, 0)
        };
        if rc != NGX_OK as isize {
            return Retry::Done(Io::Failed(Failure::Reset));
        }
    }
    Retry::Done(Io::Wait)
}

/// Closes the connection of a probe in flight (which also removes its timer and events), takes
/// it off the worker's list, frees it and reports how it ended.
///
/// # Safety
/// `p` must be a live probe in flight and `c` its connection.
unsafe fn end(p: *mut Probe, c: *mut ngx_connection_t, ended: Ended) {
    // SAFETY: per the contract; after this the probe and connection are gone.
    let mut probe = unsafe {
        close(c);
        Box::from_raw(p)
    };
    with_any_worker(|w| {
        take_off_list(w, probe.index);
        w.tls_sessions.update(probe.slot, &mut probe.tls);
        if !w.is_stale() {
            tick::finish(w, probe.slot, ended, probe.started);
        }
    });
}

/// Closes a probe connection: TLS first (close_notify, the `SSL` and its pool), then the
/// socket, its timer and events. The one way a probe connection is closed.
///
/// # Safety
/// `c` must be a live probe connection; it is gone afterwards.
unsafe fn close(c: *mut ngx_connection_t) {
    // SAFETY: per the contract.
    unsafe {
        tls::shutdown(c);
        ngx_close_connection(c);
    }
}

/// Removes the probe at `index` from the worker's list, keeping the moved one's index right.
fn take_off_list(w: &mut Worker, index: usize) {
    if index >= w.probes.len() {
        return;
    }
    w.probes.swap_remove(index);
    if let Some(&moved) = w.probes.get(index) {
        // SAFETY: every pointer in the list is a live probe.
        unsafe { (*moved).index = index };
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
            close(probe.pc.connection);
        }
    }
}
