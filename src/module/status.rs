//! The status content handler: a snapshot of every upstream, rendered for the client.

use core::ptr;
use core::sync::atomic::Ordering;

use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_rr_peers_t, ngx_int_t, ngx_list_push, ngx_rwlock_rlock, ngx_rwlock_unlock,
    ngx_str_t, ngx_table_elt_t, off_t, NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf};

use crate::admin::ttl_left;
use crate::module::conf::MainConf;
use crate::module::peers::live_peers;
use crate::module::worker::{now_msec, unix_msec};
use crate::module::zone::{Slot, UpstreamRecord, HA_MASTER, HA_SLAVER};
use crate::module::Module;
use crate::query::{error_format, filter, parse_status_query, Format};
use crate::render::html::render_html;
use crate::render::json::{render_json, render_json_error};
use crate::render::prometheus::render_prometheus;
use crate::render::text::render_text;
use crate::render::{HaMode, PeerSnapshot, Snapshot, UpstreamSnapshot};

/// Copies the state of every upstream block: nginx's peers as this worker sees them, and the
/// shared health of checked peers.
fn snapshot(main: &MainConf) -> Snapshot {
    let now = now_msec();
    let mut snap = Snapshot {
        now_ms: unix_msec(),
        ..Snapshot::default()
    };
    // The shared state, copied under the lock; absent when no zone was needed.
    let mut slots: Vec<Slot> = Vec::new();
    let mut records: Vec<UpstreamRecord> = Vec::new();
    // SAFETY: the header, when set, points into the zone mapped for this cycle.
    if let Some(h) = unsafe { main.header.as_ref() } {
        let mut locked = h.lock();
        slots = locked.slots().to_vec();
        records = locked.upstreams().to_vec();
        snap.ha_mode = match h.ha_state.load(Ordering::Acquire) {
            HA_MASTER => HaMode::Master,
            HA_SLAVER => HaMode::Slaver,
            _ => HaMode::Disabled,
        };
    }
    let probing = snap.ha_mode != HaMode::Slaver;

    for (ui, up) in main.upstreams.iter().enumerate() {
        let record = records.get(ui);
        let checked = up.check.is_some() && probing && !record.is_some_and(|r| r.excluded());
        // SAFETY: uscf is valid for the cycle; its peer data is round-robin peers.
        let primary = unsafe { (*up.uscf).peer.data as *mut ngx_http_upstream_rr_peers_t };
        let mut out = UpstreamSnapshot {
            name: up.name.clone(),
            checked,
            probe_durations: record.filter(|_| checked).map(|r| r.probe_durations),
            ..Default::default()
        };
        let mut backup_index = 0;
        // SAFETY: as above.
        for (i, (list, rr)) in unsafe { live_peers(primary) }.into_iter().enumerate() {
            // SAFETY: list and rr are live; zone peers are read under the list's read lock.
            let mut peer = unsafe { read_peer(list, rr) };
            let slot = up
                .peers
                .get(i)
                .filter(|c| c.name == peer.name)
                .and_then(|c| {
                    peer.config_down = c.config_down;
                    slots.get(c.slot)
                });
            if let Some(s) = slot {
                peer.manual_down = s.manual_down();
                peer.manual_down_ttl =
                    (s.manual_until_ms != u64::MAX).then(|| ttl_left(s.manual_until_ms, now));
                peer.manual_down_ttl = peer.manual_down_ttl.filter(|_| peer.manual_down);
                let unhealthy = checked && !s.health.is_up();
                peer.down = peer.config_down || peer.manual_down || unhealthy;
                peer.health = checked.then_some(s.health);
            }
            if list == primary {
                peer.id = i;
                out.primary.push(peer);
            } else {
                peer.id = backup_index;
                backup_index += 1;
                out.backup.push(peer);
            }
        }
        snap.upstreams.push(out);
    }
    snap
}

/// nginx's view of one peer.
///
/// # Safety
/// `list` and `rr` must be live round-robin peers of the running cycle.
unsafe fn read_peer(
    list: *mut ngx_http_upstream_rr_peers_t,
    rr: *mut ngx_http_upstream_rr_peer_t,
) -> PeerSnapshot {
    // SAFETY: per the contract; zone peers are read under the list's read lock.
    unsafe {
        let shared = !(*list).shpool.is_null();
        if shared {
            ngx_rwlock_rlock(&mut (*list).rwlock);
        }
        let rr = &*rr;
        let p = PeerSnapshot {
            name: String::from_utf8_lossy(rr.name.as_bytes()).into_owned(),
            config_down: rr.down != 0,
            down: rr.down != 0,
            weight: rr.weight as i64,
            max_fails: rr.max_fails as u64,
            fail_timeout: rr.fail_timeout as u64,
            conns: rr.conns as u64,
            current_weight: rr.current_weight as i64,
            effective_weight: rr.effective_weight as i64,
            fails: rr.fails as u64,
            ..PeerSnapshot::default()
        };
        if shared {
            ngx_rwlock_unlock(&mut (*list).rwlock);
        }
        p
    }
}

/// The content handler of `upstream_healthcheck_status`: always 200 with the document when it
/// can be rendered, whatever the peers' health, so scrapers never mistake a down backend for a
/// broken endpoint.
pub extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        // SAFETY: as above.
        unsafe { allow(r, "GET, HEAD") };
        let message = "method not allowed, use GET or HEAD";
        return error(r, Format::Text, NGX_HTTP_NOT_ALLOWED as u16, message);
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let (Some(main), Some(loc)) = (Module::main_conf(req), Module::location_conf(req)) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let default = loc.status.unwrap_or(Format::Text);
    let query = parse_status_query(req.args.as_bytes(), default)
        .and_then(|q| Ok((filter(snapshot(main), &q)?, q)));
    let (snap, q) = match query {
        Ok(v) => v,
        Err(e) => {
            return error(
                r,
                error_format(req.args.as_bytes(), default),
                e.status,
                &e.message,
            );
        }
    };
    let mut body = String::new();
    let rendered = match q.format {
        Format::Text => render_text(&mut body, &snap),
        Format::Json => render_json(&mut body, &snap),
        Format::Prometheus => render_prometheus(&mut body, &snap),
        Format::Html => render_html(&mut body, &snap, q.refresh),
    };
    if rendered.is_err() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: as above.
    unsafe {
        send(
            r,
            NGX_HTTP_OK as usize,
            q.format.content_type(),
            body.as_bytes(),
        )
    }
}

/// Answers a bad request: a JSON error envelope for JSON clients, a line of text otherwise.
fn error(r: *mut ngx_http_request_t, format: Format, status: u16, message: &str) -> ngx_int_t {
    let mut body = String::new();
    let content_type = if format == Format::Json {
        let _ = render_json_error(&mut body, message);
        Format::Json.content_type()
    } else {
        body.push_str(message);
        body.push('\n');
        "text/plain"
    };
    // SAFETY: r is the live request of the calling handler.
    unsafe { send(r, status as usize, content_type, body.as_bytes()) }
}

/// Adds `Allow: methods` to the response headers, for a 405.
///
/// # Safety
/// `r` must be a live request whose header is not sent yet.
pub unsafe fn allow(r: *mut ngx_http_request_t, methods: &'static str) {
    let key = "Allow";
    // SAFETY: per the contract; the element is zeroed before use, and its strings are
    // static, so they outlive the request.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if let Some(h) = h.as_mut() {
            ptr::write_bytes(h as *mut ngx_table_elt_t, 0, 1);
            h.hash = 1;
            h.key = ngx_str_t {
                len: key.len(),
                data: key.as_ptr() as *mut u8,
            };
            h.value = ngx_str_t {
                len: methods.len(),
                data: methods.as_ptr() as *mut u8,
            };
        }
    }
}

/// Sends a complete response.
///
/// # Safety
/// `r` must be a live request in its content phase.
pub unsafe fn send(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: per the contract; buffers come from the request pool.
    unsafe {
        let req = &mut *r;
        req.headers_out.status = status;
        req.headers_out.content_length_n = body.len() as off_t;
        req.headers_out.content_type = ngx_str_t {
            len: content_type.len(),
            data: content_type.as_ptr() as *mut u8,
        };
        req.headers_out.content_type_len = content_type.len();
        req.headers_out.content_type_lowcase = ptr::null_mut();

        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || req.header_only() != 0 {
            return rc;
        }
        let b = ngx_create_temp_buf(req.pool, body.len().max(1));
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        if ptr::eq(req.main, r) {
            (*b).set_last_buf(1);
        }
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}
