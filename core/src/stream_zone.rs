//! The layout of the stream module's shared zone, in one place for both modules: the stream
//! module writes it; the http module's status and control locations find it by its name among
//! the cycle's shared memory zones and read it (no link-time dependency between the two).
//! Everything is `#[repr(C)]` and self-contained: names are copied into the zone.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::health::PeerHealth;
use crate::histogram::Histogram;
use crate::journal::{self, Change};
use crate::schedule::Schedule;
use crate::stream::StreamType;

/// The zone's name as `ngx_shared_memory_add` knows it.
pub const ZONE_NAME: &str = "upstream_healthcheck_stream";

/// The first word of a zone laid out as here, and the layout's version: a reader that finds
/// another value leaves the zone alone.
pub const MAGIC: u64 = 0x6863_7374_7265_616d;
pub const VERSION: u64 = 1;

/// State of one stream peer.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct StreamSlot {
    pub key: u64,
    pub health: PeerHealth,
    pub sched: Schedule,
    /// Forced down until this monotonic time (`u64::MAX`: no expiry); 0 when not.
    pub manual_until_ms: u64,
}

impl StreamSlot {
    pub fn manual_down(&self) -> bool {
        self.manual_until_ms != 0
    }
}

/// One stream upstream block.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct StreamUpstream {
    pub key: u64,
    /// Excluded from checking until this monotonic time (`u64::MAX`: no expiry); 0 when not.
    pub excluded_until_ms: u64,
    pub probe_durations: Histogram,
    /// Probes that gave no verdict for a local reason.
    pub local_errors: u64,
    /// Its peers are slots `first_slot..first_slot + npeers`, primaries first.
    pub first_slot: u32,
    pub npeers: u32,
    pub primaries: u32,
    /// 0: unchecked, 1: tcp, 2: udp.
    pub kind: u32,
    /// 1 when its checks start peers down (`default_down`): a restart of its checks does.
    pub default_down: u32,
    pub name: NameRef,
}

impl StreamUpstream {
    pub fn checked(&self) -> bool {
        self.kind != 0
    }

    pub fn stream_type(&self) -> Option<StreamType> {
        match self.kind {
            1 => Some(StreamType::Tcp),
            2 => Some(StreamType::Udp),
            _ => None,
        }
    }

    pub fn kind_of(t: Option<StreamType>) -> u32 {
        match t {
            None => 0,
            Some(StreamType::Tcp) => 1,
            Some(StreamType::Udp) => 2,
        }
    }

    pub fn excluded(&self) -> bool {
        self.excluded_until_ms != 0
    }
}

/// A peer's fixed facts, beside its slot.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct StreamPeer {
    pub name: NameRef,
    pub weight: i64,
    pub max_fails: u64,
    pub fail_timeout: u64,
    /// Marked `down` in nginx.conf.
    pub config_down: u8,
    pub backup: u8,
}

/// A name in the zone's name bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct NameRef {
    pub off: u32,
    pub len: u32,
}

/// The start of the zone's data; the slab pool's `data` points at it.
#[repr(C)]
pub struct StreamZone {
    pub magic: u64,
    pub version: u64,
    /// Sequence number of the next journal entry (see `journal`).
    pub journal_head: AtomicU64,
    /// Set under the lock when a new cycle copied this zone.
    pub superseded: AtomicBool,
    /// The earliest end of a manual down or exclusion with a ttl (monotonic ms), `u64::MAX`
    /// when none: workers look for expired ones only from then on.
    pub expiry_hint: AtomicU64,
    pub nslots: usize,
    pub slots: *mut StreamSlot,
    pub peers: *mut StreamPeer,
    pub nupstreams: usize,
    pub upstreams: *mut StreamUpstream,
    pub names: *mut u8,
    pub names_len: usize,
    pub journal: *mut u32,
    pub journal_len: usize,
    /// The zone's `ngx_slab_pool_t`, whose mutex is the zone lock.
    pub shpool: *mut c_void,
}

impl StreamZone {
    /// A header read through `shpool->data`: `None` unless it carries this layout.
    ///
    /// # Safety
    /// `p` must be null or point to readable memory of at least a `StreamZone`.
    pub unsafe fn checked<'a>(p: *const StreamZone) -> Option<&'a StreamZone> {
        // SAFETY: per the contract.
        let z = unsafe { p.as_ref() }?;
        (z.magic == MAGIC && z.version == VERSION).then_some(z)
    }

    /// The sequence number of the journal's next entry: one atomic load.
    pub fn journal_head(&self) -> u64 {
        self.journal_head.load(Ordering::Acquire)
    }

    /// Notes a new ttl so that workers look for its expiry in time.
    pub fn note_expiry(&self, until_ms: u64) {
        self.expiry_hint.fetch_min(until_ms, Ordering::AcqRel);
    }

    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// The name a `NameRef` points at (empty when out of range or not UTF-8).
    pub fn name(&self, n: NameRef) -> &str {
        let (off, len) = (n.off as usize, n.len as usize);
        if self.names.is_null() || off + len > self.names_len {
            return "";
        }
        // SAFETY: names holds names_len bytes written at init and never changed after.
        let bytes = unsafe { core::slice::from_raw_parts(self.names.add(off), len) };
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// Every peer's fixed facts (written at init, read-only after: no lock needed).
    pub fn peers(&self) -> &[StreamPeer] {
        if self.peers.is_null() {
            return &[];
        }
        // SAFETY: nslots peers written at init, never changed after.
        unsafe { core::slice::from_raw_parts(self.peers, self.nslots) }
    }

    /// The slots.
    ///
    /// # Safety
    /// The caller holds the zone lock for as long as it uses the slice.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slots_locked(&self) -> &mut [StreamSlot] {
        if self.slots.is_null() {
            return &mut [];
        }
        // SAFETY: nslots slots allocated at init; the lock serializes access.
        unsafe { core::slice::from_raw_parts_mut(self.slots, self.nslots) }
    }

    /// The upstream records.
    ///
    /// # Safety
    /// As for `slots_locked`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn upstreams_locked(&self) -> &mut [StreamUpstream] {
        if self.upstreams.is_null() {
            return &mut [];
        }
        // SAFETY: nupstreams records allocated at init; the lock serializes access.
        unsafe { core::slice::from_raw_parts_mut(self.upstreams, self.nupstreams) }
    }

    /// Appends a change to the journal; the stream module's workers apply it.
    ///
    /// # Safety
    /// As for `slots_locked`.
    pub unsafe fn record_locked(&self, change: Change) {
        if self.journal.is_null() {
            return;
        }
        // SAFETY: journal_len entries allocated at init; the lock serializes writers.
        let ring = unsafe { core::slice::from_raw_parts_mut(self.journal, self.journal_len) };
        let head = journal::append(ring, self.journal_head.load(Ordering::Relaxed), change);
        self.journal_head.store(head, Ordering::Release);
    }

    /// The change recorded at `seq`.
    ///
    /// # Safety
    /// As for `slots_locked`.
    pub unsafe fn change_at_locked(&self, seq: u64) -> Change {
        // SAFETY: journal_len entries allocated at init; the caller holds the lock (see
        // `slots_locked`), so no writer changes them meanwhile.
        let ring = unsafe { core::slice::from_raw_parts(self.journal, self.journal_len) };
        journal::at(ring, seq)
    }
}
