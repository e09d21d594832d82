//! Each proxied attempt, seen at the balancer's `free`: counted for the traffic reports
//! (`upstream_healthcheck_traffic`) and judged by passive checks (`upstream_healthcheck_passive`),
//! which eject a peer whose requests keep failing.
//!
//! The balancer's `data` is left alone (keepalive, hash and the others keep working as they
//! are); the attempt's peer is found by its name, which every balancer hands out as a pointer
//! to nginx's own peer (`pc->name = &peer->name`), and the request's upstream from the peer
//! connection, which is a field of it.

use core::cell::RefCell;
use core::ffi::c_void;
use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_http_request_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_t, ngx_peer_connection_t,
    ngx_uint_t, NGX_PEER_FAILED,
};
use ngx::http::HttpModuleServerConf;
use rustc_hash::FxHashMap;

use crate::escape::LogEscaped;
use crate::journal::Change;
use crate::module::clock::{now_msec, unix_msec};
use crate::module::log::hc_log;
use crate::module::module_conf::{MainConf, SrvConf};
use crate::module::process::Worker;
use crate::module::zone::{log_panic, ZoneHeader};
use crate::module::Module;
use crate::parse::show_ms;
use crate::passive::{counts_as_failure, Judgement};
use crate::traffic::Attempt;

/// A peer whose attempts are watched.
#[derive(Clone, Copy)]
struct Watched {
    slot: u32,
    upstream: u32,
    /// Its upstream counts traffic.
    counted: bool,
    /// nginx's peer.
    rr: *const ngx_http_upstream_rr_peer_t,
}

/// This worker's watched peers, by the address of nginx's `ngx_str_t` name of each, and the
/// configuration and zone they belong to.
struct Watch {
    peers: FxHashMap<usize, Watched>,
    main: *const MainConf,
    header: *const ZoneHeader,
}

thread_local! {
    static WATCH: RefCell<Watch> = RefCell::new(Watch {
        peers: FxHashMap::default(),
        main: ptr::null(),
        header: ptr::null(),
    });
}

/// Builds this worker's map of watched peers (at worker start).
pub fn init(w: &Worker) {
    let mut peers = FxHashMap::default();
    for (slot, t) in w.targets.iter().enumerate() {
        let Some(up) = w.main.upstreams.get(t.upstream()) else {
            continue;
        };
        if t.rr.is_null() || !(up.traffic || up.passive.is_some()) {
            continue;
        }
        // SAFETY: rr is a live peer of this cycle; only the address of its name is taken.
        let name = unsafe { &raw const (*t.rr).name } as usize;
        let watched = Watched {
            slot: slot as u32,
            upstream: t.upstream() as u32,
            counted: up.traffic,
            rr: t.rr,
        };
        peers.insert(name, watched);
    }
    WATCH.with(|c| {
        *c.borrow_mut() = Watch {
            peers,
            main: w.main,
            header: w.header,
        }
    });
}

/// Forgets the watched peers (the worker exits).
pub fn clear() {
    WATCH.with(|c| {
        let mut c = c.borrow_mut();
        c.peers.clear();
        c.main = ptr::null();
        c.header = ptr::null();
    });
}

/// Wraps the `free` the balancer just gave the request `r`, so that each attempt is seen.
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

/// The wrapped `free`: sees the attempt, then lets the balancer free it.
unsafe extern "C" fn on_free(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: nginx calls free with &u->peer of the request's upstream: the upstream struct
    // holds it at a fixed offset, and u->upstream is the configuration the request uses.
    let original = unsafe {
        let u = pc.byte_sub(offset_of!(ngx_http_upstream_t, peer)) as *mut ngx_http_upstream_t;
        if !(*pc).sockaddr.is_null() {
            see(&*u, &*pc, state);
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

/// Counts one attempt of `u` on the peer of `pc` and judges it.
fn see(u: &ngx_http_upstream_t, pc: &ngx_peer_connection_t, state: ngx_uint_t) {
    let found = WATCH.with(|c| {
        let c = c.try_borrow().ok()?;
        let watched = *c.peers.get(&(pc.name as usize))?;
        // SAFETY: set together with the map for this worker's cycle, which outlives its
        // requests.
        Some((watched, unsafe { (&*c.main, &*c.header) }))
    });
    let Some((watched, (main, header))) = found else {
        return;
    };
    let now = now_msec();
    let status = u16::try_from(u.headers_in.status_n).unwrap_or(0);
    let failed = state & NGX_PEER_FAILED as ngx_uint_t != 0;
    let slot = watched.slot as usize;
    if watched.counted {
        if let Some(counters) = header.traffic(slot) {
            counters.record(Attempt {
                status,
                failed,
                response_us: now.saturating_sub(u.start_time as u64).saturating_mul(1000),
            });
        }
    }
    let Some(up) = main.upstreams.get(watched.upstream as usize) else {
        return;
    };
    let (Some(params), Some(passive)) = (&up.passive, header.passive(slot)) else {
        return;
    };
    // SAFETY: the peer connection's events, read while it is still open.
    let timed_out = unsafe {
        pc.connection
            .as_ref()
            .is_some_and(|c| (*c.read).timedout() != 0 || (*c.write).timedout() != 0)
    };
    // SAFETY: a live peer of this cycle; its flag is a word another worker may be writing
    // (under the list's lock): a volatile read sees the old or the new value.
    let out_already = unsafe { ptr::read_volatile(&raw const (*watched.rr).down) } != 0;
    if out_already || !counts_as_failure(params, status, failed, timed_out) {
        // Requests still in flight when the peer went out do not count against it again.
        return;
    }
    if let Judgement::Eject { on_probation } = passive.fail(now, params) {
        eject(main, header, watched, now, on_probation);
    }
}

/// Ejects the peer of `watched` after failed attempts: down in every worker (the change goes
/// into the journal), unless checks do not apply to its upstream now, or it is the last peer
/// of its upstream that is up, which passive checks never take out.
fn eject(main: &MainConf, header: &ZoneHeader, watched: Watched, now: u64, on_probation: bool) {
    let ui = watched.upstream as usize;
    let slot = watched.slot as usize;
    let Some(up) = main.upstreams.get(ui) else {
        return;
    };
    let (Some(params), Some(passive)) = (&up.passive, header.passive(slot)) else {
        return;
    };
    let active = up.check.is_some();
    let mut locked = header.lock();
    if !header.probing_allowed() || locked.upstreams()[ui].excluded() {
        return;
    }
    // A free reserved peer (`upstream_healthcheck_dynamic`) or a static one that etcd's
    // replaced is no peer at all.
    let replaced = locked.upstreams()[ui].replaced;
    let is_up = |locked: &mut crate::module::zone::Locked<'_>, s: usize, config_down: bool| {
        let state = locked.slots()[s];
        let first = up.peers.first().map_or(0, |p| p.slot());
        let reserved = up
            .dynamic
            .as_ref()
            .is_some_and(|d| d.holds(s.wrapping_sub(first)));
        let (gone, etcd_down) = match locked.members().get(s) {
            Some(m) if reserved => (!m.used, m.down),
            _ => (replaced && up.dynamic.is_some(), false),
        };
        !gone
            && !etcd_down
            && !config_down
            && !state.manual_down()
            && if active {
                state.health.is_up()
            } else {
                !header.passive(s).is_some_and(|p| p.is_down())
            }
    };
    let Some(me) = up.peers.iter().find(|p| p.slot() == slot) else {
        return;
    };
    let name = match locked.members().get(slot).filter(|_| me.reserved) {
        Some(m) => m.addr().to_string(),
        None => me.name.to_string(),
    };
    if !is_up(&mut locked, slot, me.config_down) {
        return;
    }
    let others_up = up
        .peers
        .iter()
        .any(|p| p.slot() != slot && is_up(&mut locked, p.slot(), p.config_down));
    let why = if on_probation {
        "a failed proxied request on probation".to_string()
    } else {
        format!(
            "{} failed proxied requests within {}",
            params.fails,
            show_ms(params.window_ms)
        )
    };
    if !others_up {
        drop(locked);
        if !passive.may_log_refusal(now, params) {
            return;
        }
        hc_log!(
            NGX_LOG_WARN,
            "peer {} in upstream \"{}\" is not ejected after {why}: it is the last peer up",
            LogEscaped(&name),
            LogEscaped(&up.name)
        );
        return;
    }
    let down_ms = passive.eject(now, params, active, on_probation);
    let mut panic = None;
    if active {
        let ejected = locked.slots()[slot].health.eject(unix_msec()).is_some();
        let index = up.peers.iter().position(|p| p.slot() == slot);
        if ejected && index.is_some_and(|i| up.counts_for_panic(i)) {
            // One more primary down, as after a failed probe: the upstream may enter panic.
            let state = &mut locked.upstreams()[ui].panic;
            panic = state
                .on_transition(false, up.panic.as_ref())
                .map(|change| (change, *state));
            if panic.is_some() {
                locked.record(Change::Upstream(ui));
            }
        }
    } else {
        header.note_expiry(now.saturating_add(down_ms));
    }
    locked.record(Change::Slot(slot));
    drop(locked);
    let back = if active {
        "until its checks pass".to_string()
    } else {
        format!("for {}", show_ms(down_ms))
    };
    hc_log!(
        NGX_LOG_WARN,
        "peer {} in upstream \"{}\" is DOWN after {why}, last error: passive (out {back})",
        LogEscaped(&name),
        LogEscaped(&up.name)
    );
    if let Some((change, state)) = panic {
        log_panic(up, change, &state);
    }
}
