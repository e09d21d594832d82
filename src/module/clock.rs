//! nginx's cached clocks, read in one place and passed into the core as plain numbers.

use ngx::ffi::{ngx_current_msec, ngx_timeofday};

/// nginx's cached monotonic time in milliseconds, updated by the event loop.
pub fn now_msec() -> u64 {
    // SAFETY: a plain read of nginx's cached time, written only by this process's event loop.
    unsafe { ngx_current_msec as u64 }
}

/// nginx's cached wall-clock time in Unix milliseconds.
pub fn unix_msec() -> u64 {
    let tp = ngx_timeofday();
    tp.sec as u64 * 1000 + tp.msec as u64
}
