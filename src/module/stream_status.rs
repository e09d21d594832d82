//! The stream module's state, for the status and control locations: its zone found by name
//! among the cycle's shared memory zones (no link-time tie between the two modules; the layout
//! is the core's `stream_zone`), read and written under the zone's own lock.

use ngx::ffi::{ngx_cycle, ngx_slab_pool_t};
use upstream_healthcheck_glue::shm::{find_zone as find_zone_named, ShmLock};

use crate::control::ttl_left;
use crate::policy::PeerFacts;
use crate::render::{PeerSnapshot, UpstreamSnapshot};
use crate::stream_zone::{StreamZone, ZONE_NAME};

/// The stream module's zone in the running cycle, when it runs and checks something.
pub fn find_zone() -> Option<&'static StreamZone> {
    // SAFETY: ngx_cycle is the running cycle.
    let z = unsafe { find_zone_named(ngx_cycle, ZONE_NAME, None, core::ptr::null()) }?;
    let pool = z.shm.addr as *const ngx_slab_pool_t;
    // SAFETY: the zone is mapped for the cycle; its slab pool's data is its header once its
    // init ran (checked for the layout's magic and version).
    unsafe {
        pool.as_ref()
            .and_then(|p| StreamZone::checked(p.data as *const StreamZone))
    }
}

/// Takes the stream zone's lock (its slab pool's mutex, as the stream module does).
pub fn lock(zone: &StreamZone) -> ShmLock {
    // SAFETY: shpool is the zone's slab pool, mapped for the life of the cycle.
    unsafe { ShmLock::lock(zone.shpool as *mut ngx_slab_pool_t) }
}

/// The names of the stream upstreams, in configuration order (in the zone: they live as long
/// as the cycle).
pub fn names(zone: &'static StreamZone) -> Vec<&'static str> {
    let _locked = lock(zone);
    // SAFETY: the lock is held; the records are read only here.
    let ups = unsafe { zone.upstreams_locked() };
    ups.iter().map(|u| zone.name(u.name)).collect()
}

/// Writes the state of stream upstream `ui` into `out`, reusing its buffers. nginx's own
/// counters of stream peers (connections, weights now) live in the stream module's memory and
/// show as 0.
pub fn fill(zone: &StreamZone, ui: usize, now: u64, out: &mut UpstreamSnapshot) {
    let (record, slots) = {
        let _locked = lock(zone);
        // SAFETY: the lock is held for both reads.
        let (ups, all) = unsafe { (zone.upstreams_locked(), zone.slots_locked()) };
        let Some(record) = ups.get(ui).copied() else {
            return;
        };
        let first = record.first_slot as usize;
        let end = (first + record.npeers as usize).min(all.len());
        (record, all[first.min(end)..end].to_vec())
    };
    let facts = PeerFacts {
        checked: record.checked(),
        excluded: record.excluded(),
        ..PeerFacts::default()
    };
    let checked = facts.verdict_applies();
    out.name.clear();
    out.name.push_str(zone.name(record.name));
    out.stream = true;
    out.checked = checked;
    out.probe_durations = checked.then_some(record.probe_durations);
    out.local_errors = checked.then_some(record.local_errors);
    out.tls = false;
    out.matched = true;
    out.passive = false;
    out.panic = None;
    out.primary.clear();
    out.backup.clear();
    let peers = zone.peers();
    for (i, s) in slots.iter().enumerate() {
        let Some(p) = peers.get(record.first_slot as usize + i) else {
            break;
        };
        let manual_down = s.manual_down();
        let list = if p.backup != 0 {
            &mut out.backup
        } else {
            &mut out.primary
        };
        list.push(PeerSnapshot {
            id: list.len(),
            name: zone.name(p.name).to_owned(),
            config_down: p.config_down != 0,
            down: PeerFacts {
                config_down: p.config_down != 0,
                manual_down,
                healthy: s.health.is_up(),
                ..facts
            }
            .down_for_balancer(),
            weight: p.weight,
            max_fails: p.max_fails,
            fail_timeout: p.fail_timeout,
            health: checked.then_some(s.health),
            manual_down,
            manual_down_ttl: (manual_down && s.manual_until_ms != u64::MAX)
                .then(|| ttl_left(s.manual_until_ms, now)),
            ..PeerSnapshot::default()
        });
    }
}
