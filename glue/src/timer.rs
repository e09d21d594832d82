//! A worker's timer, re-armed in one way by both modules.

use ngx::ffi::{ngx_add_timer, ngx_current_msec, ngx_del_timer, ngx_event_t};
use upstream_healthcheck_core::schedule::{rearm, MAX_TICK_MS};

/// nginx's cached monotonic time in milliseconds, updated by the event loop.
pub fn now_msec() -> u64 {
    // SAFETY: a plain read of nginx's cached time, written only by this process's event loop.
    unsafe { ngx_current_msec as u64 }
}

/// Makes `timer` fire at `at_ms` (monotonic) or earlier, within `MAX_TICK_MS`: an armed timer
/// that fires later is moved, one that fires earlier is kept. `ngx_add_timer` alone would keep
/// an armed timer whose time is within its lazy delay (300 ms). Returns the delay armed.
pub fn arm(timer: &mut ngx_event_t, at_ms: u64) -> Option<u64> {
    let now = now_msec();
    let armed_at = (timer.timer_set() != 0).then_some(timer.timer.key as u64);
    let at = rearm(armed_at, at_ms.clamp(now + 1, now + MAX_TICK_MS))?;
    if armed_at.is_some() {
        // SAFETY: deleting this worker's own armed timer.
        unsafe { ngx_del_timer(timer) };
    }
    // SAFETY: arming this worker's own timer, which is not set now.
    unsafe { ngx_add_timer(timer, (at - now) as _) };
    Some(at - now)
}
