//! One probe on nginx's event loop: connect (or take the peer's idle connection), for https
//! the TLS handshake (`tls`), send the request, read the status line or the whole response. A probe ends with an outcome for the
//! peer, or with a local error that gives no verdict; a reusable connection goes back to the
//! worker's idle pool (`keepalive`).

use core::ffi::c_void;
use core::mem::{size_of, zeroed};
use core::ptr;
use std::rc::Rc;
use std::time::Instant;

use ngx::ffi::{
    ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_handle_read_event, ngx_handle_write_event, ngx_peer_connection_t, ngx_rwlock_rlock,
    ngx_rwlock_unlock, ngx_socket_errno, ngx_str_t, recv, send, sockaddr, sockaddr_storage,
    socklen_t, EAGAIN, EINTR, MSG_NOSIGNAL, NGX_AGAIN, NGX_DECLINED, NGX_OK,
};

use crate::config::{CheckType, ValidStatuses};
use crate::escape::LogEscaped;
use crate::matcher::Match;
use crate::module::keepalive;
use crate::module::log::hc_debug;
use crate::module::process::{with_any_worker, Worker};
use crate::module::tick;
use crate::module::tls::{self, ProbeTls, TlsContext};
use crate::outcome::{classify_connect_errno, ConnectError, Failure, Outcome};
use crate::response::{self, Limits, ResponseReader};
use crate::schedule::timeout_is_verdict;
use crate::status_line::{judge, Progress, StatusLineParser};
use upstream_healthcheck_glue::socket::{io_failure, set_errno, set_port, socket_error, strerror};

/// The most body bytes a probe reads to reuse its connection: a longer body ends the
/// connection (the verdict stands), never the worker.
pub const BODY_READ_LIMIT: usize = 1024 * 1024;

/// How a probe ended.
pub enum Ended {
    /// The peer answered (or failed to): this counts towards its verdict.
    Outcome(Outcome),
    /// The probe could not run for a reason of this host (the text says which): no verdict.
    Local(String),
}

/// An open connection whose last response allows another request, handed from the probe to
/// `tick::finish`, which parks it or lets it go. Dropping it closes the connection.
pub struct Kept {
    c: *mut ngx_connection_t,
    /// Probes the connection has carried, the last one included.
    pub carried: u32,
}

impl Kept {
    /// Moves the connection into the idle pool under `slot`.
    pub fn park(mut self, slot: usize) {
        let c = core::mem::replace(&mut self.c, ptr::null_mut());
        // SAFETY: c is the open connection this value owned, with no timer (removed in `end`).
        unsafe { keepalive::park(slot, c, self.carried) };
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if !self.c.is_null() {
            // SAFETY: the open connection this value owns.
            unsafe { keepalive::close(self.c) };
        }
    }
}

/// How a probe reads its answer.
enum Reading {
    /// The status line only, then the connection closes.
    StatusLine(StatusLineParser),
    /// The whole response, to reuse the connection.
    Whole(ResponseReader),
}

/// What to do after advancing a probe.
enum Next {
    /// Wait for the socket.
    Wait,
    End(Ended),
    /// A kept connection turned out closed by the peer before any answer: connect anew.
    Reconnect,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    /// TLS: `handshaking` says whether nginx has it in hand already.
    Handshake,
    Sending,
    Reading,
}

/// The bytes a probe sends: its upstream's, or those of its peer's `check_url` (a peer from
/// etcd), shared with the worker that may replace them meanwhile.
enum ProbeRequest {
    Check(&'static [u8]),
    Peer(Rc<[u8]>),
}

impl core::ops::Deref for ProbeRequest {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ProbeRequest::Check(b) => b,
            ProbeRequest::Peer(b) => b,
        }
    }
}

/// A probe in flight; owned by its connection's `data` until it ends, and listed in the
/// worker's `probes` at `index`.
pub struct Probe {
    index: usize,
    slot: usize,
    started: Instant,
    stage: Stage,
    check_type: CheckType,
    request: ProbeRequest,
    valid: &'static ValidStatuses,
    /// `match=`: judges the response instead of `valid`.
    matcher: Option<&'static Match>,
    sent: usize,
    reading: Reading,
    /// Probes the connection carried before this one.
    carried: u32,
    /// The connection came from the idle pool.
    reused: bool,
    /// A byte of the answer arrived.
    answered: bool,
    /// The response read so far allows another request on the connection.
    reusable: bool,
    /// The probe already reconnected once.
    retried: bool,
    /// The probe holds one of the worker's handshake places (`DueQueue::handshake_started`).
    handshake_place: bool,
    timeout_ms: u64,
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
/// it ends), or how it ended at once, with its connection when that may be kept.
/// `handshake_place`: the probe holds a handshake place, given back when it ends in flight
/// (the caller gives it back when the probe ends at once).
pub fn start(w: &mut Worker, slot: usize, handshake_place: bool) -> Option<(Ended, Option<Kept>)> {
    let (up, check, peer) = w.check_of(slot)?;
    let name = w.peer_name(slot);
    let rr = w.targets[slot].rr;
    if rr.is_null() {
        let why = format!(
            "peer {} of upstream \"{}\" was not found among nginx's peers",
            name, up.name
        );
        return Some((Ended::Local(why), None));
    }
    hc_debug!(
        "probe of {} in upstream \"{}\" starts",
        LogEscaped(&name),
        LogEscaped(&up.name)
    );
    let request = match w.member_meta.get(slot).filter(|_| peer.reserved) {
        Some(m) => m.request.clone().map(ProbeRequest::Peer),
        None => None,
    }
    .unwrap_or(ProbeRequest::Check(&check.request));
    let params = &check.params;
    let matcher = check.matcher.as_deref();
    let whole =
        params.keepalive > 0 || matcher.is_some_and(|m| m.needs_headers() || m.needs_body());
    let reading = if whole {
        Reading::Whole(ResponseReader::new(Limits {
            body_keep: matcher
                .filter(|m| m.needs_body())
                .map_or(0, Match::body_max),
            body_read: BODY_READ_LIMIT,
            head_request: check.request.starts_with(b"HEAD "),
        }))
    } else {
        Reading::StatusLine(StatusLineParser::new())
    };
    let mut probe = Box::new(Probe {
        index: 0,
        slot,
        started: Instant::now(),
        stage: Stage::Connecting,
        check_type: params.check_type,
        request,
        valid: &check.valid,
        matcher,
        sent: 0,
        reading,
        carried: 0,
        reused: false,
        answered: false,
        reusable: false,
        retried: false,
        handshake_place,
        timeout_ms: params.timeout_ms,
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

    let list = w.targets[slot].list;
    // SAFETY: list is null or the live list of rr.
    let shared = unsafe { list.as_ref() }.is_some_and(|l| !l.shpool.is_null());
    // SAFETY: rr is a live peer; its sockaddr is socklen bytes long and fits the storage. A
    // zone peer is read under its list's read lock (a peer from etcd may get a new address).
    unsafe {
        if shared {
            ngx_rwlock_rlock(&mut (*list).rwlock);
        }
        let rr = &*rr;
        let len = (rr.socklen as usize).min(size_of::<sockaddr_storage>());
        ptr::copy_nonoverlapping(
            rr.sockaddr as *const u8,
            &mut probe.sockaddr as *mut _ as *mut u8,
            len,
        );
        probe.name = rr.name;
        if let Some(port) = params.port {
            set_port(&mut probe.sockaddr, port);
        }
        probe.pc.sockaddr = &mut probe.sockaddr as *mut _ as *mut sockaddr;
        probe.pc.socklen = len as socklen_t;
        if shared {
            ngx_rwlock_unlock(&mut (*list).rwlock);
        }
    }
    probe.pc.name = &mut probe.name;
    probe.pc.get = Some(ngx_event_get_peer);
    probe.pc.log = if probe.tls_ctx.is_some() {
        &mut w.tls_log
    } else {
        &mut w.probe_log
    };
    probe.pc.set_log_error(1); // NGX_ERROR_ERR

    let idle = keepalive::take(slot);
    if idle.is_some() {
        hc_debug!("probe of {} reuses its connection", LogEscaped(&name));
    }
    let p = Box::into_raw(probe);
    // SAFETY: p is the fresh probe, owned here until it is listed below or freed.
    let next = unsafe {
        match idle {
            Some(idle) if whole => {
                (*p).reused = true;
                // A kept TLS connection passed its handshake when it was made.
                (*p).tls.passed = true;
                (*p).carried = idle.requests;
                (*p).stage = Stage::Sending;
                attach(p, idle.c);
                drive(p, idle.c)
            }
            idle => {
                if let Some(idle) = idle {
                    keepalive::close(idle.c);
                }
                connect(p)
            }
        }
    };
    // SAFETY: p is live; `settle` frees it when it ended.
    match unsafe { settle(p, next) } {
        Some(ended) => Some(ended),
        None => {
            // SAFETY: p is live and in flight: the worker's list owns it from here.
            unsafe { (*p).index = w.probes.len() };
            w.probes.push(p);
            None
        }
    }
}

/// Follows up `next`, reconnecting once when a kept connection was found closed; frees the
/// probe when it ended, with its connection handed on (see `release`).
///
/// # Safety
/// `p` must be a live probe not on the worker's list.
unsafe fn settle(p: *mut Probe, mut next: Next) -> Option<(Ended, Option<Kept>)> {
    loop {
        match next {
            Next::Wait => return None,
            Next::Reconnect => {
                // SAFETY: per the contract; a reconnect drops the old connection first.
                next = unsafe { reconnect(p) };
            }
            Next::End(ended) => {
                // SAFETY: p came from Box::into_raw and is referenced nowhere else.
                let mut probe = unsafe { Box::from_raw(p) };
                // SAFETY: the probe has ended and its connection is its own.
                let kept = unsafe { release(&mut probe, &ended) };
                return Some((ended, kept));
            }
        }
    }
}

/// The connection of a probe that ended: handed on when the response allows another request
/// (without its timer), closed otherwise (which also removes its timer and events). The TLS
/// session the probe brought is kept for the peer's next one (see `tls::keep_session`).
///
/// # Safety
/// `probe` must have ended; its connection, if any, is open and its own.
unsafe fn release(probe: &mut Probe, ended: &Ended) -> Option<Kept> {
    if probe.tls_ctx.is_some() {
        tls::keep_session(probe.slot, &mut probe.tls);
    }
    let c = probe.pc.connection;
    if c.is_null() {
        return None;
    }
    // SAFETY: per the contract.
    unsafe {
        if probe.reusable && matches!(ended, Ended::Outcome(_)) {
            if (*(*c).read).timer_set() != 0 {
                ngx::ffi::ngx_del_timer((*c).read);
            }
            return Some(Kept {
                c,
                carried: probe.carried.saturating_add(1),
            });
        }
        keepalive::close(c);
    }
    None
}

/// Closes a kept connection found closed and connects anew, within the same probe.
///
/// # Safety
/// `p` must be a live probe whose connection is open.
unsafe fn reconnect(p: *mut Probe) -> Next {
    // SAFETY: per the contract.
    let probe = unsafe { &mut *p };
    hc_debug!("probe connection was closed by the peer while idle, reconnecting");
    // SAFETY: the probe's own open connection; it is gone after this.
    unsafe { keepalive::close(probe.pc.connection) };
    probe.pc.connection = ptr::null_mut();
    probe.retried = true;
    probe.reused = false;
    probe.carried = 0;
    probe.sent = 0;
    probe.stage = Stage::Connecting;
    probe.answered = false;
    probe.handshaking = false;
    probe.tls.passed = false;
    if let Reading::Whole(r) = &mut probe.reading {
        *r = ResponseReader::new(r.limits());
    }
    // SAFETY: per the contract.
    unsafe { connect(p) }
}

/// Opens a new connection for the probe and drives it as far as it goes at once.
///
/// # Safety
/// `p` must be a live probe without a connection.
unsafe fn connect(p: *mut Probe) -> Next {
    // SAFETY: per the contract.
    let probe = unsafe { &mut *p };
    // errno tells a refused connect from a local failure; nginx leaves it as connect() set it.
    set_errno(0);
    // SAFETY: pc is fully set up for a TCP or unix connect; the probe stays alive meanwhile.
    let rc = unsafe { ngx_event_connect_peer(&mut probe.pc) };
    let c = probe.pc.connection;
    if rc == NGX_DECLINED as isize {
        // connect() failed at once (nginx closed the socket): refused on loopback, a missing
        // unix socket, or a local shortage such as no free source port.
        probe.pc.connection = ptr::null_mut();
        let err = ngx_socket_errno();
        hc_debug!("probe connect() failed ({err})");
        return Next::End(match classify_connect_errno(err) {
            ConnectError::Peer(f) => Ended::Outcome(Outcome::failed(f, None)),
            ConnectError::Local => {
                Ended::Local(format!("connect() failed ({err}: {})", strerror(err)))
            }
        });
    }
    if (rc != NGX_OK as isize && rc != NGX_AGAIN as isize) || c.is_null() {
        // No socket or no free connection (nginx cleaned up): a shortage of this host.
        probe.pc.connection = ptr::null_mut();
        let err = ngx_socket_errno();
        return Next::End(Ended::Local(if err == 0 {
            "no free connection, worker_connections are not enough".to_string()
        } else {
            format!("no socket ({err}: {})", strerror(err))
        }));
    }
    // SAFETY: p and c are the live probe and its new connection.
    unsafe { attach(p, c) };
    if let Some(ctx) = probe.tls_ctx {
        // SAFETY: c is the probe's new connection and its data is the probe.
        if let Err(e) = unsafe { tls::attach(c, ctx, probe.slot) } {
            return Next::End(Ended::Local(e));
        }
    }
    if rc == NGX_OK as isize {
        // Connected at once (a unix socket): the probe may end right here.
        // SAFETY: p and c are the live probe and its connection.
        return unsafe { drive(p, c) };
    }
    Next::Wait
}

/// Makes `c` the probe's connection: its handlers, its data and the probe's timeout (what is
/// left of it after a reconnect).
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

/// nginx calls this when a handshake it had in hand is done, failed or timed out.
unsafe extern "C" fn on_handshake(c: *mut ngx_connection_t) {
    // SAFETY: nginx calls the handler with the probe's connection, whose data is the probe;
    // the probe's timer is on the read event.
    unsafe {
        let p = (*c).data as *mut Probe;
        let mut next = match held_up(p, (*c).read) {
            Some(local) => Next::End(local),
            None => drive(p, c),
        };
        if let Next::Reconnect = next {
            next = reconnect(p);
        }
        if let Next::End(ended) = next {
            end(p, ended);
        }
    }
}

/// Read and write handler of probe connections.
extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls handlers with the connection's own events; data is the connection
    // whose data is the probe, set in `attach` and live until `end`.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let p = (*c).data as *mut Probe;
        let mut next = if (*ev).timedout() != 0 {
            Next::End(
                held_up(p, ev).unwrap_or(Ended::Outcome(Outcome::failed(Failure::Timeout, None))),
            )
        } else {
            drive(p, c)
        };
        if let Next::Reconnect = next {
            next = reconnect(p);
        }
        if let Next::End(ended) = next {
            end(p, ended);
        }
    }
}

/// A probe's timeout that fired too late to blame the peer (`schedule::timeout_is_verdict`):
/// this worker's event loop was held up and the peer's answer may be waiting unread. `None`
/// when `ev` did not time out or fired on time.
///
/// # Safety
/// `p` must be a live probe and `ev` the live event that carries its timer.
unsafe fn held_up(p: *const Probe, ev: *const ngx_event_t) -> Option<Ended> {
    // SAFETY: per the contract. The timer was due `timeout_ms` after the start (see `attach`);
    // nginx zeroes an expired timer's key, so the time it was due comes from the probe.
    let (timed_out, late) = unsafe {
        let spent = (*p).started.elapsed().as_millis() as u64;
        ((*ev).timedout() != 0, spent.saturating_sub((*p).timeout_ms))
    };
    (timed_out && !timeout_is_verdict(late)).then(|| {
        hc_debug!("probe timed out {late} ms late");
        Ended::Local(format!(
            "a probe's timeout fired {late} ms late, this worker was held up"
        ))
    })
}

/// Advances the probe as far as the socket allows.
///
/// # Safety
/// `p` and `c` must be the live probe and its connection.
unsafe fn drive(p: *mut Probe, c: *mut ngx_connection_t) -> Next {
    // SAFETY: per the contract.
    let (probe, conn) = unsafe { (&mut *p, &mut *c) };
    // A kept connection that fails before any answer was closed by the peer while idle: one
    // new connection within the same probe, whose result is the probe's.
    let failed = |probe: &Probe, f: Failure| {
        if probe.reused && !probe.answered && !probe.retried {
            Next::Reconnect
        } else {
            Next::End(Ended::Outcome(Outcome::failed(f, None)))
        }
    };
    if probe.stage == Stage::Connecting {
        // SAFETY: events of a live connection.
        let (rev, wev) = unsafe { (&*conn.read, &*conn.write) };
        if rev.ready() == 0 && wev.ready() == 0 {
            return Next::Wait;
        }
        let err = socket_error(conn);
        if err != 0 {
            hc_debug!("probe connect() failed ({err})");
            return Next::End(match classify_connect_errno(err) {
                ConnectError::Peer(f) => Ended::Outcome(Outcome::failed(f, None)),
                ConnectError::Local => {
                    Ended::Local(format!("connect() failed ({err}: {})", strerror(err)))
                }
            });
        }
        hc_debug!("probe connected");
        if probe.check_type == CheckType::Tcp {
            return Next::End(Ended::Outcome(Outcome::ok(None)));
        }
        probe.stage = match probe.tls_ctx {
            Some(_) => Stage::Handshake,
            None => Stage::Sending,
        };
    }

    if probe.stage == Stage::Handshake {
        let Some(ctx) = probe.tls_ctx else {
            return Next::End(Ended::Local("no TLS context".to_string()));
        };
        let passed = if probe.handshaking {
            // SAFETY: the live connection, with TLS attached in `connect`.
            unsafe { tls::finish(c, ctx) }
        } else {
            probe.handshaking = true;
            // SAFETY: the live connection, with TLS attached in `connect`.
            match unsafe { tls::handshake(c, ctx, Some(on_handshake)) } {
                Some(passed) => passed,
                None => return Next::Wait,
            }
        };
        if let Err(outcome) = passed {
            return Next::End(Ended::Outcome(outcome));
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
                Io::Eof => return failed(probe, Failure::Closed),
                Io::Wait => return Next::Wait,
                Io::Failed(f) => return failed(probe, f),
            }
        }
        probe.stage = Stage::Reading;
        // The answer cannot be there yet unless the socket says so: wait for its event rather
        // than pay a read that finds nothing (for TLS, an SSL_read and a read(2)). The socket
        // is edge-triggered and was drained when `ready` was cleared, so its event will come.
        // SAFETY: the read event of a live connection.
        if unsafe { (*conn.read).ready() } == 0 {
            return Next::Wait;
        }
    }

    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: the live, connected probe connection.
        let n = match unsafe { conn_recv(c, &mut buf) } {
            Io::Moved(n) => n,
            Io::Eof => 0,
            Io::Wait => return Next::Wait,
            Io::Failed(f) => return failed(probe, f),
        };
        if n > 0 {
            probe.answered = true;
            let data = &buf[..n];
            let outcome = match &mut probe.reading {
                Reading::StatusLine(parser) => match parser.feed(data) {
                    Progress::NeedMore => continue,
                    Progress::Status(status) => match probe.matcher {
                        Some(m) => m.judge(status, &[], &[]),
                        None => judge(status, probe.valid),
                    },
                    Progress::Invalid(_) => Outcome::failed(Failure::BadResponse, None),
                },
                Reading::Whole(reader) => match reader.feed(data) {
                    response::Progress::NeedMore => continue,
                    response::Progress::Done(r) => {
                        probe.reusable = r.reusable;
                        // The whole response is read and a well-behaved peer sends nothing
                        // more before the next request: the next probe waits for the
                        // socket's event instead of a read that finds nothing. Whatever else
                        // the peer sends, or its close, is a new event.
                        // SAFETY: the live connection (TLS attached when `ssl` is set).
                        unsafe {
                            if conn.ssl.is_null() || tls::drained(c) {
                                (*conn.read).set_ready(0);
                            }
                        }
                        judge_response(probe, &r)
                    }
                    response::Progress::Invalid(_) => Outcome::failed(Failure::BadResponse, None),
                },
            };
            return Next::End(Ended::Outcome(outcome));
        }
        // n == 0: the peer closed the connection.
        if !probe.answered {
            return failed(probe, Failure::Closed);
        }
        let outcome = match &mut probe.reading {
            Reading::Whole(reader) => match reader.eof() {
                response::Progress::Done(r) => judge_response(probe, &r),
                _ => Outcome::failed(Failure::Closed, None),
            },
            Reading::StatusLine(_) => Outcome::failed(Failure::Closed, None),
        };
        return Next::End(Ended::Outcome(outcome));
    }
}

/// The verdict on a whole response: its match block's, or its status's.
fn judge_response(probe: &Probe, r: &response::Response) -> Outcome {
    match probe.matcher {
        Some(m) => m.judge(r.status, &r.header_pairs(), &r.body),
        None => judge(r.status, probe.valid),
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
            return match tls::read(c, buf) {
                tls::Received::Data(n) => Io::Moved(n),
                tls::Received::Eof => Io::Eof,
                tls::Received::Failed => Io::Failed(Failure::Reset),
                tls::Received::WantRead => {
                    (*(*c).read).set_ready(0);
                    tls_io(c, NGX_AGAIN as isize, false)
                }
                tls::Received::WantWrite => {
                    (*(*c).write).set_ready(0);
                    tls_io(c, NGX_AGAIN as isize, true)
                }
            };
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

/// Ends a probe in flight: takes it off the worker's list, frees it and reports how it ended,
/// with its connection when that may carry the next probe (see `release`).
///
/// # Safety
/// `p` must be a live probe in flight.
unsafe fn end(p: *mut Probe, ended: Ended) {
    // SAFETY: per the contract; the probe is owned here from now on.
    let mut probe = unsafe { Box::from_raw(p) };
    // SAFETY: the probe has ended and its connection is its own.
    let kept = unsafe { release(&mut probe, &ended) };
    with_any_worker(|w| {
        take_off_list(w, probe.index);
        if probe.handshake_place {
            w.queue.handshake_ended();
        }
        if !w.is_stale() {
            tick::finish(w, probe.slot, ended, probe.started, kept);
        }
    });
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
            keepalive::close(probe.pc.connection);
        }
    }
}
