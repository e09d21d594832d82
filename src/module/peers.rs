//! Applying the shared state to nginx's own round-robin peers, so the native balancers skip
//! dead ones: the changes recorded in the journal, before each balancer pick and on each tick.

use core::ptr;

use ngx::ffi::{
    ngx_http_request_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_rwlock_rlock, ngx_rwlock_unlock, ngx_rwlock_wlock,
    ngx_uint_t, NGX_ERROR, NGX_OK,
};
use ngx::http::HttpModuleServerConf;

use crate::config::default_request;
use crate::escape::LogEscaped;
use crate::journal::{self, Change, Pending};
use crate::module::attempts;
use crate::module::clock::{now_msec, unix_msec};
use crate::module::dynamic;
use crate::module::keepalive;
use crate::module::log::hc_log;
use crate::module::module_conf::Check;
use crate::module::module_conf::MainConf;
use crate::module::process::{with_worker, MemberView, SlotView, Worker};
use crate::module::ramp;
use crate::module::Module;
use crate::policy::PeerFacts;
use std::rc::Rc;

/// The live nginx peer behind one slot.
pub struct Target {
    /// Index of the upstream in `MainConf::upstreams` (u32 keeps a target at 32 bytes).
    upstream: u32,
    /// Index of the peer in that upstream's `peers`.
    peer: u32,
    /// The upstream has checks.
    pub checked: bool,
    pub config_down: bool,
    /// The round-robin peer (this worker's copy, or the one in the upstream's zone); null
    /// when it could not be matched.
    pub rr: *mut ngx_http_upstream_rr_peer_t,
    /// Its list; for an upstream with `zone`, the flag is flipped under the list's rwlock.
    pub list: *mut ngx_http_upstream_rr_peers_t,
}

impl Target {
    /// Index of the upstream in `MainConf::upstreams`.
    pub fn upstream(&self) -> usize {
        self.upstream as usize
    }

    /// Index of the peer in its upstream's `peers`.
    pub fn peer(&self) -> usize {
        self.peer as usize
    }
}

/// The live peers of an upstream as (list, peer) pairs, primary then backup. The lists of an
/// upstream with `zone` are walked under their read lock.
///
/// # Safety
/// `primary` must be null or round-robin peers valid for the cycle.
pub unsafe fn live_peers(
    primary: *mut ngx_http_upstream_rr_peers_t,
) -> Vec<(
    *mut ngx_http_upstream_rr_peers_t,
    *mut ngx_http_upstream_rr_peer_t,
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

/// Maps every slot to the live peer it stands for. Peers are matched by position and checked
/// by name; for an upstream with `zone` the live peers are the zone's copy.
pub fn targets(main: &MainConf) -> Vec<Target> {
    let mut out = Vec::with_capacity(main.slots());
    for (ui, up) in main.upstreams.iter().enumerate() {
        // SAFETY: uscf is valid for the cycle; after the zone init, peer.data points at the
        // zone copy for upstreams with `zone`, or the cycle's own peers.
        let live = unsafe { live_peers((*up.uscf).peer.data as *mut ngx_http_upstream_rr_peers_t) };
        let mut unmatched = 0;
        for (pi, peer) in up.peers.iter().enumerate() {
            let (list, rr) = live
                .get(pi)
                .copied()
                // SAFETY: rr comes from the live list above. Names that are not UTF-8 were
                // kept with replacement characters, and are compared so.
                .filter(|&(_, rr)| {
                    peer.reserved
                        || String::from_utf8_lossy(unsafe { (*rr).name.as_bytes() }) == peer.name
                })
                .unwrap_or((ptr::null_mut(), ptr::null_mut()));
            if rr.is_null() {
                unmatched += 1;
            }
            out.push(Target {
                upstream: ui as u32,
                peer: pi as u32,
                checked: up.check.is_some(),
                config_down: peer.config_down,
                rr,
                list,
            });
        }
        if unmatched > 0 && up.check.is_some() {
            hc_log!(
                NGX_LOG_ERR,
                "{unmatched} peer(s) of upstream \"{}\" were not found among nginx's peers and are not checked",
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

/// Slots read under one hold of the zone lock when a whole upstream or everything is re-read:
/// the lock is never held for O(all peers), and a worker keeps views for this many slots.
const SWEEP_CHUNK: usize = 1024;

/// A run of slots to re-read in chunks after the journal was read.
#[derive(Clone, Copy)]
pub enum Sweep {
    /// Every peer of one upstream (an exclusion began or ended, its checks restarted).
    Upstream(usize),
    /// Every peer (the HA mode changed, or this worker fell behind the journal).
    All,
}

/// Applies what changed in the shared state since this worker last looked: one atomic load
/// when nothing did; otherwise the changed slots are read under the zone lock (O(changes),
/// no allocation) and nginx's flags and this worker's queue are set after it is released.
/// Whole upstreams and everything are re-read a chunk of slots per hold of the lock.
pub fn apply_changes(w: &mut Worker) {
    if w.header.journal_head() == w.applied {
        return;
    }
    let now = now_msec();
    w.views.clear();
    w.sweeps.clear();
    {
        let mut locked = w.header.lock();
        let head = w.header.journal_head();
        let mut everything = false;
        match journal::pending(head, w.applied, w.header.journal_len) {
            Pending::UpToDate => {}
            Pending::Resync => everything = true,
            Pending::Changes(seqs) => {
                for seq in seqs {
                    match locked.change_at(seq) {
                        Change::Slot(slot) => push_view(w, &mut locked, slot, now),
                        Change::Upstream(ui) if ui < w.excluded.len() => {
                            let record = &locked.upstreams()[ui];
                            w.excluded[ui] = record.excluded();
                            w.panic[ui] = record.panic.is_active();
                            w.replaced[ui] = record.replaced;
                            w.sweeps.push(Sweep::Upstream(ui));
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
            w.views.clear();
            w.sweeps.clear();
            w.sweeps.push(Sweep::All);
            w.standby = !w.header.probing_allowed();
            for ui in 0..w.excluded.len() {
                let record = &locked.upstreams()[ui];
                w.excluded[ui] = record.excluded();
                w.panic[ui] = record.panic.is_active();
                w.replaced[ui] = record.replaced;
            }
        }
        w.applied = head;
    }
    apply_views(w);
    let sweeps = core::mem::take(&mut w.sweeps);
    let main = w.main;
    for sweep in &sweeps {
        match *sweep {
            Sweep::Upstream(ui) => {
                for chunk in main.upstreams[ui].peers.chunks(SWEEP_CHUNK) {
                    sweep_chunk(w, chunk.iter().map(|p| p.slot()), now);
                }
            }
            Sweep::All => {
                for start in (0..w.targets.len()).step_by(SWEEP_CHUNK) {
                    let end = (start + SWEEP_CHUNK).min(w.targets.len());
                    sweep_chunk(w, start..end, now);
                }
            }
        }
    }
    w.sweeps = sweeps;
}

/// Reads at most `SWEEP_CHUNK` slots under one hold of the zone lock, then applies them.
fn sweep_chunk(w: &mut Worker, slots: impl Iterator<Item = usize>, now: u64) {
    w.views.clear();
    {
        let mut locked = w.header.lock();
        for slot in slots {
            push_view(w, &mut locked, slot, now);
        }
    }
    apply_views(w);
}

/// Applies the views read under the lock, after it was released.
fn apply_views(w: &mut Worker) {
    let views = core::mem::take(&mut w.views);
    for v in &views {
        apply_view(w, v);
    }
    w.views = views;
}

/// Applies everything, as a worker starts.
pub fn resync(w: &mut Worker) {
    w.applied = w
        .header
        .journal_head()
        .wrapping_sub(w.header.journal_len as u64 + 1);
    apply_changes(w);
}

/// Reads one slot's state (the zone lock is held).
fn push_view(w: &mut Worker, locked: &mut crate::module::zone::Locked<'_>, slot: usize, now: u64) {
    let Some(s) = locked.slots().get(slot) else {
        return;
    };
    let mine = s.sched.owner_pid == w.pid && !s.sched.is_idle(now);
    let s = *s;
    let (hidden, member) = membership_of(w, locked, slot);
    w.views.push(SlotView {
        hidden,
        member,
        slot: slot as u32,
        healthy: s.health.is_up(),
        manual_down: s.manual_down() || member.is_some_and(|m| m.down),
        passive_down: w.header.passive(slot).is_some_and(|p| p.is_down()),
        look_at: (!mine).then(|| now + s.sched.wake_in(now, w.pid)),
        back_ms_ago: s.back_ms_ago(now, unix_msec()),
    });
}

/// Whether a slot of an upstream with `upstream_healthcheck_dynamic` is hidden (a free
/// reserved peer, or a static one once etcd was read), and the member of a reserved one; its
/// nginx peer is made to match the member here, under the zone lock.
fn membership_of(
    w: &mut Worker,
    locked: &mut crate::module::zone::Locked<'_>,
    slot: usize,
) -> (bool, Option<MemberView>) {
    let Some(t) = w.targets.get(slot) else {
        return (false, None);
    };
    let up = &w.main.upstreams[t.upstream()];
    if up.dynamic.is_none() {
        return (false, None);
    }
    let reserved = up.peers.get(t.peer()).is_some_and(|p| p.reserved);
    if !reserved {
        return (w.replaced[t.upstream()], None);
    }
    let Some(m) = locked.members().get(slot).copied() else {
        return (true, None);
    };
    // SAFETY: the targets are live peers of this worker's cycle.
    unsafe { dynamic::sync_peer(t, &m) };
    if let Some(meta) = w.member_meta.get_mut(slot) {
        let url = m.check_url().unwrap_or("");
        if meta.generation != m.generation || meta.url != url || meta.name.is_empty() {
            meta.generation = m.generation;
            meta.name.clear();
            meta.name.push_str(m.addr());
            meta.url.clear();
            meta.url.push_str(url);
            meta.request = up
                .check
                .as_ref()
                .and_then(|c| check_url_request(c, &up.name, url));
        }
    }
    let view = MemberView {
        generation: m.generation,
        weight: m.weight,
        down: m.down,
        slow_start_ms: m.slow_start_ms,
    };
    (!m.used, Some(view))
}

/// The probe request of a peer whose value has `check_url`: the upstream's check with that
/// URI. `None` without one, or when the upstream sends its own `upstream_healthcheck_request`.
fn check_url_request(check: &Check, upstream: &str, url: &str) -> Option<Rc<[u8]>> {
    let p = &check.params;
    if url.is_empty() || p.check_type == crate::config::CheckType::Tcp {
        return None;
    }
    let default = default_request(
        p.uri.as_deref().unwrap_or("/"),
        p.host.as_deref().unwrap_or(upstream),
        p.keepalive > 0,
    );
    if check.request != default {
        return None; // upstream_healthcheck_request: the operator's bytes are sent as written
    }
    Some(default_request(url, p.host.as_deref().unwrap_or(upstream), p.keepalive > 0).into())
}

/// Sets nginx's flag of one peer and its place in this worker's queue.
fn apply_view(w: &mut Worker, v: &SlotView) {
    let slot = v.slot as usize;
    if slot >= w.targets.len() {
        return;
    }
    if let Some(m) = v.member {
        let local = &mut w.members[slot];
        if local.generation != m.generation {
            // Another peer in this slot: nothing of the previous one is kept.
            keepalive::close_slot(slot);
            ramp::forget(w, slot);
        }
        w.members[slot] = m;
    }
    if let Some(h) = w.hidden.get_mut(slot) {
        *h = v.hidden;
    }
    let t = &w.targets[slot];
    if v.hidden {
        // SAFETY: the targets are live peers of this worker's cycle.
        unsafe { set_down(t, true) };
        keepalive::close_slot(slot);
        ramp::forget(w, slot);
        w.queue.set(slot, None);
        return;
    }
    let facts = PeerFacts {
        config_down: t.config_down,
        manual_down: v.manual_down,
        checked: t.checked,
        excluded: w.excluded[t.upstream()],
        standby: w.standby,
        healthy: v.healthy,
        passive_down: v.passive_down,
        panic: w.panic[t.upstream()],
    };
    // A peer back in service gets its slow-start weight before the balancer may pick it.
    ramp::on_view(w, slot, &facts, v.back_ms_ago, now_msec());
    if v.member.is_some() {
        ramp::settle(w, slot);
    }
    let t = &w.targets[slot];
    // SAFETY: the targets are live peers of this worker's cycle.
    unsafe { set_down(t, facts.down_for_balancer()) };
    if !facts.keeps_probe_connection() && !keepalive::is_empty() {
        keepalive::close_slot(slot);
    }
    if let Some(at) = v.look_at {
        let probed = facts.probed() && !t.rr.is_null();
        w.queue.set(slot, probed.then_some(at));
    }
}

/// The wrapped `peer.init` of every upstream: catch up with the shared state (one atomic load
/// when nothing changed), then let the balancer pick a peer.
pub extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    with_worker(apply_changes);
    // SAFETY: nginx passes the upstream the request uses; our srv conf exists for every
    // upstream block and holds the balancer's own init, set in postconfiguration.
    let Some(sc) = unsafe { us.as_ref() }.and_then(Module::server_conf) else {
        return NGX_ERROR as ngx_int_t;
    };
    let Some(init) = sc.original_init_peer else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: calling the balancer's init with the arguments nginx gave us.
    let rc = unsafe { init(r, us) };
    if rc == NGX_OK as ngx_int_t && sc.watches_attempts {
        // SAFETY: the balancer's init of this upstream has just succeeded for r.
        unsafe { attempts::wrap_free(r, sc) };
    }
    rc
}

/// Applies changes in this worker now (after a control request); other workers follow within
/// one tick or before their next balancer pick.
pub fn apply_now() {
    with_worker(apply_changes);
}
