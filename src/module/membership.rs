//! etcd's `upstreams/<upstream>/<host:port>` keys into the shared zone: the holder of the etcd
//! watch calls `snapshot` after a full read and `put` / `delete` for each watched event; every
//! worker then applies the change to nginx's peers through the journal (see `peers`).

use core::cell::RefCell;
use core::sync::atomic::Ordering;

use crate::escape::LogEscaped;
use crate::health::PeerHealth;
use crate::journal::Change;
use crate::membership::{parse_addr, parse_value, Op, Roster};
use crate::module::clock::now_msec;
use crate::module::log::hc_log;
use crate::module::module_conf::{MainConf, UpstreamConf};
use crate::module::process::Worker;
use crate::module::zone::{member_key, upstream_key, Locked, ZoneHeader};
use crate::schedule::Schedule;
use crate::slow_start::in_service_mark;
use crate::traffic::Traffic;

/// The holder's rosters, one per upstream (`None` for a static one), for the zone they were
/// built from.
type Rosters = Option<(*const ZoneHeader, Vec<Option<Roster>>)>;

thread_local! {
    /// Rebuilt from the zone at each full read, or when missing or of another zone.
    static ROSTERS: RefCell<Rosters> = const { RefCell::new(None) };
}

/// The rosters as the zone's members say, for a worker that has none yet.
fn rosters_from_zone(main: &MainConf, locked: &mut Locked<'_>) -> Vec<Option<Roster>> {
    let members = locked.members();
    main.upstreams
        .iter()
        .map(|up| {
            let d = up.dynamic.as_ref()?;
            let reserved = &up.peers[d.first..d.first + d.max];
            let used: Vec<(usize, &str)> = reserved
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let m = members.get(p.slot())?;
                    m.used.then(|| (i, m.addr()))
                })
                .collect();
            Some(Roster::new(d.max, used))
        })
        .collect()
}

/// Runs `f` with this worker's rosters, built from the zone when missing or stale.
fn with_rosters<R>(w: &Worker, f: impl FnOnce(&mut Vec<Option<Roster>>) -> R) -> R {
    ROSTERS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let header = w.header as *const ZoneHeader;
        if !matches!(&*cell, Some((h, _)) if *h == header) {
            let rosters = rosters_from_zone(w.main, &mut w.header.lock());
            *cell = Some((header, rosters));
        }
        let (_, rosters) = cell.as_mut().expect("set above");
        f(rosters)
    })
}

/// The upstream with `upstream_healthcheck_dynamic` of this name.
fn dynamic_upstream(main: &MainConf, name: &str) -> Option<usize> {
    main.upstreams
        .iter()
        .position(|u| u.name == name && u.dynamic.is_some())
}

/// The address of a key, or `None` (logged) when it is not an address literal with a port.
fn address(upstream: &str, addr: &str) -> Option<String> {
    let parsed = parse_addr(addr).map(|(_, shown)| shown);
    if parsed.is_none() {
        hc_log!(
            NGX_LOG_WARN,
            "etcd key \"upstreams/{}/{}\" is ignored: not an IP address with a port",
            LogEscaped(upstream),
            LogEscaped(addr)
        );
    }
    parsed
}

/// A full read of etcd: the membership of every dynamic upstream is replaced by its keys (an
/// upstream without keys gets no peers), and its static servers are no longer used.
pub fn snapshot(w: &mut Worker, entries: &[(&str, &str, &[u8])]) {
    let main = w.main;
    let mut per_upstream: Vec<Vec<(String, &[u8])>> = vec![Vec::new(); main.upstreams.len()];
    let mut unknown = 0;
    for &(upstream, addr, value) in entries {
        let Some(ui) = dynamic_upstream(main, upstream) else {
            unknown += 1;
            continue;
        };
        if let Some(addr) = address(upstream, addr) {
            per_upstream[ui].push((addr, value));
        }
    }
    if unknown > 0 {
        hc_log!(
            NGX_LOG_WARN,
            "{unknown} etcd key(s) under \"upstreams/\" name no upstream with \
             \"upstream_healthcheck_dynamic\" and are ignored"
        );
    }
    let now = now_msec();
    let header = w.header;
    ROSTERS.with(|cell| {
        let mut locked = header.lock();
        let mut rosters = rosters_from_zone(main, &mut locked);
        for (ui, up) in main.upstreams.iter().enumerate() {
            let Some(roster) = rosters[ui].as_mut() else {
                continue;
            };
            let keys: Vec<(&str, &[u8])> = per_upstream[ui]
                .iter()
                .map(|(a, v)| (a.as_str(), *v))
                .collect();
            let busy = |offset: usize| in_flight(w, up, offset);
            for op in roster.replace(&keys, &busy) {
                apply(&mut locked, up, &op, now);
            }
            let record = &mut locked.upstreams()[ui];
            record.replaced = true;
            if roster.refused() > 0 {
                hc_log!(
                    NGX_LOG_WARN,
                    "upstream \"{}\": {} etcd key(s) refused, past max_peers={}",
                    LogEscaped(&up.name),
                    roster.refused(),
                    roster.len()
                );
            }
            note_refused(&mut locked, ui, roster);
            locked.record(Change::Upstream(ui));
        }
        // From scratch: a reload carried the upstreams' counts, not the fleet's.
        let total: u64 = locked
            .upstreams()
            .iter()
            .map(|r| u64::from(r.refused))
            .sum();
        header.etcd.refused_keys.store(total, Ordering::Release);
        drop(locked);
        *cell.borrow_mut() = Some((header as *const ZoneHeader, rosters));
    });
}

/// A key was written (added, or its value changed).
pub fn put(w: &mut Worker, upstream: &str, addr: &str, value: &[u8]) {
    on_key(w, upstream, addr, |roster, addr, busy| {
        let op = roster.put(addr, value, busy);
        if op.is_none() {
            hc_log!(
                NGX_LOG_WARN,
                "etcd key \"upstreams/{}/{addr}\" is refused: upstream \"{}\" has its \
                 max_peers={} peers",
                LogEscaped(upstream),
                LogEscaped(upstream),
                roster.len()
            );
        }
        op.into_iter().collect()
    });
}

/// A key was deleted: its peer takes no new requests (those in flight finish).
pub fn delete(w: &mut Worker, upstream: &str, addr: &str) {
    on_key(w, upstream, addr, |roster, addr, busy| {
        roster.delete(addr, busy)
    });
}

/// One watched event on the key of `addr` in `upstream`: `change` tells the holder's roster,
/// and what it does is written into the zone under one hold of the lock (O(1)).
fn on_key(
    w: &mut Worker,
    upstream: &str,
    addr: &str,
    change: impl Fn(&mut Roster, &str, &dyn Fn(usize) -> bool) -> Vec<Op>,
) {
    let main = w.main;
    let Some(ui) = dynamic_upstream(main, upstream) else {
        return;
    };
    let Some(addr) = address(upstream, addr) else {
        return;
    };
    let up = &main.upstreams[ui];
    let now = now_msec();
    let busy = |offset: usize| in_flight(w, up, offset);
    with_rosters(w, |rosters| {
        let mut locked = w.header.lock();
        let Some(roster) = rosters[ui].as_mut() else {
            return;
        };
        let mut ops = change(roster, &addr, &busy);
        if !expected(&mut locked, up, &ops) {
            // The zone was written by another holder since this one's roster was built (the
            // watch moved away and back): rebuilt from the zone, the event is taken again.
            hc_log!(
                NGX_LOG_NOTICE,
                "the membership of upstream \"{}\" is read again from the shared zone",
                LogEscaped(&up.name)
            );
            *rosters = rosters_from_zone(main, &mut locked);
            let Some(fresh) = rosters[ui].as_mut() else {
                return;
            };
            ops = change(fresh, &addr, &busy);
        }
        for op in &ops {
            apply(&mut locked, up, op, now);
        }
        if let Some(roster) = rosters[ui].as_ref() {
            note_refused(&mut locked, ui, roster);
        }
    });
}

/// Whether the zone is as the roster believes before `ops`, taken in order (the lock is
/// held): a new peer's place is free (or freed just before), a known peer's place holds it, a
/// freed place held someone.
fn expected(locked: &mut Locked<'_>, up: &UpstreamConf, ops: &[Op]) -> bool {
    let Some(d) = &up.dynamic else { return false };
    let mut freed = Vec::new();
    ops.iter().all(|op| {
        let offset = match op {
            Op::Set { offset, .. } | Op::Free { offset } => *offset,
        };
        let Some(m) = up
            .peers
            .get(d.first + offset)
            .and_then(|p| locked.members().get(p.slot()).copied())
        else {
            return false;
        };
        match op {
            Op::Set { new: true, .. } => !m.used || freed.contains(&offset),
            Op::Set { addr, .. } => m.used && m.addr() == addr,
            Op::Free { .. } => {
                freed.push(offset);
                m.used
            }
        }
    })
}

/// Whether nginx's peer of reserved place `offset` of `up` has requests in flight (of the
/// peer deleted from it): a new peer then goes elsewhere when it can, so that those requests
/// never see their peer's address change under them.
fn in_flight(w: &Worker, up: &UpstreamConf, offset: usize) -> bool {
    let Some(d) = &up.dynamic else { return false };
    let Some(t) = up
        .peers
        .get(d.first + offset)
        .and_then(|p| w.targets.get(p.slot()))
    else {
        return false;
    };
    // SAFETY: a live peer of this cycle; `conns` is a counter nginx changes under the peer's
    // lock, read here as a hint only.
    unsafe { t.rr.as_ref() }.is_some_and(|rr| rr.conns > 0)
}

/// Keeps the upstream's count of refused keys, and the fleet's (`msg.etcd.refused_keys`,
/// the Prometheus gauge) by the difference: O(1).
fn note_refused(locked: &mut Locked<'_>, ui: usize, roster: &Roster) {
    let record = &mut locked.upstreams()[ui];
    let (was, now) = (u64::from(record.refused), roster.refused() as u64);
    record.refused = now as u32;
    let total = &locked.header().etcd.refused_keys;
    if now >= was {
        total.fetch_add(now - was, Ordering::AcqRel);
    } else {
        total.fetch_sub(
            (was - now).min(total.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
    }
}

/// Writes one roster change into the zone (the lock is held): O(1).
fn apply(locked: &mut Locked<'_>, up: &UpstreamConf, op: &Op, now: u64) {
    let Some(d) = &up.dynamic else { return };
    let offset = match op {
        Op::Set { offset, .. } | Op::Free { offset } => *offset,
    };
    let Some(peer) = up.peers.get(d.first + offset) else {
        return;
    };
    let slot = peer.slot();
    let Some(mut m) = locked.members().get(slot).copied() else {
        return;
    };
    let header = locked.header();
    let start_up = !up.check.as_ref().is_some_and(|c| c.params.default_down);
    match op {
        Op::Free { .. } => {
            m.free();
            let s = &mut locked.slots()[slot];
            s.key = 0;
            s.health = PeerHealth::new(false);
            s.manual_until_ms = 0;
        }
        Op::Set {
            addr, value, new, ..
        } => {
            let v = parse_value(value);
            if let Some(e) = v.error.filter(|&e| *new || m.error() != Some(e)) {
                hc_log!(
                    NGX_LOG_WARN,
                    "etcd key \"upstreams/{}/{addr}\": {e}, the peer is used with the defaults",
                    LogEscaped(&up.name)
                );
            }
            let s = &mut locked.slots()[slot];
            if *new {
                m.assign(upstream_key(&up.name), addr);
                s.key = member_key(&up.name, addr);
                s.health = PeerHealth::new(start_up);
                s.sched = Schedule::restart(now);
                // New in service: slow start ramps from now.
                s.manual_until_ms = in_service_mark(now);
                if let Some(t) = header.traffic(slot) {
                    t.restore(&Traffic::default());
                }
                if let Some(p) = header.passive(slot) {
                    p.copy_from(&Default::default());
                }
            }
            // `"status": "down"` is the member's own manual down, apart from the control
            // API's (a full read of control keys does not end it); back up, it ramps.
            if !*new && m.down && !v.down && !s.manual_down() {
                s.manual_until_ms = in_service_mark(now);
            }
            m.set_value(&v);
        }
    }
    locked.members()[slot] = m;
    locked.record(Change::Slot(slot));
}
