//! The nginx glue both modules (http and stream) share, where it is the same for both:
//! logging, configuration errors, probe sockets, idle connections, shared zones and timers.
//! Like the modules' own glue it calls nginx, so it is left out of unit tests (it would not
//! link without nginx); the modules' integration tests cover it.
#![cfg(not(test))]

pub mod conf;
pub mod log;
pub mod shm;
pub mod socket;
pub mod timer;

/// For the log macros, so that a crate using them names `ngx` through this one.
pub use ngx;
