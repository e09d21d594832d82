//! When each peer is due for its next probe, and which worker holds the probe in flight.
//!
//! Every worker scans the same schedule in shared memory; a worker claims a due peer under the
//! zone lock, so exactly one probe per peer runs per interval whatever the number of workers.
//! A claim is a lease: if the worker dies mid-probe, the lease runs out and another worker
//! takes the peer over. Times are monotonic milliseconds passed in by the caller.

/// The longest a worker sleeps between scans, so verdicts and takeovers are never late.
pub const MAX_TICK_MS: u64 = 100;

/// Scheduling state of one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Schedule {
    /// Monotonic time at which the next probe is due.
    pub next_due_ms: u64,
    /// While a probe is in flight, when its lease runs out; 0 when idle.
    pub busy_until_ms: u64,
    /// Pid of the worker running the probe in flight, 0 when idle.
    pub owner_pid: i32,
}

/// How long a claim lasts: the probe ends within `timeout`, so a lease that outlives
/// `max(interval, timeout) + interval` belongs to a worker that is gone. With the usual
/// `timeout <= interval` that is two intervals.
pub fn lease_ms(interval_ms: u64, timeout_ms: u64) -> u64 {
    interval_ms.max(timeout_ms).saturating_add(interval_ms)
}

impl Schedule {
    /// The schedule of a peer seen for the first time: its first probe falls at a random point
    /// of the first interval, so a fresh start spreads probes instead of sending them at once.
    pub fn first(now_ms: u64, interval_ms: u64, random: u64) -> Schedule {
        Schedule {
            next_due_ms: now_ms + random % interval_ms.max(1),
            ..Schedule::default()
        }
    }

    /// True when no probe is in flight (or its lease ran out).
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.busy_until_ms == 0 || self.busy_until_ms <= now_ms
    }

    /// True when a probe should start now.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.next_due_ms <= now_ms && self.is_idle(now_ms)
    }

    /// Claims the probe for worker `pid` when it is due within `early_ms` (see `batch_ms`).
    /// Returns false when it is not due yet or is already in flight elsewhere.
    pub fn claim(
        &mut self,
        now_ms: u64,
        early_ms: u64,
        pid: i32,
        interval_ms: u64,
        timeout_ms: u64,
    ) -> bool {
        if self.next_due_ms > now_ms.saturating_add(early_ms) || !self.is_idle(now_ms) {
            return false;
        }
        self.busy_until_ms = now_ms
            .saturating_add(lease_ms(interval_ms, timeout_ms))
            .max(1);
        self.owner_pid = pid;
        true
    }

    /// Ends the probe worker `pid` ran and plans the next one: one interval after the
    /// previous due time (so cadence does not drift), never before the probe ended, plus
    /// `random % (jitter + 1)`. Returns false, changing nothing, when the lease was taken
    /// over meanwhile and the result must be dropped.
    pub fn finish(
        &mut self,
        now_ms: u64,
        pid: i32,
        interval_ms: u64,
        jitter_ms: u64,
        random: u64,
    ) -> bool {
        if self.owner_pid != pid || self.busy_until_ms == 0 {
            return false;
        }
        let jitter = if jitter_ms == 0 {
            0
        } else {
            random % (jitter_ms + 1)
        };
        self.next_due_ms = self.next_due_ms.saturating_add(interval_ms).max(now_ms) + jitter;
        self.busy_until_ms = 0;
        self.owner_pid = 0;
        true
    }

    /// Milliseconds until this peer next needs a look: its due time when idle, the end of
    /// the lease when a probe is in flight (a takeover may be needed then).
    pub fn wake_in(&self, now_ms: u64) -> u64 {
        let at = if self.is_idle(now_ms) {
            self.next_due_ms
        } else {
            self.busy_until_ms
        };
        at.saturating_sub(now_ms)
    }
}

/// How early a probe may start: a scan also claims the probes due within this much, so that
/// a worker wakes once per batch instead of once per probe (each wakeup costs a system call and
/// nginx's time update). A twentieth of the shortest interval, at most 10 ms: probes start a
/// little early, never late, so detection is never slower, and cadence keeps to the due times.
pub fn batch_ms(shortest_interval_ms: u64) -> u64 {
    (shortest_interval_ms / 20).min(10)
}

/// How long a worker may sleep before its next scan, given the smallest `wake_in` of the
/// peers it looked at (`None` when there are none).
pub fn tick_ms(min_wake_in: Option<u64>) -> u64 {
    min_wake_in.unwrap_or(MAX_TICK_MS).clamp(1, MAX_TICK_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probes_are_spread_over_one_interval() {
        let dues: Vec<u64> = (0..10)
            .map(|r| Schedule::first(1000, 2000, r * 397).next_due_ms)
            .collect();
        assert!(dues.iter().all(|&d| (1000..3000).contains(&d)));
        assert!(dues.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn only_one_worker_claims_a_due_peer() {
        let mut s = Schedule {
            next_due_ms: 100,
            ..Schedule::default()
        };
        assert!(!s.claim(99, 0, 1, 1000, 500));
        assert!(s.claim(100, 0, 1, 1000, 500));
        assert!(!s.claim(101, 0, 2, 1000, 500));
        assert_eq!(s.owner_pid, 1);
    }

    #[test]
    fn next_probe_keeps_cadence_and_waits_for_a_slow_probe() {
        let mut s = Schedule {
            next_due_ms: 1000,
            ..Schedule::default()
        };
        assert!(s.claim(1010, 0, 7, 1000, 500));
        assert!(s.finish(1020, 7, 1000, 0, 0));
        assert_eq!(s.next_due_ms, 2000);
        // A probe that outlasts the interval: the next one starts after it ends.
        assert!(s.claim(2000, 0, 7, 1000, 5000));
        assert!(
            !s.claim(3500, 0, 8, 1000, 5000),
            "never two probes in flight"
        );
        assert!(s.finish(4200, 7, 1000, 0, 0));
        assert_eq!(s.next_due_ms, 4200);
    }

    #[test]
    fn a_dead_workers_lease_is_taken_over_within_two_intervals() {
        let mut s = Schedule {
            next_due_ms: 0,
            ..Schedule::default()
        };
        assert!(s.claim(0, 0, 1, 1000, 1000));
        assert!(!s.claim(1999, 0, 2, 1000, 1000));
        assert!(s.claim(2000, 0, 2, 1000, 1000));
        // The late finisher does not overwrite the new owner's schedule.
        assert!(!s.finish(2100, 1, 1000, 0, 0));
        assert_eq!(s.owner_pid, 2);
    }

    #[test]
    fn jitter_adds_at_most_its_value() {
        for r in [0, 1, 99, 100, 12345] {
            let mut s = Schedule {
                next_due_ms: 1000,
                ..Schedule::default()
            };
            assert!(s.claim(1000, 0, 1, 1000, 100));
            assert!(s.finish(1001, 1, 1000, 100, r));
            assert!((2000..=2100).contains(&s.next_due_ms));
        }
    }

    #[test]
    fn wake_and_tick_are_bounded() {
        let s = Schedule {
            next_due_ms: 5000,
            ..Schedule::default()
        };
        assert_eq!(s.wake_in(1000), 4000);
        assert_eq!(tick_ms(Some(s.wake_in(1000))), MAX_TICK_MS);
        assert_eq!(tick_ms(Some(0)), 1);
        assert_eq!(tick_ms(None), MAX_TICK_MS);
    }

    #[test]
    fn a_batch_claims_probes_due_soon_and_keeps_their_cadence() {
        let mut s = Schedule {
            next_due_ms: 1005,
            ..Schedule::default()
        };
        assert!(!s.claim(1000, 4, 1, 200, 100), "due later than the batch");
        assert!(s.claim(1000, 5, 1, 200, 100));
        assert!(s.finish(1001, 1, 200, 0, 0));
        assert_eq!(
            s.next_due_ms, 1205,
            "the next one is due an interval after the due time"
        );
        assert_eq!(batch_ms(200), 10);
        assert_eq!(batch_ms(100), 5);
        assert_eq!(batch_ms(10), 0);
        assert_eq!(batch_ms(3_600_000), 10);
    }
}
