//! Who writes the state file and when: one worker at a time holds a lease in the shared zone,
//! and writes at most once a second when a verdict or a control change happened, counters
//! alone at a slower pace. Times are monotonic milliseconds passed in.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// The holder looks at the state (and renews its lease) this often; a write follows at most
/// this often.
pub const WRITE_EVERY_MS: u64 = 1000;

/// When only probe counters moved, they are written this often: a verdict or a control change
/// is what a restart must not lose; a counter is off by at most this much of probing.
pub const COUNTERS_EVERY_MS: u64 = 30_000;

/// A lease not renewed for this long belongs to a worker that is gone: another takes it.
pub const LEASE_MS: u64 = 3 * WRITE_EVERY_MS;

/// What a write attempt changed in the writer's health, to be logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteReport {
    /// The first failure after success (or at the start).
    Failing,
    /// The first success after failures.
    Recovered,
}

/// The writer's state in the shared zone: atomics, so that any process may look without the
/// zone lock; the lease is taken under it.
#[derive(Debug, Default)]
#[repr(C)]
pub struct WriterLease {
    /// Pid of the worker holding the lease, 0 when none.
    holder: AtomicI32,
    /// When the lease runs out unless renewed.
    until_ms: AtomicU64,
    /// A write succeeded at least once in this zone.
    written: AtomicBool,
    /// The journal head and the probe count of the last written state.
    written_head: AtomicU64,
    written_probes: AtomicU64,
    /// When the counters were last written.
    written_at_ms: AtomicU64,
    /// The last write failed.
    failing: AtomicBool,
    /// Probe results recorded in the zone (every worker counts its own).
    probes: AtomicU64,
    /// The device and inode of the file last written (each write makes a new one): another
    /// process that wrote the file since (a binary upgrade's new master) is seen by a new
    /// inode at the path. 0 and 0 until the first write.
    file_dev: AtomicU64,
    file_ino: AtomicU64,
    /// The etcd revision of the membership the state file gave at start (0: none): the file
    /// keeps saying it until etcd is read in this zone.
    restored_revision: AtomicU64,
}

impl WriterLease {
    /// Worker `pid` holds the lease at `now`: it renews one it holds or takes one that ran out.
    pub fn take(&self, pid: i32, now: u64) -> bool {
        let holder = self.holder.load(Ordering::Acquire);
        if holder != pid && holder != 0 && now < self.until_ms.load(Ordering::Acquire) {
            return false;
        }
        self.holder.store(pid, Ordering::Release);
        self.until_ms
            .store(now.saturating_add(LEASE_MS), Ordering::Release);
        true
    }

    /// Counts one probe result.
    pub fn count_probe(&self) {
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    /// Probe results recorded so far (see `due` and `written`).
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Whether the state with journal head `head` should be written at `now`: never written
    /// in this zone, a change since the last write, or counters that moved `COUNTERS_EVERY_MS`
    /// ago. A failing write is retried on the holder's next look.
    pub fn due(&self, head: u64, now: u64) -> bool {
        if !self.written.load(Ordering::Acquire) || self.failing.load(Ordering::Acquire) {
            return true;
        }
        if head != self.written_head.load(Ordering::Acquire) {
            return true;
        }
        self.probes() != self.written_probes.load(Ordering::Acquire)
            && now.saturating_sub(self.written_at_ms.load(Ordering::Acquire)) >= COUNTERS_EVERY_MS
    }

    /// Notes the device and inode of the file just written.
    pub fn wrote_file(&self, dev: u64, ino: u64) {
        self.file_dev.store(dev, Ordering::Release);
        self.file_ino.store(ino, Ordering::Release);
    }

    /// The device and inode of the file last written, when one was.
    pub fn last_file(&self) -> Option<(u64, u64)> {
        let id = (
            self.file_dev.load(Ordering::Acquire),
            self.file_ino.load(Ordering::Acquire),
        );
        (id != (0, 0)).then_some(id)
    }

    /// Notes the etcd revision of the membership taken from the state file.
    pub fn restored_revision(&self, revision: u64) {
        self.restored_revision.store(revision, Ordering::Release);
    }

    /// The etcd revision the written membership reflects: the zone's (`revision`, 0 until
    /// etcd is read in this zone), else the one the file gave at start.
    pub fn membership_revision(&self, revision: i64) -> u64 {
        match u64::try_from(revision) {
            Ok(r) if r > 0 => r,
            _ => self.restored_revision.load(Ordering::Acquire),
        }
    }

    /// Records a write attempt of the state with journal head `head` and probe count `probes`
    /// at `now`; says when the writer starts failing or recovers.
    pub fn attempted(&self, ok: bool, head: u64, probes: u64, now: u64) -> Option<WriteReport> {
        if ok {
            self.written_head.store(head, Ordering::Release);
            self.written_probes.store(probes, Ordering::Release);
            self.written_at_ms.store(now, Ordering::Release);
            self.written.store(true, Ordering::Release);
        }
        let was_failing = self.failing.swap(!ok, Ordering::AcqRel);
        match (was_failing, ok) {
            (false, false) => Some(WriteReport::Failing),
            (true, true) => Some(WriteReport::Recovered),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_holds_the_lease_until_it_stops_renewing_it() {
        let lease = WriterLease::default();
        assert!(lease.take(10, 1_000));
        assert!(!lease.take(11, 1_500), "held by 10");
        assert!(lease.take(10, 2_000), "renewed");
        assert!(!lease.take(11, 2_000 + LEASE_MS - 1));
        assert!(lease.take(11, 2_000 + LEASE_MS), "10 is gone: taken over");
        assert!(!lease.take(10, 2_000 + LEASE_MS + 1), "10 lost it");
    }

    #[test]
    fn writes_follow_changes_and_counters_come_slower() {
        let lease = WriterLease::default();
        assert!(lease.due(0, 0), "never written");
        assert_eq!(lease.attempted(true, 0, 0, 0), None);
        assert!(!lease.due(0, 1_000), "nothing changed");
        assert!(lease.due(1, 1_000), "a journal entry");
        lease.attempted(true, 1, 0, 1_000);
        lease.count_probe();
        assert!(!lease.due(1, 2_000), "counters alone wait");
        assert!(lease.due(1, 1_000 + COUNTERS_EVERY_MS));
        lease.attempted(true, 1, lease.probes(), 1_000 + COUNTERS_EVERY_MS);
        assert!(!lease.due(1, 2_000 + COUNTERS_EVERY_MS));
    }

    #[test]
    fn the_membership_says_the_revision_of_etcd_once_read_else_the_files() {
        let lease = WriterLease::default();
        assert_eq!(lease.membership_revision(0), 0);
        lease.restored_revision(40);
        assert_eq!(lease.membership_revision(0), 40, "etcd not read yet");
        assert_eq!(lease.membership_revision(57), 57);
    }

    #[test]
    fn the_last_file_written_is_known_by_its_inode() {
        let lease = WriterLease::default();
        assert_eq!(lease.last_file(), None);
        lease.wrote_file(2049, 77);
        assert_eq!(lease.last_file(), Some((2049, 77)));
    }

    #[test]
    fn failures_are_reported_once_and_so_is_the_recovery() {
        let lease = WriterLease::default();
        assert_eq!(lease.attempted(false, 0, 0, 0), Some(WriteReport::Failing));
        assert_eq!(lease.attempted(false, 0, 0, 1_000), None);
        assert!(lease.due(0, 2_000), "retried");
        assert_eq!(
            lease.attempted(true, 0, 0, 2_000),
            Some(WriteReport::Recovered)
        );
        assert_eq!(lease.attempted(true, 0, 0, 3_000), None);
        assert!(!lease.due(0, 4_000));
    }
}
