//! Housekeeping on each tick: following the HA address, and ending exclusions and manual downs
//! whose ttl ran out. Each change goes into the journal, so every worker applies it.

use core::sync::atomic::Ordering;

use crate::escape::LogEscaped;
use crate::journal::Change;
use crate::module::ha;
use crate::module::log::hc_log;
use crate::module::process::Worker;
use crate::module::zone::{earliest_expiry, restart_checks, HA_MASTER, HA_SLAVER};
use crate::parse::show_ms;

pub fn run(w: &mut Worker, now: u64) {
    follow_ha_address(w, now);
    expire_ttls(w, now);
}

/// Becomes the HA master (checks restart) or standby (checks stop) as this host gains or loses
/// the HA address.
fn follow_ha_address(w: &mut Worker, now: u64) {
    let main = w.main;
    let Some((addr, interval)) = main.ha else {
        return;
    };
    if now < w.ha_next_ms {
        return;
    }
    w.ha_next_ms = now + interval;
    let want = if ha::host_has_address(addr) {
        HA_MASTER
    } else {
        HA_SLAVER
    };
    if w.header.ha_state.load(Ordering::Acquire) == want {
        return;
    }
    let mut locked = w.header.lock();
    if w.header.ha_state.swap(want, Ordering::AcqRel) == want {
        return; // another worker saw it first
    }
    if want == HA_MASTER {
        for ui in 0..main.upstreams.len() {
            restart_checks(&mut locked, main, ui, now);
        }
    }
    locked.record(Change::All);
    let (mode, not) = if want == HA_MASTER {
        ("Master", "")
    } else {
        ("Slaver", "not ")
    };
    hc_log!(
        NGX_LOG_WARN,
        "HA mode is {mode}: {addr} is {not}on this host"
    );
}

/// Ends the exclusions (checks restart), manual downs and passive ejections whose time ran out;
/// looks only when the earliest of them is due.
fn expire_ttls(w: &mut Worker, now: u64) {
    let header = w.header;
    if now < header.expiry_hint.load(Ordering::Acquire) {
        return;
    }
    let main = w.main;
    let mut locked = header.lock();
    for ui in 0..main.upstreams.len() {
        let until = locked.upstreams()[ui].excluded_until_ms;
        if until != 0 && until <= now {
            locked.upstreams()[ui].excluded_until_ms = 0;
            restart_checks(&mut locked, main, ui, now);
            hc_log!(
                NGX_LOG_NOTICE,
                "exclusion of upstream \"{}\" expired",
                LogEscaped(&main.upstreams[ui].name)
            );
        }
    }
    for slot in 0..locked.slots().len() {
        let s = &mut locked.slots()[slot];
        if s.manual_expiry().is_some_and(|until| until <= now) {
            s.end_manual_down(now);
            locked.record(Change::Slot(slot));
        }
        if header.passive(slot).is_some_and(|p| p.expire(now)) {
            locked.record(Change::Slot(slot));
            let Some(t) = w.targets.get(slot) else {
                continue;
            };
            let Some(up) = main.upstreams.get(t.upstream()) else {
                continue;
            };
            let name = match locked.members().get(slot) {
                Some(m) if up.peers.get(t.peer()).is_some_and(|p| p.reserved) => {
                    m.addr().to_string()
                }
                _ => up.peers.get(t.peer()).map_or("", |p| p.name).to_string(),
            };
            let window = up.passive.as_ref().map_or(0, |p| p.window_ms);
            hc_log!(
                NGX_LOG_NOTICE,
                "peer {} in upstream \"{}\" is back after its passive down time, on probation for {}",
                LogEscaped(&name),
                LogEscaped(&up.name),
                show_ms(window)
            );
        }
    }
    let next = earliest_expiry(&mut locked);
    header.expiry_hint.store(next, Ordering::Release);
}
