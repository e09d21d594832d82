//! The one place keys learned from etcd go: `control/...` to the control API's state
//! (`fleet_control`), `upstreams/<upstream>/<host:port>` to membership. Keys are relative to
//! the prefix; `revision` is the etcd revision they come with.

use crate::etcd::route::{route, Route};
use crate::module::fleet_control;
use crate::module::log::hc_debug;
use crate::module::membership;
use crate::module::process::Worker;

/// Every key under the prefix, as one read found them: what is not there is gone.
pub fn snapshot(w: &mut Worker, revision: i64, entries: &[(&str, &[u8])]) {
    let mut control = Vec::new();
    let mut members = Vec::new();
    for &(key, value) in entries {
        match route(key) {
            Route::Control(rel) => control.push((rel, value)),
            Route::Member { upstream, addr } => members.push((upstream, addr, value)),
            Route::Other => {}
        }
    }
    // Membership first: control keys may name peers from etcd.
    membership::snapshot(w, &members);
    fleet_control::snapshot(w, &control);
    hc_debug!(
        "etcd: {} membership keys at revision {revision}",
        members.len()
    );
}

/// `key` was set to `value`.
pub fn put(w: &mut Worker, revision: i64, key: &str, value: &[u8]) {
    match route(key) {
        Route::Control(rel) => fleet_control::put(w, rel, value),
        Route::Member { upstream, addr } => {
            hc_debug!("etcd: membership key {upstream}/{addr} set at revision {revision}");
            membership::put(w, upstream, addr, value);
        }
        Route::Other => {}
    }
}

/// `key` was deleted (or its lease ended).
pub fn delete(w: &mut Worker, revision: i64, key: &str) {
    match route(key) {
        Route::Control(rel) => fleet_control::delete(w, rel),
        Route::Member { upstream, addr } => {
            hc_debug!("etcd: membership key {upstream}/{addr} deleted at revision {revision}");
            membership::delete(w, upstream, addr);
        }
        Route::Other => {}
    }
}
