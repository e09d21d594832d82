//! Counting proxied traffic per peer (`upstream_healthcheck_traffic`): the balancer's `free`
//! of each request is wrapped, and each attempt adds to its peer's counters in the zone.
//!
//! The balancer's `data` is left alone (keepalive, hash and the others keep working as they
//! are); the attempt's peer is found by its name, which every balancer hands out as a pointer
//! to nginx's own peer (`pc->name = &peer->name`), and the request's upstream from the peer
//! connection, which is a field of it.

use core::cell::RefCell;
use core::ffi::c_void;
use core::mem::offset_of;

use ngx::ffi::{
    ngx_http_request_t, ngx_http_upstream_t, ngx_peer_connection_t, ngx_uint_t, NGX_PEER_FAILED,
};
use ngx::http::HttpModuleServerConf;
use rustc_hash::FxHashMap;

use crate::module::clock::now_msec;
use crate::module::module_conf::SrvConf;
use crate::module::process::Worker;
use crate::module::Module;
use crate::traffic::{Attempt, TrafficCounters};

thread_local! {
    /// This worker's counted peers: the address of nginx's `ngx_str_t` name of each peer of an
    /// upstream with traffic counting, to its counters in the zone.
    static PEERS: RefCell<FxHashMap<usize, *const TrafficCounters>> =
        RefCell::new(FxHashMap::default());
}

/// Builds this worker's map of counted peers (at worker start).
pub fn init(w: &Worker) {
    let mut map = FxHashMap::default();
    for (slot, t) in w.targets.iter().enumerate() {
        let counted = w
            .main
            .upstreams
            .get(t.upstream())
            .is_some_and(|u| u.traffic);
        let Some(counters) = w
            .header
            .traffic(slot)
            .filter(|_| counted && !t.rr.is_null())
        else {
            continue;
        };
        // SAFETY: rr is a live peer of this cycle; only the address of its name is taken.
        let name = unsafe { &raw const (*t.rr).name } as usize;
        map.insert(name, counters as *const TrafficCounters);
    }
    PEERS.with(|p| *p.borrow_mut() = map);
}

/// Forgets the counted peers (the worker exits).
pub fn clear() {
    PEERS.with(|p| p.borrow_mut().clear());
}

/// Wraps the `free` the balancer just gave the request `r`, so that each attempt is counted.
///
/// # Safety
/// `r` must be a request whose upstream's balancer init has just succeeded, and `sc` that
/// upstream's configuration.
pub unsafe fn wrap_free(r: *mut ngx_http_request_t, sc: &SrvConf) {
    // SAFETY: per the contract, r->upstream is set up and its peer callbacks are the
    // balancer's.
    unsafe {
        let Some(u) = (*r).upstream.as_mut() else {
            return;
        };
        // The balancer's init runs once per request, so this wraps its free once.
        sc.original_free.set(u.peer.free);
        u.peer.free = Some(on_free);
    }
}

/// The wrapped `free`: counts the attempt on its peer, then lets the balancer free it.
unsafe extern "C" fn on_free(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: nginx calls free with &u->peer of the request's upstream: the upstream struct
    // holds it at a fixed offset, and u->upstream is the configuration the request uses.
    let original = unsafe {
        let u = pc.byte_sub(offset_of!(ngx_http_upstream_t, peer)) as *mut ngx_http_upstream_t;
        if !(*pc).sockaddr.is_null() {
            count(&*u, (*pc).name as usize, state);
        }
        (*u).upstream
            .as_ref()
            .and_then(Module::server_conf)
            .and_then(|sc| sc.original_free.get())
    };
    if let Some(free) = original {
        // SAFETY: the balancer's own free, with the arguments nginx gave us.
        unsafe { free(pc, data, state) };
    }
}

/// Adds one attempt of `u` on the peer named at `name` to its counters.
fn count(u: &ngx_http_upstream_t, name: usize, state: ngx_uint_t) {
    let Some(counters) = PEERS.with(|p| p.try_borrow().ok()?.get(&name).copied()) else {
        return;
    };
    let elapsed_ms = now_msec().saturating_sub(u.start_time as u64);
    let attempt = Attempt {
        status: u16::try_from(u.headers_in.status_n).unwrap_or(0),
        failed: state & NGX_PEER_FAILED as ngx_uint_t != 0,
        response_us: elapsed_ms.saturating_mul(1000),
    };
    // SAFETY: the counters live in the zone, mapped for the life of the cycle this worker
    // serves; the map is rebuilt for each worker.
    unsafe { (*counters).record(attempt) };
}
