//! The control endpoint (`upstream_healthcheck_admin`): reads a GET query or a POST form,
//! changes exclusions and manual downs in the shared zone, answers in JSON.

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
use crate::module::module_conf::MainConf;
use crate::module::peers::apply_now;
use crate::module::status_handler::{allow, send};
use crate::module::zone::{restart_checks, ZoneHeader};
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
    let result = handle(req, &[]);
    reply(r, result)
}

extern "C" fn on_body(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with the live request whose body it read.
    let req = unsafe { &mut *r };
    let result = body(req).and_then(|b| handle(req, &b));
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

fn handle(req: &mut ngx_http_request_t, body: &[u8]) -> Result<Answer, QueryError> {
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
        return stream_control::execute(zone, command, now_msec(), exiting());
    }
    let main = Module::main_conf(req).ok_or_else(|| err(500, "no configuration"))?;
    // SAFETY: an admin location makes postconfiguration add the zone, mapped for the cycle.
    let header = unsafe { main.header.as_ref() }.ok_or_else(|| err(500, "no shared zone"))?;
    let answer = execute(main, header, command, now_msec())?;
    if matches!(answer, Answer::Set | Answer::Deleted) {
        apply_now();
    }
    Ok(answer)
}

/// Carries out one command on the shared state.
fn execute(
    main: &MainConf,
    header: &ZoneHeader,
    command: Command,
    now: u64,
) -> Result<Answer, QueryError> {
    let mut locked = header.lock();
    if command.changes_state() && (header.is_superseded() || exiting()) {
        // A newer cycle copied the zone, or this worker is on its way out: a change written
        // now would be acknowledged and then lost.
        return Err(err(503, "nginx is reloading, retry"));
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
            for peer in &up.peers {
                let s = locked.slots()[peer.slot()];
                if s.manual_down() {
                    let until = s.manual_until_ms;
                    entries.push(Entry {
                        upstream: up.name.clone(),
                        peer: Some(peer.name.to_string()),
                        ttl_secs: ttl_left(until, now),
                    });
                }
            }
        }
        return Ok(Answer::List(entries));
    };

    let name = match &subject {
        Subject::Exclusion { upstream } | Subject::ManualDown { upstream, .. } => upstream,
    };
    let ui = main
        .upstreams
        .iter()
        .position(|u| &u.name == name)
        .ok_or_else(|| err(404, format!("unknown upstream {name:?}")))?;
    let up = &main.upstreams[ui];

    match subject {
        Subject::Exclusion { upstream } => {
            let record = &mut locked.upstreams()[ui];
            let until = record.excluded_until_ms;
            match action {
                Action::Set { ttl_secs } => {
                    record.excluded_until_ms = expiry(now, ttl_secs);
                    header.note_expiry(record.excluded_until_ms);
                    locked.record(Change::Upstream(ui));
                    Ok(Answer::Set)
                }
                Action::Del => {
                    record.excluded_until_ms = 0;
                    if until != 0 {
                        restart_checks(&mut locked, main, ui, now);
                    }
                    locked.record(Change::Upstream(ui));
                    Ok(Answer::Deleted)
                }
                Action::Get => Ok(Answer::Get((until != 0).then(|| Entry {
                    upstream,
                    peer: None,
                    ttl_secs: ttl_left(until, now),
                }))),
            }
        }
        Subject::ManualDown { upstream, peer } => {
            let slots: Vec<usize> = up
                .peers
                .iter()
                .filter(|p| *p.name == *peer)
                .map(|p| p.slot())
                .collect();
            if slots.is_empty() {
                return Err(err(
                    404,
                    format!("unknown peer {peer:?} in upstream {upstream:?}"),
                ));
            }
            match action {
                Action::Set { ttl_secs } => {
                    for &s in &slots {
                        locked.slots()[s].manual_until_ms = expiry(now, ttl_secs);
                        locked.record(Change::Slot(s));
                    }
                    header.note_expiry(expiry(now, ttl_secs));
                    Ok(Answer::Set)
                }
                Action::Del => {
                    for &s in &slots {
                        // Back in service from now (slow start ramps from here).
                        locked.slots()[s].end_manual_down(now);
                        locked.record(Change::Slot(s));
                    }
                    Ok(Answer::Deleted)
                }
                Action::Get => {
                    let s = locked.slots()[slots[0]];
                    let until = s.manual_until_ms;
                    Ok(Answer::Get(s.manual_down().then(|| Entry {
                        upstream,
                        peer: Some(peer),
                        ttl_secs: ttl_left(until, now),
                    })))
                }
            }
        }
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
