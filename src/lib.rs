//! Active health checks for nginx upstreams: crate root, wiring the pure core to the nginx glue.
//!
//! Everything but `module` is the pure core: it calls no nginx function and reads no clock, so
//! `cargo test` links and runs it anywhere. `module` is the nginx glue, left out of unit tests.

pub mod config;
pub mod control;
pub mod escape;
pub mod etcd;
pub mod health;
pub mod histogram;
pub mod journal;
pub mod key;
pub mod matcher;
pub mod membership;
pub mod outcome;
pub mod panic;
pub mod parse;
pub mod passive;
pub mod policy;
pub mod query;
pub mod render;
pub mod response;
pub mod schedule;
pub mod slow_start;
pub mod state_file;
pub mod state_lease;
pub mod status_line;
pub mod traffic;

#[cfg(test)]
mod proptests;

#[cfg(not(test))]
mod module;
