//! Applying the shared state to nginx's own stream round-robin peers, so the native balancers
//! skip dead ones: the changes recorded in the journal, before each balancer pick and on each
//! tick.

use core::ptr;

use ngx::ffi::{
    ngx_int_t, ngx_rwlock_rlock, ngx_rwlock_unlock, ngx_rwlock_wlock, ngx_stream_session_t,
    ngx_stream_upstream_rr_peer_t, ngx_stream_upstream_rr_peers_t, ngx_stream_upstream_srv_conf_t,
    ngx_uint_t, NGX_ERROR,
};
use upstream_healthcheck_core::escape::LogEscaped;
use upstream_healthcheck_core::journal::{self, Change, Pending};
use upstream_healthcheck_core::policy::PeerFacts;

use crate::conf::{srv_conf, MainConf};
use crate::worker::{with_worker, Worker};
use crate::zone;
use upstream_healthcheck_glue::hc_log;

/// The live nginx peer behind one slot.
pub struct Target {
    pub upstream: usize,
    pub checked: bool,
    pub config_down: bool,
    /// The round-robin peer (this worker's copy, or the one in the upstream's zone); null
    /// when it could not be matched.
    pub rr: *mut ngx_stream_upstream_rr_peer_t,
    /// Its list; for an upstream with `zone`, the flag is flipped under the list's rwlock.
    pub list: *mut ngx_stream_upstream_rr_peers_t,
}

/// The live peers of an upstream as (list, peer) pairs, primary then backup. The lists of an
/// upstream with `zone` are walked under their read lock.
///
/// # Safety
/// `primary` must be null or round-robin peers valid for the cycle.
pub unsafe fn live_peers(
    primary: *mut ngx_stream_upstream_rr_peers_t,
) -> Vec<(
    *mut ngx_stream_upstream_rr_peers_t,
    *mut ngx_stream_upstream_rr_peer_t,
)> {
    let mut out = Vec::new();
    // SAFETY: per the contract, the lists and their peers are valid and linked by `next`;
    // zone lists are shared between workers and read under their rwlock.
    unsafe {
        let backup = primary.as_ref().map_or(ptr::null_mut(), |p| p.next);
        for list in [primary, backup] {
            let Some(l) = list.as_mut() else { continue };
            let shared = !l.shpool.is_null();
            if shared {
                ngx_rwlock_rlock(&mut l.rwlock);
            }
            let mut p = l.peer;
            while let Some(peer) = p.as_ref() {
                out.push((list, p));
                p = peer.next;
            }
            if shared {
                ngx_rwlock_unlock(&mut l.rwlock);
            }
        }
    }
    out
}

/// Maps every slot to the live peer it stands for, matched by position and checked by name;
/// for an upstream with `zone` the live peers are the zone's copy.
pub fn targets(main: &MainConf) -> Vec<Target> {
    let mut out = Vec::with_capacity(main.slots());
    for (ui, up) in main.upstreams.iter().enumerate() {
        // SAFETY: uscf is valid for the cycle; after the zone init, peer.data points at the
        // zone copy for upstreams with `zone`, or the cycle's own peers.
        let live =
            unsafe { live_peers((*up.uscf).peer.data as *mut ngx_stream_upstream_rr_peers_t) };
        let mut unmatched = 0;
        for (pi, peer) in up.peers.iter().enumerate() {
            let (list, rr) = live
                .get(pi)
                .copied()
                // SAFETY: rr comes from the live list above.
                .filter(|&(_, rr)| {
                    String::from_utf8_lossy(unsafe { (*rr).name.as_bytes() }) == peer.name
                })
                .unwrap_or((ptr::null_mut(), ptr::null_mut()));
            if rr.is_null() {
                unmatched += 1;
            }
            out.push(Target {
                upstream: ui,
                checked: up.check.is_some(),
                config_down: peer.config_down,
                rr,
                list,
            });
        }
        if unmatched > 0 && up.check.is_some() {
            hc_log!(
                NGX_LOG_ERR,
                "{unmatched} peer(s) of stream upstream \"{}\" were not found among nginx's peers and are not checked",
                LogEscaped(&up.name)
            );
        }
    }
    out
}

/// Sets nginx's `down` flag of one peer. A peer marked `down` in nginx.conf is never touched.
///
/// # Safety
/// The target's peers must be live peers of the running cycle.
unsafe fn set_down(t: &Target, down: bool) {
    if t.rr.is_null() || t.config_down {
        return;
    }
    let down = down as ngx_uint_t;
    // SAFETY: rr and list are live peers of this cycle; zone peers are shared between
    // workers and changed only under the list's write lock.
    unsafe {
        if (*t.rr).down == down {
            return;
        }
        let shared = !(*t.list).shpool.is_null();
        if shared {
            ngx_rwlock_wlock(&mut (*t.list).rwlock);
        }
        (*t.rr).down = down;
        if shared {
            ngx_rwlock_unlock(&mut (*t.list).rwlock);
        }
    }
}

/// One slot's state as read under the zone lock.
#[derive(Clone, Copy)]
pub struct View {
    pub slot: usize,
    pub healthy: bool,
    pub manual_down: bool,
    /// When this worker should next look at the slot (None while its probe is in flight here).
    pub look_at: Option<u64>,
}

/// Slots read under one hold of the zone lock when everything is re-read.
const SWEEP_CHUNK: usize = 1024;

/// Applies what changed in the shared state since this worker last looked: one atomic load
/// when nothing did; otherwise the changed slots are read under the zone lock (O(changes)) and
/// nginx's flags set after it is released. Whole upstreams and everything are re-read a chunk
/// of slots per hold of the lock.
pub fn apply_changes(w: &mut Worker) {
    let head = w.zone.journal_head();
    if head == w.applied {
        return;
    }
    let now = crate::worker::now_msec();
    let mut views = Vec::new();
    let mut sweep: Vec<usize> = Vec::new();
    let mut everything = false;
    {
        let mut locked = zone::lock(w.zone);
        let head = w.zone.journal_head();
        match journal::pending(head, w.applied, w.zone.journal_len) {
            Pending::UpToDate => {}
            Pending::Resync => everything = true,
            Pending::Changes(seqs) => {
                for seq in seqs {
                    match locked.change_at(seq) {
                        Change::Slot(slot) => views.extend(view(w, &mut locked, slot, now)),
                        Change::Upstream(ui) if ui < w.excluded.len() => {
                            w.excluded[ui] = locked.upstreams()[ui].excluded();
                            sweep.push(ui);
                        }
                        Change::Upstream(_) => {}
                        Change::All => {
                            everything = true;
                            break;
                        }
                    }
                }
            }
        }
        if everything {
            for ui in 0..w.excluded.len() {
                w.excluded[ui] = locked.upstreams()[ui].excluded();
            }
        }
        w.applied = head;
    }
    let main = w.main;
    let slots: Vec<usize> = if everything {
        views.clear();
        (0..w.targets.len()).collect()
    } else {
        sweep
            .iter()
            .flat_map(|&ui| main.upstreams[ui].peers.iter().map(|p| p.slot))
            .collect()
    };
    for v in &views {
        apply_view(w, v);
    }
    for chunk in slots.chunks(SWEEP_CHUNK) {
        let views: Vec<View> = {
            let mut locked = zone::lock(w.zone);
            chunk
                .iter()
                .filter_map(|&s| view(w, &mut locked, s, now))
                .collect()
        };
        for v in &views {
            apply_view(w, v);
        }
    }
}

/// Reads one slot (the zone lock is held).
fn view(w: &Worker, locked: &mut zone::Locked<'_>, slot: usize, now: u64) -> Option<View> {
    let s = locked.slots().get(slot)?;
    let mine = s.sched.owner_pid == w.pid && !s.sched.is_idle(now);
    Some(View {
        slot,
        healthy: s.health.is_up(),
        manual_down: s.manual_down(),
        look_at: (!mine).then(|| now + s.sched.wake_in(now, w.pid)),
    })
}

/// Sets nginx's flag of one peer and its place in this worker's queue.
fn apply_view(w: &mut Worker, v: &View) {
    let Some(t) = w.targets.get(v.slot) else {
        return;
    };
    let facts = PeerFacts {
        config_down: t.config_down,
        manual_down: v.manual_down,
        checked: t.checked,
        excluded: w.excluded[t.upstream],
        standby: false,
        healthy: v.healthy,
        passive_down: false,
        panic: false,
    };
    // SAFETY: the targets are live peers of this worker's cycle.
    unsafe { set_down(t, facts.down_for_balancer()) };
    if let Some(at) = v.look_at {
        let probed = facts.probed() && !t.rr.is_null();
        w.queue.set(v.slot, probed.then_some(at));
    }
}

/// Applies everything, as a worker starts.
pub fn resync(w: &mut Worker) {
    w.applied = w
        .zone
        .journal_head()
        .wrapping_sub(w.zone.journal_len as u64 + 1);
    apply_changes(w);
}

/// The wrapped `peer.init` of every stream upstream: catch up with the shared state (one
/// atomic load when nothing changed), then let the balancer pick a peer.
pub unsafe extern "C" fn init_peer(
    s: *mut ngx_stream_session_t,
    us: *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t {
    with_worker(apply_changes);
    // SAFETY: nginx passes the upstream the session uses; our srv conf exists for every
    // upstream block and holds the balancer's own init, set in postconfiguration.
    let Some(init) = unsafe { us.as_ref() }
        .and_then(srv_conf)
        .and_then(|sc| sc.original_init_peer)
    else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: calling the balancer's init with the arguments nginx gave us.
    unsafe { init(s, us) }
}
