//! Fleet-wide control (`upstream_healthcheck_admin` with `upstream_healthcheck_etcd`): a change
//! asked of any worker is written to etcd first (`control/...` keys, with a lease for a ttl)
//! and applied here once etcd took it; the worker holding the watch applies every
//! `control/...` key it learns to the zone, so every node follows.

use serde_json::Value;

use crate::control::{Action, Command, Subject};
use crate::etcd::conf::EtcdConf;
use crate::etcd::control_keys::{
    control_key, control_until, control_value, local_expiry, parse_control_key,
};
use crate::etcd::proto::{delete_body, http_post, lease_grant_body, parse_lease_grant, put_body};
use crate::module::clock::{now_msec, unix_msec};
use crate::module::control_handler::{finish_written, resolve, set_state};
use crate::module::etcd_call::{self, CallEvent, Flow};
use crate::module::log::hc_debug;
use crate::module::peers;
use crate::module::process::Worker;
use crate::module::zone::ZoneHeader;

use core::cell::Cell;
use core::sync::atomic::Ordering;
use ngx::ffi::ngx_http_request_t;
use std::collections::HashMap;
use std::rc::Rc;

/// What a control key asks of this node: the upstream, the slots (none for an exclusion) and
/// the monotonic end (`u64::MAX`: none); `None` for a key this node has nothing to do with or
/// whose ttl is over.
fn target(w: &Worker, rel: &str, value: &[u8]) -> Option<(usize, Vec<usize>, u64)> {
    let Some(subject) = parse_control_key(rel) else {
        hc_debug!("etcd: ignoring control key {rel:?}");
        return None;
    };
    let Ok((ui, slots)) = resolve(w.main, &subject, &mut w.header.lock()) else {
        hc_debug!("etcd: control key {rel:?} names nothing here");
        return None;
    };
    let (now, now_unix) = (now_msec(), unix_msec());
    let until = control_until(value);
    if until != 0 && until <= now_unix {
        return None; // over: etcd removes the key with its lease
    }
    Some((ui, slots, local_expiry(until, now_unix, now)))
}

/// Every control key, as a full read found them: what is not there ends here too.
pub fn snapshot(w: &mut Worker, entries: &[(&str, &[u8])]) {
    let main = w.main;
    let mut excluded: Vec<Option<u64>> = vec![None; main.upstreams.len()];
    let mut manual: HashMap<usize, u64> = HashMap::new();
    for &(rel, value) in entries {
        let Some((ui, slots, until)) = target(w, rel, value) else {
            continue;
        };
        if slots.is_empty() {
            excluded[ui] = Some(until);
        }
        for s in slots {
            manual.insert(s, until);
        }
    }
    let now = now_msec();
    {
        let mut locked = w.header.lock();
        for (ui, up) in main.upstreams.iter().enumerate() {
            set_state(&mut locked, main, ui, &[], excluded[ui], now);
            for peer in &up.peers {
                let slot = peer.slot();
                set_state(
                    &mut locked,
                    main,
                    ui,
                    &[slot],
                    manual.get(&slot).copied(),
                    now,
                );
            }
        }
    }
    peers::apply_changes(w);
}

/// A control key was set.
pub fn put(w: &mut Worker, rel: &str, value: &[u8]) {
    let Some((ui, slots, until)) = target(w, rel, value) else {
        return;
    };
    {
        let mut locked = w.header.lock();
        set_state(&mut locked, w.main, ui, &slots, Some(until), now_msec());
    }
    peers::apply_changes(w);
}

/// A control key was deleted, or its lease ended.
pub fn delete(w: &mut Worker, rel: &str) {
    let Some((ui, slots, _)) = target(w, rel, b"{}") else {
        return;
    };
    {
        let mut locked = w.header.lock();
        set_state(&mut locked, w.main, ui, &slots, None, now_msec());
    }
    peers::apply_changes(w);
}

/// Writes a change of the control API to etcd; the request `r` is answered by
/// `finish_written` when etcd has answered (or not in time). An error: nothing was sent.
///
/// # Safety
/// `r` must be a live request kept alive (its count) until `finish_written` runs.
pub unsafe fn write(
    r: *mut ngx_http_request_t,
    conf: &'static EtcdConf,
    header: &ZoneHeader,
    subject: Subject,
    action: Action,
) -> Result<(), String> {
    let key = format!("{}{}", conf.prefix, control_key(&subject));
    let addr = conf.endpoints[header.etcd.endpoint.load(Ordering::Acquire) % conf.endpoints.len()];
    let command = Command::Apply { subject, action };
    let host = addr.to_string();
    let finish = move |result: Result<Value, String>| {
        finish_written(r, result.map(|_| command));
    };
    match action {
        Action::Set { ttl_secs: 0 } => {
            let body = put_body(&key, &control_value(0), 0);
            call(conf, addr, http_post("/v3/kv/put", &host, &body), finish)
        }
        Action::Set { ttl_secs } => {
            let until = unix_msec() + ttl_secs * 1000;
            let grant = http_post("/v3/lease/grant", &host, &lease_grant_body(ttl_secs));
            call(conf, addr, grant, move |granted| {
                let put = granted.and_then(|v| parse_lease_grant(&v)).map(|lease| {
                    http_post(
                        "/v3/kv/put",
                        &host,
                        &put_body(&key, &control_value(until), lease),
                    )
                });
                match put {
                    Ok(put) => {
                        // The answer is given once: by the put, or here when it cannot start.
                        let finish = Rc::new(Cell::new(Some(finish)));
                        let by_put = Rc::clone(&finish);
                        let started = call(conf, addr, put, move |done| {
                            if let Some(f) = by_put.take() {
                                f(done);
                            }
                        });
                        if let Err(e) = started {
                            if let Some(f) = finish.take() {
                                f(Err(e));
                            }
                        }
                    }
                    Err(e) => finish(Err(e)),
                }
            })
        }
        Action::Del => {
            let body = delete_body(&key);
            call(
                conf,
                addr,
                http_post("/v3/kv/deleterange", &host, &body),
                finish,
            )
        }
        Action::Get => Err("a=get is not written".to_owned()),
    }
}

/// One unary call whose answer goes to `then`. Its timer keeps an exiting worker until the
/// answer comes (or the timeout), so the request it answers is never left hanging.
fn call(
    conf: &EtcdConf,
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    then: impl FnOnce(Result<Value, String>) + 'static,
) -> Result<(), String> {
    let mut then = Some(then);
    let on = Box::new(move |event: CallEvent| {
        if let (CallEvent::Done(result), Some(f)) = (event, then.take()) {
            f(result);
        }
        Flow::Continue
    });
    etcd_call::start(addr, request, false, conf.timeout_ms, false, on).map(|_| ())
}
