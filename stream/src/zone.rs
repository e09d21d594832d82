//! The stream module's shared zone (layout in the core's `stream_zone`, shared with the http
//! module's status and control): adding it, its lock, and its init, which carries the state of
//! peers that exist before and after a reload over from the previous cycle's zone.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::collections::HashMap;

use ngx::ffi::{
    ngx_conf_t, ngx_current_msec, ngx_cycle, ngx_cycle_t, ngx_int_t, ngx_pool_cleanup_add,
    ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, NGX_ERROR, NGX_OK,
};
use upstream_healthcheck_core::health::PeerHealth;
use upstream_healthcheck_core::journal;
use upstream_healthcheck_core::key::{peer_key, zone_size_for};
use upstream_healthcheck_core::schedule::Schedule;
use upstream_healthcheck_core::stream_zone::{
    NameRef, StreamPeer, StreamSlot, StreamUpstream, StreamZone, MAGIC, VERSION, ZONE_NAME,
};
use upstream_healthcheck_glue::shm::{find_zone, ShmLock};

use crate::conf::MainConf;
use upstream_healthcheck_glue::hc_log;

/// Bytes of shared memory for the zone of `main`.
fn required_size(main: &MainConf) -> usize {
    let n = main.slots().max(1);
    zone_size_for(&[
        size_of::<StreamZone>(),
        n * size_of::<StreamSlot>(),
        n * size_of::<StreamPeer>(),
        main.upstreams.len().max(1) * size_of::<StreamUpstream>(),
        names_len(main).max(1),
        journal::len_for(n) * size_of::<u32>(),
    ])
}

fn names_len(main: &MainConf) -> usize {
    main.upstreams
        .iter()
        .map(|u| u.name.len() + u.peers.iter().map(|p| p.name.len()).sum::<usize>())
        .sum()
}

/// Adds the zone for this configuration.
///
/// # Safety
/// `cf` must be the stream block's context in postconfiguration; `main` lives as long as it.
pub unsafe fn add(cf: *mut ngx_conf_t, main: &mut MainConf) -> Result<(), ()> {
    let mut name = ngx::ngx_string!("upstream_healthcheck_stream");
    debug_assert_eq!(name.as_bytes(), ZONE_NAME.as_bytes());
    // SAFETY: cf is valid; the tag is this module's static, the same across reloads.
    let shm = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            required_size(main),
            crate::module() as *const _ as *mut c_void,
        )
    };
    // SAFETY: a non-null zone returned by nginx is ours to set up until the cycle starts.
    let shm = unsafe { shm.as_mut() }.ok_or(())?;
    shm.init = Some(init_zone);
    shm.data = main as *mut MainConf as *mut c_void;
    shm.noreuse = 1;
    // SAFETY: cf->pool is the new cycle's pool, destroyed when that cycle fails or ends.
    let cln = unsafe { ngx_pool_cleanup_add((*cf).pool, 0).as_mut() }.ok_or(())?;
    cln.handler = Some(undo_supersede);
    main.shm_zone = shm;
    Ok(())
}

/// Holds the zone lock (the slab pool's mutex, which the master force-unlocks if a worker dies
/// holding it).
pub struct Locked<'a> {
    pub zone: &'a StreamZone,
    _lock: ShmLock,
}

/// Takes the zone lock.
pub fn lock(zone: &StreamZone) -> Locked<'_> {
    Locked {
        zone,
        // SAFETY: shpool is the zone's slab pool, mapped for the life of the cycle.
        _lock: unsafe { ShmLock::lock(zone.shpool as *mut ngx_slab_pool_t) },
    }
}

impl Locked<'_> {
    pub fn slots(&mut self) -> &mut [StreamSlot] {
        // SAFETY: this guard holds the lock.
        unsafe { self.zone.slots_locked() }
    }

    pub fn upstreams(&mut self) -> &mut [StreamUpstream] {
        // SAFETY: this guard holds the lock.
        unsafe { self.zone.upstreams_locked() }
    }

    pub fn record(&mut self, change: journal::Change) {
        // SAFETY: this guard holds the lock.
        unsafe { self.zone.record_locked(change) }
    }

    pub fn change_at(&mut self, seq: u64) -> journal::Change {
        // SAFETY: this guard holds the lock.
        unsafe { self.zone.change_at_locked(seq) }
    }
}

/// The zone that the cycle being initialized marked superseded, until that cycle is committed.
static PENDING: AtomicPtr<StreamZone> = AtomicPtr::new(ptr::null_mut());

/// `ngx_module_t.init_module`: the new cycle can no longer fail, the old zone stays superseded.
pub extern "C" fn commit_supersede(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    PENDING.store(ptr::null_mut(), Ordering::Release);
    NGX_OK as ngx_int_t
}

/// A cleanup of the new cycle's pool: when that cycle failed after copying the zone, the old
/// cycle runs on and its zone takes changes again.
unsafe extern "C" fn undo_supersede(_data: *mut c_void) {
    let old = PENDING.swap(ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: PENDING is set only between the copy and the commit of a new cycle; a cycle
    // that fails in between leaves the old cycle, and its zone, running.
    if let Some(old) = unsafe { old.as_ref() } {
        let _locked = lock(old);
        old.superseded.store(false, Ordering::Release);
    }
}

/// The previous cycle's zone: still mapped while the new cycle's zones are initialized.
///
/// # Safety
/// Must run inside a zone init callback.
unsafe fn previous_zone(this: *mut ngx_shm_zone_t) -> Option<&'static StreamZone> {
    // SAFETY: ngx_cycle is the running (old) cycle, still mapped; on first start it is the
    // init cycle; `this` is the zone being initialized.
    let z = unsafe { find_zone(ngx_cycle, ZONE_NAME, Some((*this).tag), this) }?;
    let pool = z.shm.addr as *const ngx_slab_pool_t;
    // SAFETY: the old zone is mapped; its slab pool's data is its header (or null).
    unsafe { pool.as_ref().and_then(|p| StreamZone::checked(p.data as _)) }
}

/// What a reload carries over from the previous zone, by key.
#[derive(Default)]
struct Previous {
    slots: HashMap<u64, StreamSlot>,
    upstreams: HashMap<u64, StreamUpstream>,
}

/// How long a reload waits for the old zone's lock before copying without it.
const LOCK_WAIT_AT_RELOAD_MS: u64 = 500;

/// Copies the previous cycle's state (in the master, SIGCHLD blocked: a lock held by a dead
/// worker is tried for a bounded time, then the copy is made without it).
fn copy_previous(old: &'static StreamZone) -> Previous {
    // SAFETY: the old zone's slab pool, still mapped.
    let lock =
        unsafe { ShmLock::try_for(old.shpool as *mut ngx_slab_pool_t, LOCK_WAIT_AT_RELOAD_MS) };
    if lock.is_none() {
        hc_log!(
            NGX_LOG_WARN,
            "the stream zone lock is held by a process that does not let go, copying the state without it"
        );
    }
    // SAFETY: under the lock, or without it after the bounded wait (a slot being written may
    // be copied half old, half new; the next probe corrects it).
    let previous = unsafe {
        Previous {
            slots: old.slots_locked().iter().map(|s| (s.key, *s)).collect(),
            upstreams: old.upstreams_locked().iter().map(|u| (u.key, *u)).collect(),
        }
    };
    old.superseded.store(true, Ordering::Release);
    PENDING.store(
        old as *const StreamZone as *mut StreamZone,
        Ordering::Release,
    );
    drop(lock);
    previous
}

/// The key of an upstream's record: its name.
fn upstream_key(name: &str) -> u64 {
    peer_key(name.as_bytes(), b"", u32::MAX)
}

/// `ngx_shm_zone_t.init`: lays out the zone for this cycle's peers, keeping the state of peers
/// the previous cycle had (same upstream and address) and starting new ones per
/// `default_down`, with their first probe at a random point of the first interval.
unsafe extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, _data: *mut c_void) -> ngx_int_t {
    // SAFETY: postconfiguration stored this cycle's MainConf in data; the zone memory is a
    // slab pool set up by nginx.
    let (main, shpool) = unsafe {
        (
            &mut *((*shm_zone).data as *mut MainConf),
            (*shm_zone).shm.addr as *mut ngx_slab_pool_t,
        )
    };
    // SAFETY: called by nginx from zone init.
    let previous = match unsafe { previous_zone(shm_zone) } {
        Some(old) => copy_previous(old),
        None => Previous::default(),
    };
    let n = main.slots();
    let nup = main.upstreams.len();
    let nnames = names_len(main);
    let jlen = journal::len_for(n);
    // SAFETY: shpool is valid; allocation failures are checked below.
    let (header, slots, peers, records, names, ring) = unsafe {
        (
            ngx_slab_alloc(shpool, size_of::<StreamZone>()) as *mut StreamZone,
            ngx_slab_alloc(shpool, n.max(1) * size_of::<StreamSlot>()) as *mut StreamSlot,
            ngx_slab_alloc(shpool, n.max(1) * size_of::<StreamPeer>()) as *mut StreamPeer,
            ngx_slab_alloc(shpool, nup.max(1) * size_of::<StreamUpstream>()) as *mut StreamUpstream,
            ngx_slab_alloc(shpool, nnames.max(1)) as *mut u8,
            ngx_slab_alloc(shpool, jlen * size_of::<u32>()) as *mut u32,
        )
    };
    if header.is_null()
        || slots.is_null()
        || peers.is_null()
        || records.is_null()
        || names.is_null()
        || ring.is_null()
    {
        hc_log!(
            NGX_LOG_EMERG,
            "zone \"{ZONE_NAME}\" is too small for {n} peers"
        );
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: reading the monotonic clock nginx keeps; this runs in the master.
    let now = unsafe { ngx_current_msec } as u64;
    let mut name_off = 0usize;
    let mut put_name = |s: &str| {
        // SAFETY: names has room for every name (names_len), written once here.
        unsafe { ptr::copy_nonoverlapping(s.as_ptr(), names.add(name_off), s.len()) };
        let r = NameRef {
            off: name_off as u32,
            len: s.len() as u32,
        };
        name_off += s.len();
        r
    };
    for (ui, up) in main.upstreams.iter().enumerate() {
        let key = upstream_key(&up.name);
        let old = previous.upstreams.get(&key);
        let record = StreamUpstream {
            key,
            excluded_until_ms: old.map_or(0, |r| r.excluded_until_ms),
            probe_durations: old.map(|r| r.probe_durations).unwrap_or_default(),
            local_errors: old.map_or(0, |r| r.local_errors),
            first_slot: up.peers.first().map_or(0, |p| p.slot as u32),
            npeers: up.peers.len() as u32,
            primaries: up.primaries as u32,
            kind: StreamUpstream::kind_of(up.check.as_ref().map(|c| c.kind)),
            default_down: up.check.as_ref().is_some_and(|c| c.params.default_down) as u32,
            name: put_name(&up.name),
        };
        // SAFETY: ui < nup records allocated above.
        unsafe { records.add(ui).write(record) };
        let (interval, up_at_start) = match &up.check {
            Some(c) => (c.params.interval_ms, !c.params.default_down),
            None => (1, true),
        };
        for peer in &up.peers {
            let slot = match previous.slots.get(&peer.key) {
                Some(old) => StreamSlot {
                    key: peer.key,
                    health: old.health,
                    sched: Schedule {
                        next_due_ms: old.sched.next_due_ms,
                        respread: old.sched.respread,
                        ..Schedule::default()
                    },
                    manual_until_ms: old.manual_until_ms,
                },
                None => StreamSlot {
                    key: peer.key,
                    health: PeerHealth::new(up_at_start),
                    sched: Schedule::first(now, interval, ngx::ffi::ngx_random() as u64),
                    manual_until_ms: 0,
                },
            };
            let facts = StreamPeer {
                name: put_name(&peer.name),
                weight: peer.weight,
                max_fails: peer.max_fails,
                fail_timeout: peer.fail_timeout,
                config_down: peer.config_down as u8,
                backup: peer.backup as u8,
            };
            // SAFETY: peer.slot < n slots and peers allocated above.
            unsafe {
                slots.add(peer.slot).write(slot);
                peers.add(peer.slot).write(facts);
            }
        }
    }
    // SAFETY: header was allocated above with room for a StreamZone.
    unsafe {
        header.write(StreamZone {
            magic: MAGIC,
            version: VERSION,
            journal_head: AtomicU64::new(0),
            superseded: AtomicBool::new(false),
            expiry_hint: AtomicU64::new(0),
            nslots: n,
            slots,
            peers,
            nupstreams: nup,
            upstreams: records,
            names,
            names_len: nnames,
            journal: ring,
            journal_len: jlen,
            shpool: shpool as *mut c_void,
        });
        (*shpool).data = header as *mut c_void;
    }
    main.zone = header;
    NGX_OK as ngx_int_t
}
