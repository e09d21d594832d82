//! The status content handler: a snapshot of every upstream, rendered for the client.

use core::ptr;

use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_http_upstream_rr_peers_t, ngx_int_t,
    ngx_rwlock_rlock, ngx_rwlock_unlock, ngx_str_t, off_t, NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK, NGX_OK,
};
use ngx::http::HttpModuleMainConf;

use crate::health::PeerHealth;
use crate::histogram::Histogram;
use crate::module::conf::MainConf;
use crate::module::peers::live_peers;
use crate::module::worker::unix_msec;
use crate::module::Module;
use crate::render::text::render_text;
use crate::render::{PeerSnapshot, Snapshot, UpstreamSnapshot};

/// Copies the state of every upstream block: nginx's peers as this worker sees them, and the
/// shared health of checked peers.
fn snapshot(main: &MainConf) -> Snapshot {
    // SAFETY: the header, when set, points into the zone mapped for this cycle.
    let (health, records): (Vec<PeerHealth>, Vec<Histogram>) = unsafe { main.header.as_ref() }
        .map(|h| {
            let mut locked = h.lock();
            let health = locked.slots().iter().map(|s| s.health).collect();
            (
                health,
                locked
                    .upstreams()
                    .iter()
                    .map(|u| u.probe_durations)
                    .collect(),
            )
        })
        .unwrap_or_default();
    let mut snap = Snapshot {
        now_ms: unix_msec(),
        ..Snapshot::default()
    };
    for (ui, up) in main.upstreams.iter().enumerate() {
        // SAFETY: uscf is valid for the cycle; its peer data is round-robin peers.
        let primary = unsafe { (*up.uscf).peer.data as *mut ngx_http_upstream_rr_peers_t };
        let mut out = UpstreamSnapshot {
            name: up.name.clone(),
            checked: up.check.is_some(),
            probe_durations: up.check.as_ref().and(records.get(ui).copied()),
            ..Default::default()
        };
        // SAFETY: as above.
        for (i, (list, rr)) in unsafe { live_peers(primary) }.into_iter().enumerate() {
            // SAFETY: list and rr are live; zone peers are read under the list's read lock.
            let peer = unsafe {
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
            };
            let mut peer = peer;
            if up.check.is_some() {
                if let Some(conf) = up.peers.get(i).filter(|c| c.name == peer.name) {
                    let h = health.get(conf.slot).copied().unwrap_or_default();
                    peer.config_down = conf.config_down;
                    peer.down = conf.config_down || !h.is_up();
                    peer.health = Some(h);
                }
            }
            if list == primary {
                out.primary.push(peer);
            } else {
                out.backup.push(peer);
            }
        }
        snap.upstreams.push(out);
    }
    snap
}

/// The content handler of `upstream_healthcheck_status`.
pub extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let Some(main) = Module::main_conf(req) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let mut body = String::new();
    if render_text(&mut body, &snapshot(main)).is_err() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: as above.
    unsafe { send(r, "text/plain", body.as_bytes()) }
}

/// Sends a complete 200 response.
///
/// # Safety
/// `r` must be a live request in its content phase.
unsafe fn send(r: *mut ngx_http_request_t, content_type: &'static str, body: &[u8]) -> ngx_int_t {
    // SAFETY: per the contract; buffers come from the request pool.
    unsafe {
        let req = &mut *r;
        req.headers_out.status = NGX_HTTP_OK as _;
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
