//! The pure core of the health-check modules (http and stream): parsing, state machines,
//! scheduling, classification and rendering. It calls no nginx function and reads no clock, so
//! `cargo test -p upstream-healthcheck-core` links and runs it anywhere.

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
pub mod stream;
pub mod stream_zone;
pub mod traffic;

#[cfg(test)]
mod proptests;
