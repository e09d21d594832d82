//! Following etcd (`upstream_healthcheck_etcd`) from a worker: one worker at a time holds
//! the watch (a lease in the zone); it reads the whole prefix, hands the keys to `fleet`,
//! then follows a watch from the revision it read; on any failure it keeps the last state,
//! tries the next endpoint after a backoff and resumes the watch where it stopped (a full
//! read again when etcd compacted those revisions away), and keeps the link's state in the
//! zone for every worker's status pages.

use core::ptr;
use core::sync::atomic::Ordering;
use std::net::SocketAddr;

use ngx::ffi::{ngx_event_t, ngx_random};

use crate::etcd::conf::EtcdConf;
use crate::etcd::link::{
    backoff_ms, lease_step, link_log, next_endpoint, LeaseStep, LinkLog, LEASE_MS, LEASE_RENEW_MS,
    LINK_DOWN, LINK_UP,
};
use crate::etcd::proto::{
    http_post, parse_range, parse_watch_msg, range_body, watch_body, Event, WatchMsg,
};
use crate::module::clock::{now_msec, unix_msec};
use crate::module::etcd_call::{self, Call, CallEvent, Flow};
use crate::module::fleet;
use crate::module::log::{hc_debug, hc_log};
use crate::module::module_conf::MainConf;
use crate::module::process::{exiting, with_any_worker, with_worker, Worker};
use crate::render::EtcdStatus;

/// Where the holder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No call: waiting for the lease or the end of a backoff.
    Idle,
    /// Reading the whole prefix.
    Reading,
    /// Following the watch.
    Watching,
}

/// A worker's side of etcd; lives in the worker.
pub struct Client {
    conf: &'static EtcdConf,
    timer: ngx_event_t,
    /// This worker holds the watch lease.
    holding: bool,
    phase: Phase,
    /// The call in flight (range or watch), null when none.
    call: *mut Call,
    endpoint: usize,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// No attempt before this time (monotonic ms).
    retry_at: u64,
    /// The next attempt reads the whole prefix (the watch cannot resume: compacted).
    read_again: bool,
    /// The heartbeat in flight while watching, null when none.
    heartbeat: *mut Call,
    /// When the next heartbeat goes (monotonic ms).
    heartbeat_at: u64,
}

/// A watch says nothing while nothing changes: this often, the holder asks etcd something
/// cheap, so that an etcd that stopped answering (frozen, behind a partition) is noticed.
const HEARTBEAT_MS: u64 = 3000;

/// Starts following etcd in this worker when it is configured.
pub fn start(w: &mut Worker) {
    let Some((conf, _)) = &w.main.etcd else {
        return;
    };
    let mut client = Box::new(Client {
        conf,
        // SAFETY: an all-zero ngx_event_t is its idle state.
        timer: unsafe { core::mem::zeroed() },
        holding: false,
        phase: Phase::Idle,
        call: ptr::null_mut(),
        endpoint: w.header.etcd.endpoint.load(Ordering::Acquire) % conf.endpoints.len(),
        failures: 0,
        retry_at: 0,
        read_again: false,
        heartbeat: ptr::null_mut(),
        heartbeat_at: 0,
    });
    client.timer.handler = Some(on_timer);
    // SAFETY: the cycle's log lives as long as the cycle.
    client.timer.log = unsafe { (*w.cycle).log };
    client.timer.set_cancelable(1);
    w.etcd = Some(client);
    arm(w, now_msec());
}

/// Stops following etcd: the call is closed, the timer removed and the lease given up, so
/// another worker takes the watch over at once.
pub fn stop(w: &mut Worker) {
    let Some(c) = w.etcd.as_mut() else { return };
    drop_call(c);
    if c.timer.timer_set() != 0 {
        // SAFETY: this client's own armed timer.
        unsafe { ngx::ffi::ngx_del_timer(&mut c.timer) };
    }
    let holding = core::mem::replace(&mut c.holding, false);
    if holding && !w.is_stale() {
        let shared = &w.header.etcd;
        let _locked = w.header.lock();
        if shared.holder.load(Ordering::Acquire) == w.pid {
            shared.holder.store(0, Ordering::Release);
            shared.holder_until_ms.store(0, Ordering::Release);
        }
    }
}

fn drop_call(c: &mut Client) {
    for call in [&mut c.call, &mut c.heartbeat] {
        if !call.is_null() {
            // SAFETY: a non-null call is live: its callback nulls it when it ends.
            unsafe { etcd_call::abort(*call) };
            *call = ptr::null_mut();
        }
    }
    c.phase = Phase::Idle;
}

/// Makes the timer fire at `at_ms` or earlier (an armed timer is deleted before it is moved).
fn arm(w: &mut Worker, at_ms: u64) {
    if exiting() {
        return;
    }
    let Some(c) = w.etcd.as_mut() else { return };
    let now = now_msec();
    let at = at_ms.max(now + 1);
    if c.timer.timer_set() != 0 {
        if c.timer.timer.key as u64 <= at {
            return;
        }
        // SAFETY: this client's own armed timer.
        unsafe { ngx::ffi::ngx_del_timer(&mut c.timer) };
    }
    // SAFETY: arming this client's own timer, which is not set now; the client lives in the
    // worker until `stop` deletes the timer.
    unsafe { ngx::ffi::ngx_add_timer(&mut c.timer, (at - now) as _) };
}

extern "C" fn on_timer(_ev: *mut ngx_event_t) {
    if exiting() {
        with_any_worker(stop);
        return;
    }
    with_worker(step);
}

/// Renews or takes the lease, lets the watch go when another worker holds it, and starts a
/// full read when this worker holds it without a call.
fn step(w: &mut Worker) {
    let now = now_msec();
    let shared = &w.header.etcd;
    let decision = {
        let _locked = w.header.lock();
        let holder = shared.holder.load(Ordering::Acquire);
        let until = shared.holder_until_ms.load(Ordering::Acquire);
        let decision = lease_step(holder, until, w.pid, now);
        if decision != LeaseStep::Leave {
            shared.holder.store(w.pid, Ordering::Release);
            shared
                .holder_until_ms
                .store(now + LEASE_MS, Ordering::Release);
        }
        decision
    };
    let Some(c) = w.etcd.as_mut() else { return };
    match (decision, c.holding) {
        (LeaseStep::Leave, true) => {
            hc_debug!("etcd: another worker holds the watch, letting go");
            c.holding = false;
            drop_call(c);
        }
        (LeaseStep::Take | LeaseStep::Hold, false) => {
            hc_debug!("etcd: this worker takes the watch");
            c.holding = true;
            c.failures = 0;
            c.retry_at = now;
            c.endpoint = shared.endpoint.load(Ordering::Acquire) % c.conf.endpoints.len();
        }
        _ => {}
    }
    if c.holding && c.call.is_null() && now >= c.retry_at {
        // The zone reflects etcd up to its revision (0: not read yet in this cycle): the
        // watch resumes from there, unless the revisions after it were compacted away.
        let revision = shared.revision.load(Ordering::Acquire);
        if revision > 0 && !c.read_again {
            watch(w, revision + 1);
        } else {
            read_all(w);
        }
    }
    let Some(c) = w.etcd.as_ref() else { return };
    if c.phase == Phase::Watching && c.heartbeat.is_null() && now >= c.heartbeat_at {
        heartbeat(w);
    }
    let Some(c) = w.etcd.as_ref() else { return };
    let mut next = now + LEASE_RENEW_MS;
    if c.holding && c.call.is_null() {
        next = next.min(c.retry_at);
    }
    arm(w, next);
}

fn endpoint(c: &Client) -> SocketAddr {
    c.conf.endpoints[c.endpoint % c.conf.endpoints.len()]
}

/// Reads the whole prefix.
fn read_all(w: &mut Worker) {
    let Some(c) = w.etcd.as_mut() else { return };
    let addr = endpoint(c);
    let request = http_post(
        "/v3/kv/range",
        &addr.to_string(),
        &range_body(&c.conf.prefix),
    );
    let on = Box::new(|event: CallEvent| {
        callback(false, |w| {
            on_range(w, event);
            Flow::Continue
        })
    });
    match etcd_call::start(addr, request, false, c.conf.timeout_ms, true, on) {
        Ok(call) => {
            c.call = call;
            c.phase = Phase::Reading;
        }
        Err(e) => fail(w, &e),
    }
}

/// Runs a call's callback with the worker; a worker left behind by a reload only forgets the
/// call, which ends.
fn callback(heartbeat: bool, f: impl FnOnce(&mut Worker) -> Flow) -> Flow {
    with_any_worker(|w| {
        if w.is_stale() {
            if let Some(c) = w.etcd.as_mut() {
                if heartbeat {
                    c.heartbeat = ptr::null_mut();
                } else {
                    c.call = ptr::null_mut();
                }
            }
            return Flow::Stop;
        }
        f(w)
    })
    .unwrap_or(Flow::Stop)
}

fn on_range(w: &mut Worker, event: CallEvent) {
    let Some(c) = w.etcd.as_mut() else { return };
    c.call = ptr::null_mut();
    c.phase = Phase::Idle;
    let CallEvent::Done(result) = event else {
        return;
    };
    let (revision, kvs) = match result.and_then(|v| parse_range(&v)) {
        Ok(read) => read,
        Err(e) => return fail(w, &e),
    };
    let prefix = c.conf.prefix.as_bytes();
    let entries: Vec<(&str, &[u8])> = kvs
        .iter()
        .filter_map(|kv| {
            let rel = kv.key.strip_prefix(prefix)?;
            Some((core::str::from_utf8(rel).ok()?, kv.value.as_slice()))
        })
        .collect();
    hc_debug!("etcd: read {} keys at revision {revision}", entries.len());
    fleet::snapshot(w, revision, &entries);
    w.header.etcd.revision.store(revision, Ordering::Release);
    if let Some(c) = w.etcd.as_mut() {
        c.read_again = false;
    }
    watch(w, revision + 1);
}

/// Follows the watch from `start_revision`.
fn watch(w: &mut Worker, start_revision: i64) {
    let Some(c) = w.etcd.as_mut() else { return };
    let addr = endpoint(c);
    let request = http_post(
        "/v3/watch",
        &addr.to_string(),
        &watch_body(&c.conf.prefix, start_revision),
    );
    let on = Box::new(|event: CallEvent| callback(false, |w| on_watch(w, event)));
    match etcd_call::start(addr, request, true, c.conf.timeout_ms, true, on) {
        Ok(call) => {
            c.call = call;
            c.phase = Phase::Watching;
            c.heartbeat_at = now_msec() + HEARTBEAT_MS;
        }
        Err(e) => fail(w, &e),
    }
}

fn on_watch(w: &mut Worker, event: CallEvent) -> Flow {
    let v = match event {
        CallEvent::Message(v) => v,
        CallEvent::Done(result) => {
            if let Some(c) = w.etcd.as_mut() {
                c.call = ptr::null_mut();
                drop_call(c);
            }
            let e = result.map_or_else(|e| e, |_| "etcd ended the watch".to_owned());
            fail(w, &e);
            return Flow::Stop;
        }
    };
    // The call ends when this returns Stop; the heartbeat with it.
    let stop = |w: &mut Worker| {
        if let Some(c) = w.etcd.as_mut() {
            c.call = ptr::null_mut();
            drop_call(c);
        }
        Flow::Stop
    };
    match parse_watch_msg(&v) {
        Ok(WatchMsg::Created) => {
            connected(w);
            Flow::Continue
        }
        Ok(WatchMsg::Events { revision, events }) => {
            let Some(c) = w.etcd.as_ref() else {
                return Flow::Stop;
            };
            let prefix = c.conf.prefix.clone();
            for e in &events {
                let (key, value) = match e {
                    Event::Put(kv) => (&kv.key, Some(kv.value.as_slice())),
                    Event::Delete(key) => (key, None),
                };
                let Some(rel) = key
                    .strip_prefix(prefix.as_bytes())
                    .and_then(|k| core::str::from_utf8(k).ok())
                else {
                    continue;
                };
                match value {
                    Some(value) => fleet::put(w, revision, rel, value),
                    None => fleet::delete(w, revision, rel),
                }
            }
            w.header.etcd.revision.store(revision, Ordering::Release);
            Flow::Continue
        }
        Ok(WatchMsg::Compacted(at)) => {
            hc_log!(
                NGX_LOG_NOTICE,
                "etcd compacted the revisions the watch needs (up to {at}), reading everything again"
            );
            let flow = stop(w);
            if let Some(c) = w.etcd.as_mut() {
                c.retry_at = now_msec();
                c.read_again = true;
            }
            arm(w, now_msec());
            flow
        }
        Ok(WatchMsg::Canceled(reason)) => {
            let flow = stop(w);
            fail(w, &format!("etcd canceled the watch: {reason}"));
            flow
        }
        Err(e) => {
            let flow = stop(w);
            fail(w, &format!("etcd sent an invalid watch message: {e}"));
            flow
        }
    }
}

/// Asks etcd for the count of keys under the prefix, alongside the watch: no answer in time
/// ends the watch as a failure.
fn heartbeat(w: &mut Worker) {
    let Some(c) = w.etcd.as_mut() else { return };
    let addr = endpoint(c);
    let mut body = range_body(&c.conf.prefix);
    body["count_only"] = serde_json::Value::Bool(true);
    let request = http_post("/v3/kv/range", &addr.to_string(), &body);
    let on = Box::new(|event: CallEvent| {
        callback(true, |w| {
            on_heartbeat(w, event);
            Flow::Continue
        })
    });
    match etcd_call::start(addr, request, false, c.conf.timeout_ms, true, on) {
        Ok(call) => c.heartbeat = call,
        Err(e) => {
            drop_call(c);
            fail(w, &e);
        }
    }
}

fn on_heartbeat(w: &mut Worker, event: CallEvent) {
    let Some(c) = w.etcd.as_mut() else { return };
    c.heartbeat = ptr::null_mut();
    c.heartbeat_at = now_msec() + HEARTBEAT_MS;
    if let CallEvent::Done(Err(e)) = event {
        // The watch is not to be trusted either.
        drop_call(c);
        fail(w, &e);
    }
}

/// The watch is in place: the link is up.
fn connected(w: &mut Worker) {
    let Some(c) = w.etcd.as_mut() else { return };
    c.failures = 0;
    let endpoint = c.endpoint;
    let addr = endpoint_name(c);
    let shared = &w.header.etcd;
    let revision = shared.revision.load(Ordering::Acquire);
    let before = shared.set_link(&mut w.header.lock(), LINK_UP, endpoint, None, unix_msec());
    if link_log(before, LINK_UP) == LinkLog::OutageEnds {
        hc_log!(
            NGX_LOG_NOTICE,
            "etcd is reachable again at {addr}, following it from revision {revision}"
        );
    }
}

fn endpoint_name(c: &Client) -> String {
    endpoint(c).to_string()
}

/// An attempt failed: the last state stays, the next endpoint is tried after a backoff.
fn fail(w: &mut Worker, error: &str) {
    let Some(c) = w.etcd.as_mut() else { return };
    hc_debug!("etcd: {error}");
    c.failures = c.failures.saturating_add(1);
    let tried = c.endpoint;
    c.endpoint = next_endpoint(c.endpoint, c.conf.endpoints.len());
    let now = now_msec();
    c.retry_at = now + backoff_ms(c.failures, ngx_random() as u64);
    let retry_at = c.retry_at;
    let shared = &w.header.etcd;
    let before = shared.set_link(
        &mut w.header.lock(),
        LINK_DOWN,
        tried,
        Some(error),
        unix_msec(),
    );
    if link_log(before, LINK_DOWN) == LinkLog::OutageStarts {
        hc_log!(
            NGX_LOG_ERR,
            "etcd is unreachable, keeping the last state and retrying: {error}"
        );
    }
    arm(w, retry_at);
}

/// The link as the status pages show it.
pub fn status(main: &MainConf) -> Option<EtcdStatus> {
    let (conf, _) = main.etcd.as_ref()?;
    // SAFETY: the header, when set, points into the zone mapped for this cycle.
    let header = unsafe { main.header.as_ref() }?;
    let mut locked = header.lock();
    let view = header.etcd.view(&mut locked);
    drop(locked);
    Some(EtcdStatus {
        connected: view.connected,
        endpoint: conf.endpoints[view.endpoint % conf.endpoints.len()].to_string(),
        revision: view.revision,
        since_unix: view.since_unix,
        last_error: view.last_error,
        refused_keys: view.refused_keys,
    })
}
