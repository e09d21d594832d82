//! The control endpoint (`upstream_healthcheck_admin`): reads a GET query or a POST form,
//! changes exclusions and manual downs in the shared zone (through etcd first, with
//! `upstream_healthcheck_etcd`: see `fleet_control`), answers in JSON.

use ngx::ffi::{
    ngx_exiting, ngx_http_discard_request_body, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t, ngx_quit, ngx_terminate,
    NGX_DONE, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_OK,
    NGX_HTTP_POST, NGX_HTTP_SPECIAL_RESPONSE, NGX_OK,
};
use ngx::http::HttpModuleMainConf;

use crate::control::{
    expiry, is_form, parse_command, render_answer, take_kind, ttl_left, Action, Answer, Command,
    Entry, Kind, Subject,
};
use crate::journal::Change;
use crate::module::clock::now_msec;
use crate::module::fleet_control;
use crate::module::module_conf::MainConf;
use crate::module::peers::apply_now;
use crate::module::status_handler::{allow, send};
use crate::module::zone::{restart_checks, Locked, ZoneHeader};
use crate::module::Module;
use crate::module::{stream_control, stream_status};
use crate::query::{parse_args, QueryError};
use crate::render::json::render_json_error;

fn err(status: u16, message: impl Into<String>) -> QueryError {
    QueryError {
        status,
        message: message.into(),
    }
}

/// The content handler.
pub extern "C" fn admin_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_POST) as usize == 0 {
        // SAFETY: r is the live request nginx passed in; no header has been sent yet.
        unsafe { allow(r, "GET, HEAD, POST") };
        return reply(r, Err(err(405, "method not allowed, use GET or POST")));
    }
    if req.method & NGX_HTTP_POST as usize != 0 {
        // SAFETY: reading the body of a live request; nginx calls on_body when it is in.
        let rc = unsafe { ngx_http_read_client_request_body(r, Some(on_body)) };
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        return NGX_DONE as ngx_int_t;
    }
    // SAFETY: r is the live request nginx passed in, and its body is not being read.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    match handle(r, &[]) {
        Ok(Handled::Later) => {
            // SAFETY: the live request; the count keeps it until `finish_written`.
            unsafe {
                let main_req = &mut *req.main;
                main_req.set_count(main_req.count() + 1);
            }
            NGX_DONE as ngx_int_t
        }
        Ok(Handled::Now(answer)) => reply(r, Ok(answer)),
        Err(e) => reply(r, Err(e)),
    }
}

extern "C" fn on_body(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with the live request whose body it read.
    let req = unsafe { &mut *r };
    let result = match body(req).and_then(|b| handle(r, &b)) {
        // The body's reference on the request keeps it until `finish_written`.
        Ok(Handled::Later) => return,
        Ok(Handled::Now(answer)) => Ok(answer),
        Err(e) => Err(e),
    };
    let rc = reply(r, result);
    // SAFETY: finalizing the request that read_client_request_body kept alive.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// The request body, which must be a form (or empty) and fit in memory.
fn body(req: &ngx_http_request_t) -> Result<Vec<u8>, QueryError> {
    let mut out = Vec::new();
    // SAFETY: after reading, request_body and its chain are valid for the request.
    let mut cl = unsafe { req.request_body.as_ref() }.map_or(core::ptr::null_mut(), |b| b.bufs);
    // SAFETY: walking the request body chain.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: a chain link holds a valid buffer.
        let b = unsafe { &*link.buf };
        if b.in_file() != 0 {
            return Err(err(413, "request body too large"));
        }
        // An empty last buffer (Content-Length: 0, the end of a chunked body) may have null
        // pointers.
        if !b.pos.is_null() && b.last > b.pos {
            // SAFETY: pos..last are the buffer's valid bytes.
            out.extend_from_slice(unsafe {
                core::slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize)
            });
        }
        cl = link.next;
    }
    if !out.is_empty() {
        // SAFETY: headers_in.content_type is null or a valid header.
        let ct = unsafe { req.headers_in.content_type.as_ref() }.map(|h| h.value.as_bytes());
        if !ct.is_some_and(is_form) {
            return Err(err(
                415,
                "the body must be application/x-www-form-urlencoded",
            ));
        }
    }
    Ok(out)
}

/// A request answered at once, or once etcd has answered (`finish_written`).
enum Handled {
    Now(Answer),
    Later,
}

fn handle(r: *mut ngx_http_request_t, body: &[u8]) -> Result<Handled, QueryError> {
    // SAFETY: the live request being handled.
    let req = unsafe { &mut *r };
    let mut params = parse_args(req.args.as_bytes())?;
    params.extend(parse_args(body)?);
    let kind = take_kind(&mut params)?;
    let command = parse_command(&params)?;
    if command.changes_state() && req.method & NGX_HTTP_POST as usize == 0 {
        // SAFETY: the request is live and its header not sent yet.
        unsafe { allow(req, "POST") };
        return Err(err(405, "a=set and a=del must come as POST"));
    }
    if kind == Kind::Stream {
        let zone = stream_status::find_zone()
            .ok_or_else(|| err(404, "no stream upstream is checked (k=stream)"))?;
        return stream_control::execute(zone, command, now_msec(), exiting()).map(Handled::Now);
    }
    let (main, header) = zone_of(req)?;
    if let (Some((conf, _)), Command::Apply { subject, action }) = (&main.etcd, &command) {
        if command.changes_state() {
            // Checked here first: etcd gets only changes this node would take.
            writable(header)?;
            resolve(main, subject, &mut header.lock())?;
            // SAFETY: r is the live request; the caller keeps it until `finish_written`.
            unsafe { fleet_control::write(r, conf, header, subject.clone(), *action) }
                .map_err(|e| etcd_refused(&e))?;
            return Ok(Handled::Later);
        }
    }
    apply(main, header, command).map(Handled::Now)
}

fn zone_of(
    req: &ngx_http_request_t,
) -> Result<(&'static MainConf, &'static ZoneHeader), QueryError> {
    let main = Module::main_conf(req).ok_or_else(|| err(500, "no configuration"))?;
    // SAFETY: an admin location makes postconfiguration add the zone, mapped for the cycle;
    // the configuration outlives its requests.
    let main: &'static MainConf = unsafe { &*(main as *const MainConf) };
    // SAFETY: header is the zone postconfiguration added for this admin location, mapped for
    // the whole cycle.
    let header = unsafe { main.header.as_ref() }.ok_or_else(|| err(500, "no shared zone"))?;
    Ok((main, header))
}

fn etcd_refused(e: &str) -> QueryError {
    err(
        503,
        format!("etcd cannot be written, nothing was changed: {e}"),
    )
}

/// Carries out a command here and makes this worker apply it at once.
fn apply(main: &MainConf, header: &ZoneHeader, command: Command) -> Result<Answer, QueryError> {
    let answer = execute(main, header, command, now_msec())?;
    if matches!(answer, Answer::Set | Answer::Deleted) {
        apply_now();
    }
    Ok(answer)
}

/// Ends a request whose change went to etcd: applied here too when etcd took it (the watch
/// brings the same change again, which changes nothing more), refused with nothing changed
/// when etcd could not be written.
pub fn finish_written(r: *mut ngx_http_request_t, written: Result<Command, String>) {
    // SAFETY: the live request kept for this answer.
    let req = unsafe { &mut *r };
    let result = match written {
        Ok(command) => zone_of(req).and_then(|(main, header)| apply(main, header, command)),
        Err(e) => Err(etcd_refused(&e)),
    };
    let rc = reply(r, result);
    // SAFETY: finalizing the request whose reference `handle` kept.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// A change would be lost: a newer cycle copied the zone, or this worker is on its way out.
fn writable(header: &ZoneHeader) -> Result<(), QueryError> {
    if header.is_superseded() || exiting() {
        return Err(err(503, "nginx is reloading, retry"));
    }
    Ok(())
}

/// The upstream a subject names (its index) and the slots of the peer it names (none for an
/// exclusion); 404 when this configuration has no such upstream or peer.
pub fn resolve(
    main: &MainConf,
    subject: &Subject,
    locked: &mut Locked<'_>,
) -> Result<(usize, Vec<usize>), QueryError> {
    let name = match subject {
        Subject::Exclusion { upstream } | Subject::ManualDown { upstream, .. } => upstream,
    };
    let ui = main
        .upstreams
        .iter()
        .position(|u| &u.name == name)
        .ok_or_else(|| err(404, format!("unknown upstream {name:?}")))?;
    let Subject::ManualDown { upstream, peer } = subject else {
        return Ok((ui, Vec::new()));
    };
    // A peer from etcd is named by its member; a static one replaced by etcd's is gone.
    let replaced = locked.upstreams()[ui].replaced;
    let members = locked.members();
    let slots: Vec<usize> = main.upstreams[ui]
        .peers
        .iter()
        .filter(|p| match members.get(p.slot()).filter(|_| p.reserved) {
            Some(m) => m.used && m.addr() == peer.as_str(),
            None => !p.reserved && !replaced && *p.name == **peer,
        })
        .map(|p| p.slot())
        .collect();
    if slots.is_empty() {
        return Err(err(
            404,
            format!("unknown peer {peer:?} in upstream {upstream:?}"),
        ));
    }
    Ok((ui, slots))
}

/// Carries out one command on the shared state.
fn execute(
    main: &MainConf,
    header: &ZoneHeader,
    command: Command,
    now: u64,
) -> Result<Answer, QueryError> {
    let mut locked = header.lock();
    if command.changes_state() {
        writable(header)?;
    }
    let Command::Apply { subject, action } = command else {
        let mut entries = Vec::new();
        for (ui, up) in main.upstreams.iter().enumerate() {
            let until = locked.upstreams()[ui].excluded_until_ms;
            if until != 0 {
                let ttl_secs = ttl_left(until, now);
                entries.push(Entry {
                    upstream: up.name.clone(),
                    peer: None,
                    ttl_secs,
                });
            }
            let replaced = locked.upstreams()[ui].replaced;
            for peer in &up.peers {
                let s = locked.slots()[peer.slot()];
                let name = match locked.members().get(peer.slot()).filter(|_| peer.reserved) {
                    Some(m) if m.used => m.addr().to_string(),
                    Some(_) => continue,
                    None if peer.reserved || replaced => continue,
                    None => peer.name.to_string(),
                };
                if s.manual_down() {
                    let until = s.manual_until_ms;
                    entries.push(Entry {
                        upstream: up.name.clone(),
                        peer: Some(name),
                        ttl_secs: ttl_left(until, now),
                    });
                }
            }
        }
        return Ok(Answer::List(entries));
    };

    let (ui, slots) = resolve(main, &subject, &mut locked)?;
    match action {
        Action::Set { ttl_secs } => {
            set_state(
                &mut locked,
                main,
                ui,
                &slots,
                Some(expiry(now, ttl_secs)),
                now,
            );
            Ok(Answer::Set)
        }
        Action::Del => {
            set_state(&mut locked, main, ui, &slots, None, now);
            Ok(Answer::Deleted)
        }
        Action::Get => {
            let (until, upstream, peer) = match subject {
                Subject::Exclusion { upstream } => {
                    (locked.upstreams()[ui].excluded_until_ms, upstream, None)
                }
                Subject::ManualDown { upstream, peer } => {
                    let s = locked.slots()[slots[0]];
                    let until = if s.manual_down() {
                        s.manual_until_ms
                    } else {
                        0
                    };
                    (until, upstream, Some(peer))
                }
            };
            Ok(Answer::Get((until != 0).then(|| Entry {
                upstream,
                peer,
                ttl_secs: ttl_left(until, now),
            })))
        }
    }
}

/// Sets (`until`: its monotonic end, `u64::MAX` for none) or ends (`None`) the exclusion of
/// upstream `ui` (no `slots`) or the manual down of `slots`; setting what is already set, or
/// ending what is not, changes nothing more. Every worker applies it through the journal.
pub fn set_state(
    locked: &mut Locked<'_>,
    main: &MainConf,
    ui: usize,
    slots: &[usize],
    until: Option<u64>,
    now: u64,
) {
    if slots.is_empty() {
        let record = &mut locked.upstreams()[ui];
        let was = record.excluded_until_ms;
        match until {
            Some(until) => {
                record.excluded_until_ms = until;
                if was == until {
                    return;
                }
                locked.note_expiry(until);
            }
            None => {
                if was == 0 {
                    return;
                }
                record.excluded_until_ms = 0;
                restart_checks(locked, main, ui, now);
            }
        }
        locked.record(Change::Upstream(ui));
        return;
    }
    for &s in slots {
        let slot = &mut locked.slots()[s];
        match until {
            Some(until) => {
                if slot.manual_down() && slot.manual_until_ms == until {
                    continue;
                }
                slot.manual_until_ms = until;
                locked.note_expiry(until);
            }
            None => {
                if !slot.manual_down() {
                    continue;
                }
                // Back in service from now (slow start ramps from here).
                slot.end_manual_down(now);
            }
        }
        locked.record(Change::Slot(s));
    }
}

/// This worker is shutting down (reload, upgrade, stop).
fn exiting() -> bool {
    // SAFETY: process globals nginx sets from its signal handlers and event loop; reading
    // them is what nginx's own loop does.
    unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 }
}

/// Sends the JSON answer or error.
fn reply(r: *mut ngx_http_request_t, result: Result<Answer, QueryError>) -> ngx_int_t {
    let mut body = String::new();
    let (status, written) = match &result {
        Ok(answer) => (NGX_HTTP_OK as usize, render_answer(&mut body, answer)),
        Err(e) => (e.status as usize, render_json_error(&mut body, &e.message)),
    };
    if written.is_err() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: r is the live request being answered.
    unsafe { send(r, status, "application/json", body.as_bytes()) }
}
