//! Idle probe connections kept between the probes of a peer (`keepalive=N`): parked after a
//! probe, taken by the next one, closed when the peer closes them, goes down or stops being
//! probed here, and when nginx needs connections or exits.
//!
//! The pool lives beside the worker, not in it: nginx may ask an idle connection to close
//! (`ngx_drain_connections`, when it runs short of connections) from inside a probe's start,
//! while the worker is borrowed; the pool is never borrowed across a call into nginx.

use core::cell::RefCell;
use core::ffi::c_void;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_t, ngx_handle_read_event,
    ngx_reusable_connection, NGX_OK,
};
use rustc_hash::FxHashMap;

use crate::module::log::hc_debug;
use crate::module::tls;
use upstream_healthcheck_glue::socket::idle_wakeup_is_spurious;

/// One idle connection and the probes it has carried.
#[derive(Clone, Copy)]
pub struct Idle {
    pub c: *mut ngx_connection_t,
    pub requests: u32,
}

struct Pool {
    by_slot: FxHashMap<u32, Idle>,
    /// The most idle connections this worker keeps.
    cap: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool { by_slot: FxHashMap::default(), cap: 0 });
}

/// Runs `f` on the pool; `None` if it is in use (never the case: no function here calls
/// into nginx while holding it).
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    POOL.with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p)))
}

/// Sets how many idle connections this worker may keep: half of `worker_connections` (10,000
/// peers kept alive by two workers need 5,000 each and more, as peers do not split evenly).
/// nginx takes idle ones back first when it runs short (they are "reusable" connections,
/// like idle client keepalive connections).
pub fn init(worker_connections: usize) {
    with_pool(|p| p.cap = worker_connections / 2);
}

/// The idle connection of `slot`, taken out of the pool for a probe; it is no longer
/// reusable by nginx and has no handlers of the pool.
pub fn take(slot: usize) -> Option<Idle> {
    let idle = with_pool(|p| p.by_slot.remove(&(slot as u32))).flatten()?;
    // SAFETY: connections in the pool are open and owned by it.
    unsafe {
        ngx_reusable_connection(idle.c, 0);
        (*idle.c).set_idle(0);
    }
    Some(idle)
}

/// Parks the open connection `c` of `slot` after a probe that left it reusable; closes it
/// instead when the pool is full or the slot already has one.
///
/// # Safety
/// `c` must be an open probe connection with no timer and no other owner.
pub unsafe fn park(slot: usize, c: *mut ngx_connection_t, requests: u32) {
    let parked = with_pool(|p| {
        if p.by_slot.len() >= p.cap || p.by_slot.contains_key(&(slot as u32)) {
            return false;
        }
        p.by_slot.insert(slot as u32, Idle { c, requests });
        true
    })
    .unwrap_or(false);
    if !parked {
        // SAFETY: per the contract.
        unsafe { close(c) };
        return;
    }
    // SAFETY: per the contract; the pool owns the connection from here.
    unsafe {
        (*c).data = slot as *mut c_void;
        (*(*c).read).handler = Some(on_idle_event);
        (*(*c).write).handler = Some(on_idle_write);
        (*c).set_idle(1);
        ngx_reusable_connection(c, 1);
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            forget(slot, c);
            close(c);
            return;
        }
    }
    hc_debug!("probe connection of slot {slot} kept idle");
}

/// Closes the idle connection of `slot`, if any (the peer went down or is not probed here).
pub fn close_slot(slot: usize) {
    if let Some(idle) = with_pool(|p| p.by_slot.remove(&(slot as u32))).flatten() {
        // SAFETY: taken out of the pool, which owned it.
        unsafe { close(idle.c) };
    }
}

/// Closes every idle connection (the worker exits or stops probing).
pub fn close_all() {
    let all: Vec<Idle> =
        with_pool(|p| p.by_slot.drain().map(|(_, i)| i).collect()).unwrap_or_default();
    for idle in all {
        // SAFETY: taken out of the pool, which owned it.
        unsafe { close(idle.c) };
    }
}

/// True when `slot` has an idle connection for its next probe.
pub fn has(slot: usize) -> bool {
    with_pool(|p| p.by_slot.contains_key(&(slot as u32))).unwrap_or(false)
}

/// True when no idle connection is kept: the common case, checked before any lookup.
pub fn is_empty() -> bool {
    with_pool(|p| p.by_slot.is_empty()).unwrap_or(true)
}

/// Removes `c` from the pool if it is there under `slot`.
fn forget(slot: usize, c: *mut ngx_connection_t) {
    with_pool(|p| {
        if p.by_slot.get(&(slot as u32)).is_some_and(|i| i.c == c) {
            p.by_slot.remove(&(slot as u32));
        }
    });
}

/// Closes a probe connection, TLS or not.
///
/// # Safety
/// `c` must be an open connection that nothing else refers to.
pub unsafe fn close(c: *mut ngx_connection_t) {
    // SAFETY: per the contract; TLS goes first (close_notify, the SSL object and its pool).
    unsafe {
        tls::shutdown(c);
        ngx_close_connection(c);
    }
}

/// An idle connection became readable: the peer closed it (its keepalive timeout), sent
/// something unasked, or nginx asks for it back (`close` set). Anything but a spurious wakeup
/// closes it.
extern "C" fn on_idle_event(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls the handler with the idle connection's read event; its data is the
    // slot, set in `park`.
    let (c, slot) = unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        (c, (*c).data as usize)
    };
    // SAFETY: nginx passes the idle connection's read event, whose data is the connection.
    let spurious = unsafe { idle_wakeup_is_spurious(ev) };
    if spurious {
        return;
    }
    hc_debug!("idle probe connection of slot {slot} closed");
    forget(slot, c);
    // SAFETY: taken out of the pool, which owned it.
    unsafe { close(c) };
}

/// Idle connections do not write; a write event is ignored.
extern "C" fn on_idle_write(_ev: *mut ngx_event_t) {}
