//! Slow start in nginx's peers: the scaled weights of upstreams with `slow_start`, and this
//! worker's ramping peers, whose weights every tick moves towards their full ones.
//!
//! Round robin and `least_conn` pick by `weight`, `effective_weight` and `current_weight`. An
//! upstream with slow start has every weight multiplied by its scale (`SlowStart::scale`) when
//! a worker starts, so that a peer of weight 1 can get a tenth of its share; a ramping peer's
//! weight is set to its factor of that full weight. Weights are set, never multiplied, so that
//! the peers of an upstream with `zone`, which every worker shares, end up the same whichever
//! worker writes them (under the list's write lock).

use ngx::ffi::{ngx_int_t, ngx_rwlock_unlock, ngx_rwlock_wlock, ngx_uint_t};
use rustc_hash::FxHashMap;

use crate::module::module_conf::MainConf;
use crate::module::peers::Target;
use crate::module::process::{MemberView, Worker};
use crate::policy::PeerFacts;
use crate::slow_start::{effective_after, factor_permille, ramp_elapsed, ramp_weight};

/// The peers that ramp in this worker: slot → monotonic time its ramp started. Each tick costs
/// one entry per ramping peer, nothing for the others.
#[derive(Default)]
pub struct Ramps {
    started: FxHashMap<u32, u64>,
}

/// The full weight inside nginx of the peer behind `slot` and its ramp duration; `None` when
/// the upstream has no slow start. A peer from etcd has the weight and the `slow_start` of its
/// value (the upstream's when the value has none).
fn full_weight(
    main: &MainConf,
    targets: &[Target],
    members: &[MemberView],
    slot: usize,
) -> Option<(i64, u64)> {
    let t = targets.get(slot)?;
    let up = main.upstreams.get(t.upstream())?;
    let ss = up.slow_start.as_ref()?;
    if up.peers.get(t.peer())?.reserved {
        let m = members.get(slot)?;
        let duration = if m.slow_start_ms > 0 {
            m.slow_start_ms
        } else {
            ss.duration_ms
        };
        return Some((i64::from(m.weight.max(1)) * ss.scale, duration));
    }
    Some((ss.weights.get(t.peer())? * ss.scale, ss.duration_ms))
}

/// Forgets the ramp of a slot whose peer left (another takes its place, or none).
pub fn forget(w: &mut Worker, slot: usize) {
    w.ramps.started.remove(&(slot as u32));
}

/// Sets a peer from etcd to its full weight unless it ramps (its value's weight may change).
pub fn settle(w: &mut Worker, slot: usize) {
    if w.ramps.started.contains_key(&(slot as u32)) {
        return;
    }
    if let (Some((full, _)), Some(t)) = (
        full_weight(w.main, &w.targets, &w.members, slot),
        w.targets.get(slot),
    ) {
        // SAFETY: the targets are live peers of this worker's cycle.
        unsafe { set_weight(t, full) };
    }
}

/// Sets the weight nginx's balancer uses for one peer, keeping the dent a recent failure made
/// in its `effective_weight` and the list's `total_weight` in step.
///
/// # Safety
/// The target's peers must be live peers of the running cycle.
unsafe fn set_weight(t: &Target, weight: i64) {
    if t.rr.is_null() {
        return;
    }
    // SAFETY: rr and list are live peers of this cycle; zone peers are shared between workers
    // and changed only under the list's write lock (the unlocked read only skips a no-op, as
    // `set_down` does).
    unsafe {
        if (*t.rr).weight as i64 == weight {
            return;
        }
        let list = &mut *t.list;
        let shared = !list.shpool.is_null();
        if shared {
            ngx_rwlock_wlock(&mut list.rwlock);
        }
        let rr = &mut *t.rr;
        let old = rr.weight as i64;
        rr.effective_weight = effective_after(rr.effective_weight as i64, old, weight) as ngx_int_t;
        rr.weight = weight as ngx_int_t;
        list.total_weight = (list.total_weight as i64 + weight - old).max(0) as ngx_uint_t;
        if shared {
            ngx_rwlock_unlock(&mut list.rwlock);
        }
    }
}

/// Scales the weights of the upstreams with slow start as a worker starts, before its first
/// application of the verdicts (which starts the ramps in force).
pub fn init(w: &mut Worker) {
    let main = w.main;
    for up in main.upstreams.iter() {
        let Some(ss) = &up.slow_start else { continue };
        for (peer, weight) in up.peers.iter().zip(&ss.weights) {
            if let Some(t) = w.targets.get(peer.slot()) {
                // SAFETY: the targets are live peers of this worker's cycle.
                unsafe { set_weight(t, weight * ss.scale) };
            }
        }
    }
}

/// Starts, restarts or ends the ramp of one peer whose state was just read (before its `down`
/// flag is set, so that a peer coming back is light before the balancer may pick it).
/// `back_ms_ago`: how long ago it came back into service (`Slot::back_ms_ago`).
pub fn on_view(w: &mut Worker, slot: usize, facts: &PeerFacts, back_ms_ago: Option<u64>, now: u64) {
    let Some((full, duration)) = full_weight(w.main, &w.targets, &w.members, slot) else {
        return;
    };
    let t = &w.targets[slot];
    match ramp_elapsed(facts, back_ms_ago, duration) {
        Some(elapsed) => {
            w.ramps
                .started
                .insert(slot as u32, now.saturating_sub(elapsed));
            let weight = ramp_weight(full, factor_permille(elapsed, duration));
            // SAFETY: the targets are live peers of this worker's cycle.
            unsafe { set_weight(t, weight) };
        }
        None => {
            if w.ramps.started.remove(&(slot as u32)).is_some() {
                // SAFETY: the targets are live peers of this worker's cycle.
                unsafe { set_weight(t, full) };
            }
        }
    }
}

/// Moves every ramping peer's weight to where its ramp is at `now` (monotonic); a ramp that is
/// over leaves the peer at its full weight and the list.
pub fn step(w: &mut Worker, now: u64) {
    if w.ramps.started.is_empty() {
        return;
    }
    let (main, targets, members) = (w.main, &w.targets, &w.members);
    w.ramps.started.retain(|&slot, &mut start| {
        let slot = slot as usize;
        let Some((full, duration)) = full_weight(main, targets, members, slot) else {
            return false;
        };
        let permille = factor_permille(now.saturating_sub(start), duration);
        // SAFETY: the targets are live peers of this worker's cycle.
        unsafe { set_weight(&targets[slot], ramp_weight(full, permille)) };
        permille < 1000
    });
    if w.ramps.started.is_empty() {
        w.ramps.started.shrink_to(16);
    }
}
