//! The etcd part of the shared zone's header: the lease that lets one worker at a time hold
//! the watch, and the link's state as the holder last wrote it, which every worker's status
//! pages show.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::etcd::link::{LINK_UNKNOWN, LINK_UP};
use crate::module::zone::Locked;

/// The longest last error kept, in bytes.
const ERROR_MAX: usize = 200;

/// In the zone header; all zero when etcd is not configured.
#[repr(C)]
pub struct EtcdShared {
    /// The pid of the worker holding the watch; 0 when none.
    pub holder: AtomicI32,
    /// When its lease ends (monotonic ms) unless renewed.
    pub holder_until_ms: AtomicU64,
    /// `LINK_UNKNOWN`, `LINK_UP` or `LINK_DOWN`.
    pub link: AtomicU8,
    /// The index of the endpoint last tried.
    pub endpoint: AtomicUsize,
    /// The etcd revision the zone reflects.
    pub revision: AtomicI64,
    /// Unix seconds of the last change of the link (0: none yet).
    pub since_unix: AtomicU64,
    /// Keys under the prefix refused (membership: past `max_peers`).
    pub refused_keys: AtomicU64,
    /// The last error, written and read under the zone lock.
    last_error: UnsafeCell<([u8; ERROR_MAX], usize)>,
}

impl Default for EtcdShared {
    fn default() -> Self {
        EtcdShared {
            holder: AtomicI32::new(0),
            holder_until_ms: AtomicU64::new(0),
            link: AtomicU8::new(LINK_UNKNOWN),
            endpoint: AtomicUsize::new(0),
            revision: AtomicI64::new(0),
            since_unix: AtomicU64::new(0),
            refused_keys: AtomicU64::new(0),
            last_error: UnsafeCell::new(([0; ERROR_MAX], 0)),
        }
    }
}

/// The link as the status formats show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdView {
    pub connected: bool,
    pub endpoint: usize,
    pub revision: i64,
    pub since_unix: u64,
    pub last_error: Option<String>,
    pub refused_keys: u64,
}

impl EtcdShared {
    /// Sets the last error (`None` clears it); `_locked` proves the zone lock is held.
    pub fn set_last_error(&self, _locked: &mut Locked<'_>, error: Option<&str>) {
        let text = error.unwrap_or("");
        let mut end = text.len().min(ERROR_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        // SAFETY: the zone lock serializes every access to last_error.
        let cell = unsafe { &mut *self.last_error.get() };
        cell.0[..end].copy_from_slice(&text.as_bytes()[..end]);
        cell.1 = end;
    }

    /// Sets the link's state (`LINK_UP` or `LINK_DOWN`), the endpoint last tried and the last
    /// error, noting when the state changes (`now_unix_ms`); the state before.
    pub fn set_link(
        &self,
        locked: &mut Locked<'_>,
        link: u8,
        endpoint: usize,
        error: Option<&str>,
        now_unix_ms: u64,
    ) -> u8 {
        self.endpoint.store(endpoint, Ordering::Release);
        self.set_last_error(locked, error);
        let before = self.link.swap(link, Ordering::AcqRel);
        if before != link {
            self.since_unix.store(now_unix_ms / 1000, Ordering::Release);
        }
        before
    }

    /// The state to show; `_locked` proves the zone lock is held.
    pub fn view(&self, _locked: &mut Locked<'_>) -> EtcdView {
        // SAFETY: the zone lock serializes every access to last_error.
        let cell = unsafe { &*self.last_error.get() };
        let error = String::from_utf8_lossy(&cell.0[..cell.1.min(ERROR_MAX)]).into_owned();
        EtcdView {
            connected: self.link.load(Ordering::Acquire) == LINK_UP,
            endpoint: self.endpoint.load(Ordering::Acquire),
            revision: self.revision.load(Ordering::Acquire),
            since_unix: self.since_unix.load(Ordering::Acquire),
            last_error: (!error.is_empty()).then_some(error),
            refused_keys: self.refused_keys.load(Ordering::Acquire),
        }
    }
}
