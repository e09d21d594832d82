//! The one shared memory zone: its layout, its lock, and its init, which carries the state of
//! peers that exist before and after a reload over from the previous cycle's zone.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::collections::HashMap;

use ngx::ffi::{
    ngx_current_msec, ngx_cycle, ngx_cycle_t, ngx_int_t, ngx_random, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_trylock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_pool_t,
    NGX_ERROR, NGX_OK,
};

use upstream_healthcheck_glue::shm::find_zone;

use crate::health::PeerHealth;
use crate::histogram::Histogram;
use crate::journal::{self, Change};
use crate::key::{peer_key, zone_size_for};
use crate::membership::{Member, ETCD_OCCURRENCE};
use crate::module::clock::unix_msec;
use crate::module::etcd_zone::EtcdShared;
use crate::module::ha;
use crate::module::log::hc_log;
use crate::module::module_conf::{MainConf, UpstreamConf};
use crate::module::state_store::{self, Restored};
use crate::panic::{PanicChange, PanicMessage, PanicState};
use crate::passive::PassiveState;
use crate::schedule::Schedule;
use crate::slow_start;
use crate::state_file::Now;
use crate::state_lease::WriterLease;
use crate::traffic::{Traffic, TrafficCounters};

/// The zone's name as `ngx_shared_memory_add` knows it.
pub const ZONE_NAME: &str = "upstream_healthcheck";

/// State of one peer.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Slot {
    pub key: u64,
    pub health: PeerHealth,
    pub sched: Schedule,
    /// Forced down until this monotonic time (`u64::MAX`: no expiry); 0 when not. Once a manual
    /// down ends, or when a reload adds the peer, it holds when the peer came back into service
    /// instead (for slow start; see `slow_start::in_service_mark`): read it through the methods.
    pub manual_until_ms: u64,
}

impl Slot {
    pub fn manual_down(&self) -> bool {
        slow_start::manual_down(self.manual_until_ms)
    }

    /// When a manual down with a ttl ends (monotonic ms).
    pub fn manual_expiry(&self) -> Option<u64> {
        slow_start::manual_expiry(self.manual_until_ms)
    }

    /// Ends a manual down at monotonic `now`: the peer is back in service from then on.
    pub fn end_manual_down(&mut self, now: u64) {
        if self.manual_down() {
            self.manual_until_ms = slow_start::in_service_mark(now);
        }
    }

    /// How long ago (ms) the peer came back into service, by its checks or otherwise; `None`
    /// when up since nginx started fresh (see `slow_start::back_ms_ago`).
    pub fn back_ms_ago(&self, now: u64, now_unix: u64) -> Option<u64> {
        slow_start::back_ms_ago(
            self.health.is_up(),
            self.health.last_change_ms,
            now_unix,
            slow_start::in_service_since(self.manual_until_ms),
            now,
        )
    }
}

/// State of one upstream block.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct UpstreamRecord {
    pub key: u64,
    /// Excluded from checking until this monotonic time (`u64::MAX`: no expiry); 0 when not.
    pub excluded_until_ms: u64,
    pub probe_durations: Histogram,
    /// Probes that could not run for a local reason (no free connection or descriptor, no
    /// source port): they gave no verdict.
    pub local_errors: u64,
    /// Primaries up and whether the upstream is in panic (`panic_threshold`).
    pub panic: PanicState,
    /// `upstream_healthcheck_dynamic`: etcd was read once, its peers replace the static ones.
    pub replaced: bool,
    /// `upstream_healthcheck_dynamic`: keys of etcd refused for lack of a reserved slot.
    pub refused: u32,
}

impl UpstreamRecord {
    pub fn excluded(&self) -> bool {
        self.excluded_until_ms != 0
    }
}

/// `HaMode` as stored in the zone.
pub const HA_DISABLED: u8 = 0;
pub const HA_MASTER: u8 = 1;
pub const HA_SLAVER: u8 = 2;

/// The start of the zone's data.
#[repr(C)]
pub struct ZoneHeader {
    /// Sequence number of the next entry of the change journal (see `journal`): workers
    /// compare it with their own to know whether anything changed.
    journal_head: AtomicU64,
    /// `HA_DISABLED`, `HA_MASTER` or `HA_SLAVER`.
    pub ha_state: AtomicU8,
    /// The earliest end of a manual down or exclusion with a ttl (monotonic ms), `u64::MAX`
    /// when none: workers look for expired ones only from then on.
    pub expiry_hint: AtomicU64,
    /// Set, under the lock, when a new cycle has copied this zone: a change written here
    /// afterwards would be lost, so the control API refuses changes then.
    pub superseded: AtomicBool,
    /// Who writes the state file and what it last wrote (`upstream_healthcheck_state_file`).
    pub writer: WriterLease,
    pub nslots: usize,
    slots: *mut Slot,
    pub nupstreams: usize,
    upstreams: *mut UpstreamRecord,
    /// `journal_len` entries.
    journal: *mut u32,
    pub journal_len: usize,
    /// `nslots` traffic counters, one per slot, when some upstream counts its traffic; null
    /// otherwise. Updated with atomics, without the lock.
    traffic: *mut TrafficCounters,
    /// `nslots` passive states, one per slot, when some upstream has passive checks; null
    /// otherwise. Windows are counted with atomics; ejections are written under the lock.
    passive: *mut PassiveState,
    /// `nslots` members, one per slot, when some upstream has `upstream_healthcheck_dynamic`
    /// (only its reserved slots use theirs); null otherwise. Written under the lock.
    members: *mut Member,
    shpool: *mut ngx_slab_pool_t,
    /// The watch lease and the link's state (`upstream_healthcheck_etcd`).
    pub etcd: EtcdShared,
}

/// Bytes of shared memory needed for `peers` peers in `upstreams` upstream blocks, with
/// traffic counters for every peer when `traffic`, passive state when `passive` and members
/// when `dynamic`.
pub fn required_size(
    peers: usize,
    upstreams: usize,
    traffic: bool,
    passive: bool,
    dynamic: bool,
) -> usize {
    let mut parts = vec![
        size_of::<ZoneHeader>(),
        peers.max(1) * size_of::<Slot>(),
        upstreams.max(1) * size_of::<UpstreamRecord>(),
        journal::len_for(peers) * size_of::<u32>(),
    ];
    if traffic {
        parts.push(peers.max(1) * size_of::<TrafficCounters>());
    }
    if passive {
        parts.push(peers.max(1) * size_of::<PassiveState>());
    }
    if dynamic {
        parts.push(peers.max(1) * size_of::<Member>());
    }
    zone_size_for(&parts)
}

/// The key of an etcd-learned peer's slot: its upstream and address, apart from a static
/// server of the same address.
pub fn member_key(upstream: &str, addr: &str) -> u64 {
    peer_key(upstream.as_bytes(), addr.as_bytes(), ETCD_OCCURRENCE)
}

/// The key of an upstream's record: its name.
pub fn upstream_key(name: &str) -> u64 {
    peer_key(name.as_bytes(), b"", u32::MAX)
}

/// Holds the zone lock (the slab pool's mutex, which the master force-unlocks if a worker
/// dies holding it) and gives access to the slots.
pub struct Locked<'a> {
    header: &'a ZoneHeader,
}

impl ZoneHeader {
    pub fn lock(&self) -> Locked<'_> {
        // SAFETY: shpool is the zone's slab pool, mapped for the life of the cycle.
        unsafe { ngx_shmtx_lock(&mut (*self.shpool).mutex) };
        Locked { header: self }
    }

    /// Tries the lock for up to `limit_ms`; `None` when a worker holds it longer (or died
    /// holding it).
    pub fn try_lock_for(&self, limit_ms: u64) -> Option<Locked<'_>> {
        for waited in 0..=limit_ms {
            // SAFETY: shpool is the zone's slab pool, mapped for the life of the cycle.
            if unsafe { ngx_shmtx_trylock(&mut (*self.shpool).mutex) } != 0 {
                return Some(Locked { header: self });
            }
            if waited < limit_ms {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        None
    }

    /// The sequence number of the journal's next entry: one atomic load, no lock.
    pub fn journal_head(&self) -> u64 {
        self.journal_head.load(Ordering::Acquire)
    }

    /// False while this host is the HA standby: nothing is probed then.
    pub fn probing_allowed(&self) -> bool {
        self.ha_state.load(Ordering::Acquire) != HA_SLAVER
    }

    /// A newer cycle took its state from this zone (read under the lock).
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// The traffic counters of `slot`, when the zone has them. No lock: they are atomics.
    pub fn traffic(&self, slot: usize) -> Option<&TrafficCounters> {
        if self.traffic.is_null() || slot >= self.nslots {
            return None;
        }
        // SAFETY: traffic has nslots counters, allocated in init_zone for the zone's life.
        Some(unsafe { &*self.traffic.add(slot) })
    }

    /// The passive state of `slot`, when the zone has it. No lock to read it: atomics.
    pub fn passive(&self, slot: usize) -> Option<&PassiveState> {
        if self.passive.is_null() || slot >= self.nslots {
            return None;
        }
        // SAFETY: passive has nslots states, allocated in init_zone for the zone's life.
        Some(unsafe { &*self.passive.add(slot) })
    }

    /// Notes a new ttl so that workers look for its expiry in time.
    pub fn note_expiry(&self, until_ms: u64) {
        self.expiry_hint.fetch_min(until_ms, Ordering::AcqRel);
    }
}

/// The earliest finite end of the manual downs and exclusions in the zone.
pub fn earliest_expiry(locked: &mut Locked<'_>) -> u64 {
    let finite = |until: u64| (until != 0 && until != u64::MAX).then_some(until);
    let slots = locked.slots().iter().filter_map(Slot::manual_expiry).min();
    let ups = locked
        .upstreams()
        .iter()
        .filter_map(|u| finite(u.excluded_until_ms))
        .min();
    let h = locked.header;
    let passive = (0..h.nslots)
        .filter_map(|i| finite(h.passive(i)?.down_until_ms()))
        .min();
    slots
        .into_iter()
        .chain(ups)
        .chain(passive)
        .min()
        .unwrap_or(u64::MAX)
}

/// Restarts the checks of upstream `ui` with fresh counters: its peers start per
/// `default_down`, are all probed at once (so a dead peer is found within one probe round),
/// then spread out over the interval again.
pub fn restart_checks(locked: &mut Locked<'_>, main: &MainConf, ui: usize, now: u64) {
    let up = &main.upstreams[ui];
    let Some(check) = &up.check else { return };
    for peer in &up.peers {
        let s = &mut locked.slots()[peer.slot()];
        s.health = PeerHealth::new(!check.params.default_down);
        s.sched = Schedule::restart(now);
    }
    let counted = up.count_up(locked.slots());
    let panic = &mut locked.upstreams()[ui].panic;
    if let Some(change) = panic.recount(counted, up.panic.as_ref()) {
        log_panic(up, change, panic);
    }
    locked.record(Change::Upstream(ui));
}

/// Logs that upstream `up` entered or left panic, once: by the process that changed it.
pub fn log_panic(up: &UpstreamConf, change: PanicChange, state: &PanicState) {
    hc_log!(
        NGX_LOG_WARN,
        "{}",
        PanicMessage {
            upstream: &up.name,
            change,
            up: state.up,
            rule: up.panic,
        }
    );
}

impl<'a> Locked<'a> {
    /// The zone this guard locks.
    pub fn header(&self) -> &'a ZoneHeader {
        self.header
    }

    /// `ZoneHeader::note_expiry`.
    pub fn note_expiry(&self, until_ms: u64) {
        self.header.note_expiry(until_ms);
    }

    /// Appends a change to the journal; every worker applies it within one tick, or before
    /// its next balancer pick.
    pub fn record(&mut self, change: Change) {
        let h = self.header;
        // SAFETY: the journal has journal_len entries, allocated in init_zone; the lock
        // serializes writers.
        let ring = unsafe { core::slice::from_raw_parts_mut(h.journal, h.journal_len) };
        let head = journal::append(ring, h.journal_head.load(Ordering::Relaxed), change);
        h.journal_head.store(head, Ordering::Release);
    }

    /// The change recorded at sequence `seq`.
    pub fn change_at(&mut self, seq: u64) -> Change {
        let h = self.header;
        // SAFETY: the journal is journal_len entries of this zone, mapped for the cycle, and
        // the lock held by self keeps writers out.
        let ring = unsafe { core::slice::from_raw_parts(h.journal, h.journal_len) };
        journal::at(ring, seq)
    }

    pub fn slots(&mut self) -> &mut [Slot] {
        // SAFETY: the slot array was allocated with nslots entries in init_zone, and the lock
        // serializes every access to it across processes.
        unsafe { core::slice::from_raw_parts_mut(self.header.slots, self.header.nslots) }
    }

    /// The members of the slots (empty without `upstream_healthcheck_dynamic`).
    pub fn members(&mut self) -> &mut [Member] {
        if self.header.members.is_null() {
            return &mut [];
        }
        // SAFETY: members was allocated with nslots entries in init_zone (not null, checked
        // above), and the lock serializes every access to it across processes.
        unsafe { core::slice::from_raw_parts_mut(self.header.members, self.header.nslots) }
    }

    /// One record per upstream block, in `MainConf::upstreams` order.
    pub fn upstreams(&mut self) -> &mut [UpstreamRecord] {
        // SAFETY: the upstream records were allocated with nupstreams entries in init_zone, and
        // the lock serializes every access to them across processes.
        unsafe { core::slice::from_raw_parts_mut(self.header.upstreams, self.header.nupstreams) }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the lock taken in ZoneHeader::lock.
        unsafe { ngx_shmtx_unlock(&mut (*self.header.shpool).mutex) };
    }
}

/// The zone that the cycle being initialized marked superseded, until that cycle is committed
/// (master process only).
static PENDING: AtomicPtr<ZoneHeader> = AtomicPtr::new(ptr::null_mut());

/// `ngx_module_t.init_module`: the new cycle can no longer fail, the old zone stays superseded.
pub extern "C" fn commit_supersede(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    PENDING.store(ptr::null_mut(), Ordering::Release);
    NGX_OK as ngx_int_t
}

/// A cleanup of the new cycle's pool: when that cycle failed after copying the zone (a
/// `listen` that cannot bind, say), the old cycle runs on and its zone takes changes again.
pub unsafe extern "C" fn undo_supersede(_data: *mut c_void) {
    let old = PENDING.swap(ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: PENDING is set only between the copy and the commit of a new cycle; a cycle
    // that fails in between leaves the old cycle, and its zone, running.
    if let Some(old) = unsafe { old.as_ref() } {
        let _locked = old.lock();
        old.superseded.store(false, Ordering::Release);
    }
}

/// Finds the state kept by the previous cycle: its zone is still mapped while the new
/// cycle's zones are initialized (the old cycle is `ngx_cycle` then).
///
/// # Safety
/// Must run inside a zone init callback.
unsafe fn previous_header(this: *mut ngx_shm_zone_t) -> Option<&'static ZoneHeader> {
    // SAFETY: ngx_cycle is the running (old) cycle; on first start it is the zeroed init
    // cycle whose list has no parts with elements; `this` is the zone being initialized.
    let z = unsafe { find_zone(ngx_cycle, ZONE_NAME, Some((*this).tag), this) }?;
    // SAFETY: zones with our tag carry our MainConf in data, allocated from the old cycle's
    // pool, which outlives this init.
    let main = unsafe { (z.data as *const MainConf).as_ref() }?;
    // SAFETY: the header lives in the old zone, still mapped.
    unsafe { main.header.as_ref() }
}

/// Copies the previous cycle's state. This runs in the master, with SIGCHLD blocked: if a
/// worker died holding the zone lock, nginx cannot release it until the reload ends, so the
/// lock is tried for a bounded time and the copy is made without it after that (a slot being
/// written at that moment may be copied half old, half new; the next probe corrects it).
fn copy_previous(old: &'static ZoneHeader) -> Previous {
    let copy = |locked: &mut Locked<'_>| {
        let slots = locked.slots().iter().map(|s| (s.key, *s)).collect();
        let traffic = (0..old.nslots)
            .filter_map(|i| Some((locked.slots()[i].key, old.traffic(i)?.snapshot())))
            .collect();
        let passive = (0..old.nslots)
            .filter_map(|i| Some((locked.slots()[i].key, old.passive(i)?)))
            .collect();
        let upstreams = locked.upstreams().iter().map(|u| (u.key, *u)).collect();
        let members = (0..old.nslots)
            .filter_map(|i| {
                let m = *locked.members().get(i)?;
                m.used.then(|| (m, locked.slots()[i]))
            })
            .collect();
        // Under the same lock as the copy: a change is either in the copy or refused.
        old.superseded.store(true, Ordering::Release);
        PENDING.store(
            old as *const ZoneHeader as *mut ZoneHeader,
            Ordering::Release,
        );
        Previous {
            slots,
            upstreams,
            traffic,
            passive,
            members,
        }
    };
    with_lock_or_without(old, "copying the state", copy)
}

/// Runs `f` under the zone lock, in the master (a reload, the exit), where SIGCHLD is blocked:
/// if a worker died holding the lock, nginx cannot release it meanwhile, so the lock is tried
/// for a bounded time and `f` runs without it after that, once `doing` is logged.
pub fn with_lock_or_without<R>(
    header: &ZoneHeader,
    doing: &str,
    f: impl FnOnce(&mut Locked<'_>) -> R,
) -> R {
    if let Some(mut locked) = header.try_lock_for(LOCK_WAIT_IN_MASTER_MS) {
        return f(&mut locked);
    }
    hc_log!(
        NGX_LOG_WARN,
        "the zone lock is held by a process that does not let go, {doing} without it"
    );
    // A guard that is never dropped, so the lock it does not hold is never "released".
    let mut unlocked = core::mem::ManuallyDrop::new(Locked { header });
    f(&mut unlocked)
}

/// What a reload carries over from the previous cycle's zone, by key.
#[derive(Default)]
struct Previous {
    slots: HashMap<u64, Slot>,
    upstreams: HashMap<u64, UpstreamRecord>,
    traffic: HashMap<u64, Traffic>,
    /// In the old zone, still mapped while the new one is initialized.
    passive: HashMap<u64, &'static PassiveState>,
    /// The etcd-learned peers in slot order, with their slots' state.
    members: Vec<(Member, Slot)>,
}

/// How long the master waits for the zone lock before going on without it.
const LOCK_WAIT_IN_MASTER_MS: u64 = 500;

/// The slot of a peer the previous cycle did not have: as the state file kept it when nginx
/// starts fresh with one (a verdict only for a `checked` upstream), else new per `default_down`
/// (`up_at_start`). A peer that a reload adds (`added_at`) is new in service (slow start); one
/// that is there when nginx starts fresh had no outage.
fn fresh_slot(
    key: u64,
    checked: bool,
    up_at_start: bool,
    sched: Schedule,
    added_at: Option<u64>,
    restored: Option<&Restored>,
) -> Slot {
    let kept = restored.and_then(|r| r.peer(key));
    Slot {
        key,
        health: kept
            .and_then(|k| k.health)
            .filter(|_| checked)
            .unwrap_or_else(|| PeerHealth::new(up_at_start)),
        sched,
        manual_until_ms: match added_at {
            Some(now) => slow_start::in_service_mark(now),
            None => kept.map_or(0, |k| k.manual_until_ms),
        },
    }
}

/// `ngx_shm_zone_t.init`: lays out the slots for this cycle's checked peers, keeping the state
/// of peers the previous cycle had (same upstream and address); at a fresh start, peers and
/// exclusions the state file kept start as it says; others start per `default_down`. Every
/// new slot gets its first probe at a random point of the first interval.
pub unsafe extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, _data: *mut c_void) -> ngx_int_t {
    // SAFETY: postconfiguration stored this cycle's MainConf in data before the zone was
    // initialized; the zone memory is a slab pool set up by nginx.
    let (main, shpool) = unsafe {
        (
            &mut *((*shm_zone).data as *mut MainConf),
            (*shm_zone).shm.addr as *mut ngx_slab_pool_t,
        )
    };
    // SAFETY: called by nginx from zone init.
    let (previous, reloading) = match unsafe { previous_header(shm_zone) } {
        Some(old) => (copy_previous(old), true),
        None => (Previous::default(), false),
    };
    let (old_slots, old_upstreams) = (&previous.slots, &previous.upstreams);
    // SAFETY: reading the monotonic clock nginx keeps; this runs in the master.
    let now = unsafe { ngx_current_msec } as u64;
    // A fresh start (not a reload, not `nginx -t`) takes what the state file kept.
    // SAFETY: a plain read of nginx's flag, set before any configuration is read.
    let restored = if reloading || unsafe { ngx::ffi::ngx_test_config } != 0 {
        None
    } else {
        state_store::read(
            main,
            Now {
                mono_ms: now,
                unix_ms: unix_msec(),
            },
        )
    };

    let n = main.slots();
    let nup = main.upstreams.len();
    // SAFETY: shpool is valid; allocation failures are checked below.
    let (header, slots, records, ring) = unsafe {
        (
            ngx_slab_alloc(shpool, size_of::<ZoneHeader>()) as *mut ZoneHeader,
            ngx_slab_alloc(shpool, n.max(1) * size_of::<Slot>()) as *mut Slot,
            ngx_slab_alloc(shpool, nup.max(1) * size_of::<UpstreamRecord>()) as *mut UpstreamRecord,
            ngx_slab_alloc(shpool, journal::len_for(n) * size_of::<u32>()) as *mut u32,
        )
    };
    let traffic = if main.counts_traffic() {
        let bytes = n.max(1) * size_of::<TrafficCounters>();
        // SAFETY: shpool is this zone's slab pool (a null result is checked below); zeroed
        // memory is a set of zero counters (atomics of u64).
        (unsafe { ngx::ffi::ngx_slab_calloc(shpool, bytes) }) as *mut TrafficCounters
    } else {
        ptr::null_mut()
    };
    let passive = if main.has_passive() {
        let bytes = n.max(1) * size_of::<PassiveState>();
        // SAFETY: shpool is this zone's slab pool (a null result is checked below); zeroed
        // memory is a set of idle passive states (atomics).
        (unsafe { ngx::ffi::ngx_slab_calloc(shpool, bytes) }) as *mut PassiveState
    } else {
        ptr::null_mut()
    };
    let members = if main.has_dynamic() {
        let bytes = n.max(1) * size_of::<Member>();
        // SAFETY: shpool is this zone's slab pool (a null result is checked below).
        let m = (unsafe { ngx_slab_alloc(shpool, bytes) }) as *mut Member;
        for i in 0..n {
            if !m.is_null() {
                // SAFETY: m is not null, so it has room for n members.
                unsafe { m.add(i).write(Member::default()) };
            }
        }
        m
    } else {
        ptr::null_mut()
    };
    let missing = (main.counts_traffic() && traffic.is_null())
        || (main.has_passive() && passive.is_null())
        || (main.has_dynamic() && members.is_null());
    if header.is_null() || slots.is_null() || records.is_null() || ring.is_null() || missing {
        // SAFETY: shm_zone is valid.
        let size = unsafe { (*shm_zone).shm.size };
        hc_log!(
            NGX_LOG_EMERG,
            "zone \"{ZONE_NAME}\" of {size} bytes is too small for {n} peer{}, at least {} bytes are needed",
            if n == 1 { "" } else { "s" },
            required_size(
                n,
                nup,
                main.counts_traffic(),
                main.has_passive(),
                main.has_dynamic()
            )
        );
        return NGX_ERROR as ngx_int_t;
    }

    let ha_state = match main.ha {
        None => HA_DISABLED,
        Some((addr, _)) if ha::host_has_address(addr) => HA_MASTER,
        Some(_) => HA_SLAVER,
    };
    let mut i = 0;
    for (ui, up) in main.upstreams.iter().enumerate() {
        let key = upstream_key(&up.name);
        let mut record = old_upstreams.get(&key).map_or(
            UpstreamRecord {
                key,
                excluded_until_ms: restored.as_ref().map_or(0, |r| r.excluded_until(&up.name)),
                // The state file has etcd's peers for it: they replace the static ones.
                replaced: restored
                    .as_ref()
                    .is_some_and(|r| r.members(&up.name).is_some()),
                ..Default::default()
            },
            |r| *r,
        );
        if up.dynamic.is_none() {
            // No longer (or never) following etcd: its static servers are its peers.
            record.replaced = false;
            record.refused = 0;
        }
        // SAFETY: ui < nup == number of records allocated above.
        unsafe { records.add(ui).write(record) };
        let (interval, up_at_start) = match &up.check {
            Some(c) => (c.params.interval_ms, !c.params.default_down),
            None => (1, true),
        };
        for peer in &up.peers {
            let slot = match old_slots.get(&peer.key) {
                Some(old) => Slot {
                    key: peer.key,
                    health: old.health,
                    sched: Schedule {
                        next_due_ms: old.sched.next_due_ms,
                        respread: old.sched.respread,
                        ..Schedule::default()
                    },
                    manual_until_ms: old.manual_until_ms,
                },
                None => fresh_slot(
                    peer.key,
                    up.check.is_some(),
                    // A reserved peer is nobody until etcd names it.
                    up_at_start && !peer.reserved,
                    Schedule::first(now, interval, ngx_random() as u64),
                    reloading.then_some(now),
                    restored.as_ref(),
                ),
            };
            // SAFETY: i < n == number of slots allocated above.
            unsafe { slots.add(i).write(slot) };
            if let (Some(t), false) = (previous.traffic.get(&peer.key), traffic.is_null()) {
                // SAFETY: i < n == number of counters allocated above.
                unsafe { (*traffic.add(i)).restore(t) };
            }
            if let (Some(old), false) = (previous.passive.get(&peer.key), passive.is_null()) {
                // SAFETY: i < n == number of states allocated above.
                unsafe { (*passive.add(i)).copy_from(old) };
            }
            i += 1;
        }
        if let (Some(d), false) = (&up.dynamic, members.is_null()) {
            // SAFETY: the upstream's slots were written above and members has n entries.
            let (slots_now, members_now) = unsafe {
                (
                    core::slice::from_raw_parts_mut(slots, n),
                    core::slice::from_raw_parts_mut(members, n),
                )
            };
            // A reload keeps the previous cycle's members; a fresh start takes the state
            // file's, in new slots with their kept state.
            let from_file: Vec<(Member, Slot)> = restored
                .as_ref()
                .and_then(|r| r.members(&up.name))
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    let slot = fresh_slot(
                        member_key(&up.name, m.addr()),
                        up.check.is_some(),
                        up_at_start,
                        Schedule::first(now, interval, ngx_random() as u64),
                        None,
                        restored.as_ref(),
                    );
                    (*m, slot)
                })
                .collect();
            let kept = if reloading {
                &previous.members
            } else {
                &from_file
            };
            carry_members(
                up,
                d,
                key,
                kept,
                &previous,
                slots_now,
                members_now,
                traffic,
                passive,
            );
        }
        // Panic is judged afresh on the peers and the threshold of this configuration.
        // SAFETY: the first i slots were written above; the record ui too.
        let (written, record) =
            unsafe { (core::slice::from_raw_parts(slots, i), &mut *records.add(ui)) };
        if up.check.is_some() {
            if let Some(change) = record
                .panic
                .recount(up.count_up(written), up.panic.as_ref())
            {
                log_panic(up, change, &record.panic);
            }
        } else {
            record.panic = PanicState::default();
        }
    }
    // SAFETY: header was allocated above with room for a ZoneHeader.
    unsafe {
        header.write(ZoneHeader {
            journal_head: AtomicU64::new(0),
            ha_state: AtomicU8::new(ha_state),
            expiry_hint: AtomicU64::new(0),
            superseded: AtomicBool::new(false),
            writer: WriterLease::default(),
            nslots: n,
            slots,
            nupstreams: nup,
            upstreams: records,
            journal: ring,
            journal_len: journal::len_for(n),
            traffic,
            passive,
            members,
            shpool,
            etcd: EtcdShared::default(),
        });
    }
    if let Some(r) = &restored {
        // SAFETY: written just above.
        unsafe { (*header).writer.restored_revision(r.revision) };
    }
    main.header = header;
    NGX_OK as ngx_int_t
}

/// Gives the etcd-learned peers `kept` of the upstream of the same name (the previous cycle's
/// at a reload, the state file's at a fresh start) the reserved slots of this one, in their
/// order, with their state: the membership is kept. Peers past `max_peers` are dropped (the
/// holder's next full read reports them refused).
#[allow(clippy::too_many_arguments)]
fn carry_members(
    up: &UpstreamConf,
    d: &crate::module::module_conf::Dynamic,
    key: u64,
    kept: &[(Member, Slot)],
    previous: &Previous,
    slots: &mut [Slot],
    members: &mut [Member],
    traffic: *mut TrafficCounters,
    passive: *mut PassiveState,
) {
    let old = kept.iter().filter(|(m, _)| m.upstream_key == key);
    let reserved = &up.peers[d.first..d.first + d.max];
    let mut dropped = 0;
    for (i, (m, s)) in old.enumerate() {
        let Some(peer) = reserved.get(i) else {
            dropped += 1;
            continue;
        };
        let slot = peer.slot();
        members[slot] = *m;
        slots[slot] = Slot {
            sched: Schedule {
                next_due_ms: s.sched.next_due_ms,
                respread: s.sched.respread,
                ..Schedule::default()
            },
            ..*s
        };
        if let (Some(t), false) = (previous.traffic.get(&s.key), traffic.is_null()) {
            // SAFETY: slot < n == number of counters allocated by init_zone.
            unsafe { (*traffic.add(slot)).restore(t) };
        }
        if let (Some(p), false) = (previous.passive.get(&s.key), passive.is_null()) {
            // SAFETY: slot < n == number of states allocated by init_zone.
            unsafe { (*passive.add(slot)).copy_from(p) };
        }
    }
    if dropped > 0 {
        hc_log!(
            NGX_LOG_WARN,
            "{dropped} peer(s) of upstream \"{}\" from etcd are past its max_peers={} and were dropped",
            crate::escape::LogEscaped(&up.name),
            d.max
        );
    }
}
