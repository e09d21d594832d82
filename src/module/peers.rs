//! Applying verdicts to nginx's own round-robin peers, so the native balancers skip dead ones.

use core::ptr;

use ngx::ffi::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_rwlock_unlock, ngx_rwlock_wlock,
    ngx_uint_t,
};

use crate::module::conf::MainConf;

/// The live nginx peer behind one slot.
pub struct Target {
    /// Index of the upstream in `MainConf::upstreams`.
    pub upstream: usize,
    /// Index of the peer in that upstream's `peers`.
    pub peer: usize,
    /// The upstream has checks.
    pub checked: bool,
    pub config_down: bool,
    /// The round-robin peer (this worker's copy, or the one in the upstream's zone); null
    /// when it could not be matched.
    pub rr: *mut ngx_http_upstream_rr_peer_t,
    /// Its list; for an upstream with `zone`, the flag is flipped under the list's rwlock.
    pub list: *mut ngx_http_upstream_rr_peers_t,
}

/// The live peers of an upstream as (list, peer) pairs, primary then backup.
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
    // SAFETY: per the contract, the lists and their peers are valid and linked by `next`.
    unsafe {
        let backup = primary.as_ref().map_or(ptr::null_mut(), |p| p.next);
        for list in [primary, backup] {
            let Some(l) = list.as_ref() else { continue };
            let mut p = l.peer;
            while let Some(peer) = p.as_ref() {
                out.push((list, p));
                p = peer.next;
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
        for (pi, peer) in up.peers.iter().enumerate() {
            let (list, rr) = live
                .get(pi)
                .copied()
                // SAFETY: rr comes from the live list above.
                .filter(|&(_, rr)| unsafe { (*rr).name.as_bytes() } == peer.name.as_bytes())
                .unwrap_or((ptr::null_mut(), ptr::null_mut()));
            out.push(Target {
                upstream: ui,
                peer: pi,
                checked: up.check.is_some(),
                config_down: peer.config_down,
                rr,
                list,
            });
        }
    }
    out
}

/// Sets nginx's `down` flag of one peer. A peer marked `down` in nginx.conf is never touched.
///
/// # Safety
/// The target's peers must be live peers of the running cycle.
pub unsafe fn set_down(t: &Target, down: bool) {
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
