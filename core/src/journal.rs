//! The change journal: a ring of what changed in the shared state (a peer, an upstream, or
//! everything), so that each worker applies only what changed since it last looked.
//!
//! Writers append under the zone lock; the sequence number of the next entry is kept apart
//! (an atomic in the zone), so a worker with nothing to apply pays one atomic load. A worker
//! that fell more than a ring behind resynchronises everything.

use core::ops::Range;

/// Entries in the ring for `slots` peers: a quarter of the peers, between 256 and 16,384 (4
/// bytes each: at most one byte per peer, 64 KiB in all). Workers catch up at least every
/// 100 ms, so a worker resyncs everything only after more changes than that within 100 ms, and a
/// resync then costs at most four times the changes it replaces.
pub fn len_for(slots: usize) -> usize {
    (slots / 4).clamp(256, 16384)
}

const KIND_SHIFT: u32 = 30;
const INDEX_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// One change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The state of one peer slot (a verdict, a manual down).
    Slot(usize),
    /// Every peer of one upstream (an exclusion, a restart of its checks).
    Upstream(usize),
    /// Everything (the HA mode).
    All,
}

impl Change {
    /// The entry stored in the ring. Indexes above 2^30 - 1 cannot occur (the zone would be
    /// far larger than memory) and are clamped into an `All`.
    pub fn encode(self) -> u32 {
        match self {
            Change::Slot(i) if i <= INDEX_MASK as usize => i as u32,
            Change::Upstream(i) if i <= INDEX_MASK as usize => (1 << KIND_SHIFT) | i as u32,
            _ => 2 << KIND_SHIFT,
        }
    }

    pub fn decode(entry: u32) -> Change {
        let index = (entry & INDEX_MASK) as usize;
        match entry >> KIND_SHIFT {
            0 => Change::Slot(index),
            1 => Change::Upstream(index),
            _ => Change::All,
        }
    }
}

/// What a worker that applied everything before sequence `applied` has to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    UpToDate,
    /// Apply the entries with these sequence numbers.
    Changes(Range<u64>),
    /// More changed than the ring holds: apply everything.
    Resync,
}

/// Compares a worker's position with the journal's head.
pub fn pending(head: u64, applied: u64, len: usize) -> Pending {
    if head == applied {
        Pending::UpToDate
    } else if head < applied || head - applied > len as u64 {
        Pending::Resync
    } else {
        Pending::Changes(applied..head)
    }
}

/// Appends `change` at sequence `head` of `ring`; returns the new head.
pub fn append(ring: &mut [u32], head: u64, change: Change) -> u64 {
    if !ring.is_empty() {
        let at = (head % ring.len() as u64) as usize;
        ring[at] = change.encode();
    }
    head + 1
}

/// The change recorded at sequence `seq` (which must lie within the last `ring.len()`).
pub fn at(ring: &[u32], seq: u64) -> Change {
    if ring.is_empty() {
        return Change::All;
    }
    Change::decode(ring[(seq % ring.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_grows_with_the_peers_within_bounds() {
        assert_eq!(len_for(1), 256);
        assert_eq!(len_for(10_000), 2500);
        assert_eq!(len_for(100_000), 16384);
    }

    #[test]
    fn entries_round_trip() {
        for c in [
            Change::Slot(0),
            Change::Slot(99_999),
            Change::Upstream(0),
            Change::Upstream(1_000),
            Change::All,
        ] {
            assert_eq!(Change::decode(c.encode()), c);
        }
        assert_eq!(
            Change::decode(Change::Slot(usize::MAX).encode()),
            Change::All
        );
    }

    #[test]
    fn a_worker_applies_what_changed_since_it_last_looked() {
        let mut ring = vec![0u32; 4];
        let mut head = 0;
        assert_eq!(pending(head, 0, 4), Pending::UpToDate);
        head = append(&mut ring, head, Change::Slot(7));
        head = append(&mut ring, head, Change::Upstream(2));
        assert_eq!(pending(head, 0, 4), Pending::Changes(0..2));
        assert_eq!(at(&ring, 0), Change::Slot(7));
        assert_eq!(at(&ring, 1), Change::Upstream(2));
        assert_eq!(pending(head, 2, 4), Pending::UpToDate);
    }

    #[test]
    fn a_worker_more_than_a_ring_behind_resyncs() {
        let mut ring = vec![0u32; 4];
        let mut head = 0;
        for i in 0..5 {
            head = append(&mut ring, head, Change::Slot(i));
        }
        assert_eq!(pending(head, 0, 4), Pending::Resync);
        assert_eq!(pending(head, 1, 4), Pending::Changes(1..5));
        assert_eq!(
            at(&ring, 4),
            Change::Slot(4),
            "the newest overwrote the oldest"
        );
        assert_eq!(
            pending(3, 5, 4),
            Pending::Resync,
            "a journal that went back"
        );
    }
}
