//! Active health checks for nginx upstreams: crate root of the http module, wiring the pure core
//! (the `upstream-healthcheck-core` crate, re-exported here under its module names) to the glue.
//!
//! `module` is the nginx glue, left out of unit tests; the core's unit tests run in its own crate.

pub use upstream_healthcheck_core::{
    config, control, escape, etcd, health, histogram, journal, key, matcher, membership, outcome,
    panic, parse, passive, policy, query, render, response, schedule, slow_start, state_file,
    state_lease, status_line, stream_zone, traffic,
};

#[cfg(not(test))]
mod module;
