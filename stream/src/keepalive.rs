//! Idle stream probe connections (`keepalive=N`, tcp probes that send): one per peer in the
//! worker that made it, kept for the peer's next probe and closed when the peer closes it or
//! sends something unasked.

use core::ffi::c_void;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_t, ngx_handle_read_event, NGX_OK,
};

use crate::worker::{with_any_worker, Worker};
use upstream_healthcheck_glue::hc_debug;
use upstream_healthcheck_glue::socket::idle_wakeup_is_spurious;

/// An idle connection and the probes it carried.
pub struct Idle {
    pub c: *mut ngx_connection_t,
    pub carried: u32,
}

/// Takes the idle connection of `slot`, if any.
pub fn take(w: &mut Worker, slot: usize) -> Option<Idle> {
    w.idle.remove(&slot)
}

/// Keeps `c` idle for `slot`'s next probe (closes it when the slot already has one).
///
/// # Safety
/// `c` must be an open probe connection with no timer and no other owner.
pub unsafe fn park(w: &mut Worker, slot: usize, c: *mut ngx_connection_t, carried: u32) {
    // SAFETY: per the contract; the worker owns the connection from here.
    unsafe {
        if w.idle.contains_key(&slot) {
            ngx_close_connection(c);
            return;
        }
        (*c).data = slot as *mut c_void;
        (*(*c).read).handler = Some(on_idle_event);
        (*(*c).write).handler = Some(on_idle_write);
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            ngx_close_connection(c);
            return;
        }
    }
    w.idle.insert(slot, Idle { c, carried });
}

/// Closes every idle connection (the worker exits).
pub fn close_all(w: &mut Worker) {
    for (_, idle) in w.idle.drain() {
        // SAFETY: taken from the worker, which owned it.
        unsafe { ngx_close_connection(idle.c) };
    }
}

/// An idle connection became readable: the peer closed it or sent something unasked (a
/// spurious wakeup aside): it is closed.
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
    hc_debug!("idle stream probe connection of slot {slot} closed");
    let owned = with_any_worker(|w| {
        if w.idle.get(&slot).is_some_and(|i| i.c == c) {
            w.idle.remove(&slot);
            true
        } else {
            false
        }
    });
    if owned != Some(false) {
        // SAFETY: taken out of the worker (or the worker is gone), which owned it.
        unsafe { ngx_close_connection(c) };
    }
}

/// Idle connections do not write; a write event is ignored.
extern "C" fn on_idle_write(_ev: *mut ngx_event_t) {}
