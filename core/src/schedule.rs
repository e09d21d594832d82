//! Who probes which peer when: the shared per-peer due time and lease, the interval to the
//! next probe, and each worker's queue of peers by due time with its cap on probes in flight.
//!
//! Every worker keeps its own queue of the peers it may probe; a worker claims a due peer under
//! the zone lock, so exactly one probe per peer runs per interval whatever the number of
//! workers. A claim is a lease: if the worker dies mid-probe, the lease runs out and another
//! worker takes the peer over. Times are monotonic milliseconds passed in by the caller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::config::CheckParams;
use crate::health::PeerHealth;

/// The longest a worker sleeps between scans, so verdicts and takeovers are never late.
pub const MAX_TICK_MS: u64 = 100;

/// How long past its due time a peer waits for the worker that keeps its idle connection
/// (`Schedule::prober`) before any worker may claim it.
pub const PROBER_GRACE_MS: u64 = MAX_TICK_MS;

/// The most probes a worker keeps in a TLS handshake at once. A handshake costs both sides an
/// ECDHE and a signature (about a millisecond of CPU on a small machine): an upstream of
/// 10,000 https peers would otherwise start 10,000 of them in its first interval, and the
/// worker's own CPU, not the peers, would make them time out. Past the cap, probes that need a
/// handshake wait their turn unclaimed (see `DueQueue::wait_for_handshake`), so another worker
/// may take them, and probes on kept connections go ahead.
pub const HANDSHAKES_MAX: usize = 32;

/// How late a probe's timeout may fire before the timeout says more about this worker than
/// about the peer: an event loop held up this long (a huge status page, a stopped process, a
/// saturated CPU) may have kept the peer's answer waiting, so such a timeout gives no verdict.
pub const LATE_TIMEOUT_MS: u64 = 250;

/// Whether a probe's timeout that fired `late_ms` after its time is the peer's failure (true)
/// or gives no verdict because this worker was held up (false).
pub fn timeout_is_verdict(late_ms: u64) -> bool {
    late_ms < LATE_TIMEOUT_MS
}

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
    /// 1 after a restart of checks: the next probe is due at once, and the one after it at a
    /// random point of an interval, so probes spread out again.
    pub respread: u8,
    /// The worker that keeps the peer's idle probe connection (`keepalive`), 0 when none: it
    /// alone may claim the peer until `PROBER_GRACE_MS` past the due time, so a peer's probes
    /// stay on the worker holding its connection while that worker lives.
    pub prober: i32,
}

/// The interval from the probe whose result `health` has just recorded to the next one:
/// `fast_interval` while the verdict is in doubt (up with a failure counted, or down with a
/// success counted), else `down_interval` while the peer is down, else `interval`. A fresh
/// peer is not in doubt.
pub fn next_interval_ms(params: &CheckParams, health: &PeerHealth) -> u64 {
    let in_doubt = if health.is_up() {
        health.fall_count > 0
    } else {
        health.rise_count > 0
    };
    if in_doubt {
        params.fast_interval_ms
    } else if health.is_up() {
        params.interval_ms
    } else {
        params.down_interval_ms
    }
}

/// How long a claim lasts: the probe ends within `timeout`, so a lease that outlives
/// `max(interval, timeout) + interval` belongs to a worker that is gone. With the usual
/// `timeout <= interval` that is two intervals. It uses the plain `interval` whatever the
/// interval in force: it outlasts the probe whatever `fast_interval`, and a worker that is gone
/// is taken over within two intervals even for a peer probed at a longer `down_interval`.
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

    /// True while worker `pid` holds the claim: its probe's result counts. False when the
    /// lease was taken over or the checks restarted meanwhile.
    pub fn owns(&self, pid: i32) -> bool {
        self.owner_pid == pid && self.busy_until_ms != 0
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
        if self.next_due_ms > now_ms.saturating_add(early_ms)
            || !self.is_idle(now_ms)
            || self.waits_for_prober(now_ms, pid)
        {
            return false;
        }
        self.busy_until_ms = now_ms
            .saturating_add(lease_ms(interval_ms, timeout_ms))
            .max(1);
        self.owner_pid = pid;
        true
    }

    /// Ends the probe worker `pid` ran and plans the next one: `interval_ms` (the one in force
    /// after its result, `next_interval_ms`) after the previous due time (so cadence does not
    /// drift), never before the probe ended, plus `random % (jitter + 1)`. Returns false,
    /// changing nothing, when the lease was taken over meanwhile (`owns`) and the result must
    /// be dropped.
    pub fn finish(
        &mut self,
        now_ms: u64,
        pid: i32,
        interval_ms: u64,
        jitter_ms: u64,
        random: u64,
    ) -> bool {
        if !self.owns(pid) {
            return false;
        }
        let jitter = if jitter_ms == 0 {
            0
        } else {
            random % (jitter_ms + 1)
        };
        self.next_due_ms = if self.respread != 0 {
            self.respread = 0;
            now_ms + random % interval_ms.max(1)
        } else {
            self.next_due_ms.saturating_add(interval_ms).max(now_ms) + jitter
        };
        self.busy_until_ms = 0;
        self.owner_pid = 0;
        true
    }

    /// Gives up the probe worker `pid` claimed without a verdict (it could not start for a
    /// local reason: no free connection, no descriptor, no source port) and plans a new try
    /// after `retry_ms`. Returns false when the lease was taken over meanwhile.
    pub fn release(&mut self, now_ms: u64, pid: i32, retry_ms: u64) -> bool {
        if !self.owns(pid) {
            return false;
        }
        self.next_due_ms = now_ms.saturating_add(retry_ms);
        self.busy_until_ms = 0;
        self.owner_pid = 0;
        true
    }

    /// Restarts the checks of a peer (an exclusion ended, this host became the HA master): its
    /// next probe is due at once, then probes spread out again. A probe in flight loses its
    /// lease: its result is dropped.
    pub fn restart(now_ms: u64) -> Schedule {
        Schedule {
            next_due_ms: now_ms,
            respread: 1,
            ..Schedule::default()
        }
    }

    /// True while the peer waits for another worker, its prober, to claim it.
    fn waits_for_prober(&self, now_ms: u64, pid: i32) -> bool {
        self.prober != 0
            && self.prober != pid
            && now_ms < self.next_due_ms.saturating_add(PROBER_GRACE_MS)
    }

    /// Records who keeps the peer's idle connection after a probe of worker `pid`: that
    /// worker when it kept one, nobody otherwise.
    pub fn keep_prober(&mut self, pid: i32, kept_connection: bool) {
        self.prober = if kept_connection { pid } else { 0 };
    }

    /// Milliseconds until worker `pid` should next look at this peer: its due time when idle
    /// (plus the grace of another worker that keeps its connection), the end of the lease
    /// when a probe is in flight (a takeover may be needed then).
    pub fn wake_in(&self, now_ms: u64, pid: i32) -> u64 {
        let at = if !self.is_idle(now_ms) {
            self.busy_until_ms
        } else if self.prober != 0 && self.prober != pid {
            self.next_due_ms.saturating_add(PROBER_GRACE_MS)
        } else {
            self.next_due_ms
        };
        at.saturating_sub(now_ms)
    }
}

/// How early a probe may start: a scan also claims the probes due within this much, so that
/// a worker wakes once per batch instead of once per probe (each wakeup costs a system call and
/// nginx's time update). A twentieth of the shortest interval (`fast_interval` and
/// `down_interval` included), at most 10 ms: probes start a
/// little early, never late, so detection is never slower, and cadence keeps to the due times.
pub fn batch_ms(shortest_interval_ms: u64) -> u64 {
    (shortest_interval_ms / 20).min(10)
}

/// How long a worker may sleep before its next scan, given the smallest `wake_in` of the
/// peers it looked at (`None` when there are none).
pub fn tick_ms(min_wake_in: Option<u64>) -> u64 {
    min_wake_in.unwrap_or(MAX_TICK_MS).clamp(1, MAX_TICK_MS)
}

/// When to re-arm a worker's timer that is armed for `armed_at` (`None`: not armed) so that it
/// fires by `want`: `Some(time)` to (re)arm it then, `None` to keep it. A timer only ever moves
/// earlier: a probe ending inside a scan may arm it for its own next due time, and the scan's
/// earlier wake time must then still win (nginx's `ngx_add_timer` alone would keep the later
/// timer when the two are within its 300 ms lazy delay).
pub fn rearm(armed_at: Option<u64>, want: u64) -> Option<u64> {
    match armed_at {
        Some(at) if at <= want => None,
        _ => Some(want),
    }
}

/// `DueQueue::due` of a slot waiting for a handshake place.
const WAITING: u64 = u64::MAX - 1;

/// One worker's queue of peer slots by the time it next looks at them, and its probes in
/// flight. Fair by due time: when the cap is reached, the slot that has waited longest gets the
/// next free place, whatever its upstream. Each operation is O(log P).
///
/// A slot's time here may be early (another worker probed it meanwhile): the claim in the
/// shared schedule then fails and the worker puts the slot back at the shared due time.
///
/// Probes that need a TLS handshake have a second cap (`HANDSHAKES_MAX`): a due slot that
/// needs one while the cap is reached waits in a line of its own, in the order it became due,
/// and is the first served when a handshake place frees up.
pub struct DueQueue {
    /// (due, slot); an entry is current only while `due[slot]` equals its time.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// The current due time of each slot; `u64::MAX` when not queued (not probed by this
    /// worker, or in flight), `WAITING` while it waits for a handshake place.
    due: Vec<u64>,
    in_flight: usize,
    cap: usize,
    /// Slots waiting for a handshake place, first come first served; an entry is current only
    /// while `due[slot]` is `WAITING`.
    waiting: VecDeque<u32>,
    handshakes: usize,
}

impl DueQueue {
    /// A queue for `slots` slots, none queued, with at most `cap` (at least 1) probes in flight.
    pub fn new(slots: usize, cap: usize) -> DueQueue {
        DueQueue {
            heap: BinaryHeap::new(),
            due: vec![u64::MAX; slots],
            in_flight: 0,
            cap: cap.max(1),
            waiting: VecDeque::new(),
            handshakes: 0,
        }
    }

    /// Queues `slot` for `at` (`None`: not probed by this worker).
    pub fn set(&mut self, slot: usize, at: Option<u64>) {
        let Some(due) = self.due.get_mut(slot) else {
            return;
        };
        let at = at.unwrap_or(u64::MAX);
        if *due == at {
            return;
        }
        *due = at;
        if at != u64::MAX {
            self.heap.push(Reverse((at, slot as u32)));
            if self.heap.len() > 2 * self.due.len() + 64 {
                self.compact();
            }
        }
    }

    /// Drops entries that are no longer current, so the heap and the waiting line stay within
    /// O(P).
    fn compact(&mut self) {
        let due = &self.due;
        self.heap
            .retain(|Reverse((at, slot))| due.get(*slot as usize) == Some(at));
        // A slot that waited, was served and waits again has two entries: keep the first.
        let mut seen = vec![false; due.len()];
        self.waiting.retain(|&slot| {
            let slot = slot as usize;
            due.get(slot) == Some(&WAITING) && !core::mem::replace(&mut seen[slot], true)
        });
    }

    /// Puts `slot`, just taken by `pop_due`, in the line for a handshake place (`may_handshake`
    /// said no). It stays unclaimed meanwhile: another worker may probe it.
    pub fn wait_for_handshake(&mut self, slot: usize) {
        let Some(due) = self.due.get_mut(slot) else {
            return;
        };
        *due = WAITING;
        self.waiting.push_back(slot as u32);
        if self.waiting.len() > 2 * self.due.len() + 64 {
            self.compact();
        }
    }

    /// True while a probe that needs a TLS handshake may start.
    pub fn may_handshake(&self) -> bool {
        self.handshakes < HANDSHAKES_MAX
    }

    /// A probe that needs a handshake started; `handshake_ended` when it ends.
    pub fn handshake_started(&mut self) {
        self.handshakes += 1;
    }

    pub fn handshake_ended(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }

    /// The first current slot in the handshake line, left in it.
    fn first_waiting(&mut self) -> Option<usize> {
        while let Some(&slot) = self.waiting.front() {
            if self.due[slot as usize] == WAITING {
                return Some(slot as usize);
            }
            self.waiting.pop_front();
        }
        None
    }

    /// True when the cap on probes in flight is reached.
    pub fn saturated(&self) -> bool {
        self.in_flight >= self.cap
    }

    /// Takes the slot due earliest if it is due by `horizon` and a probe may start (a slot
    /// waiting for a handshake place first, when there is one); the caller then claims it and
    /// calls `started`, or puts it back with `set` or `wait_for_handshake`.
    pub fn pop_due(&mut self, horizon: u64) -> Option<usize> {
        if self.saturated() {
            return None;
        }
        if self.may_handshake() {
            if let Some(slot) = self.first_waiting() {
                self.waiting.pop_front();
                self.due[slot] = u64::MAX;
                return Some(slot);
            }
        }
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            let slot = slot as usize;
            if self.due[slot] != at {
                self.heap.pop();
                continue;
            }
            if at > horizon {
                return None;
            }
            self.heap.pop();
            self.due[slot] = u64::MAX;
            return Some(slot);
        }
        None
    }

    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    pub fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When the next probe may start: the earliest due time (0 when a slot waits for a
    /// handshake place that is free), or `None` when nothing is queued or the cap is reached (a
    /// probe that ends wakes the worker then).
    pub fn next_start(&mut self) -> Option<u64> {
        if self.saturated() {
            return None;
        }
        if self.may_handshake() && self.first_waiting().is_some() {
            return Some(0);
        }
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if self.due[slot as usize] == at {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, Outcome};

    const PASSED: Outcome = Outcome {
        failure: None,
        status: Some(200),
        detail: 0,
    };
    const REFUSED: Outcome = Outcome {
        failure: Some(Failure::Refused),
        status: None,
        detail: 0,
    };

    /// `upstream_healthcheck interval=2s fast_interval=100ms down_interval=10s fall=3 rise=2`
    fn fast_and_down() -> CheckParams {
        CheckParams {
            interval_ms: 2000,
            fast_interval_ms: 100,
            down_interval_ms: 10_000,
            fall: 3,
            rise: 2,
            ..CheckParams::default()
        }
    }

    /// Runs one probe at each due time from 0 on, ending 5 ms after it starts, as the worker
    /// does: claim, record the result, plan the next one with the interval then in force.
    /// Returns when each probe ran and whether the peer was up after it.
    fn probes(p: &CheckParams, health: &mut PeerHealth, results: &[Outcome]) -> Vec<(u64, bool)> {
        let mut s = Schedule::default();
        results
            .iter()
            .map(|&outcome| {
                let at = s.next_due_ms;
                assert!(s.claim(at, 0, 1, p.interval_ms, p.timeout_ms));
                assert!(s.owns(1));
                health.record(outcome, at + 5, 5, p.rise, p.fall);
                let interval = next_interval_ms(p, health);
                assert!(s.finish(at + 5, 1, interval, p.jitter_ms, 0));
                (at, health.is_up())
            })
            .collect()
    }

    #[test]
    fn with_fast_interval_a_dead_peer_is_down_200ms_after_its_first_failed_probe() {
        let seq = [PASSED, REFUSED, REFUSED, REFUSED];
        let fast = probes(&fast_and_down(), &mut PeerHealth::new(true), &seq);
        assert_eq!(
            fast,
            vec![(0, true), (2000, true), (2100, true), (2200, false)]
        );
        let plain = CheckParams {
            interval_ms: 2000,
            fall: 3,
            ..CheckParams::default()
        };
        let slow = probes(&plain, &mut PeerHealth::new(true), &seq);
        assert_eq!(
            slow,
            vec![(0, true), (2000, true), (4000, true), (6000, false)],
            "without it, 4 s"
        );
    }

    #[test]
    fn a_down_peer_is_probed_every_down_interval_and_comes_back_at_fast_interval() {
        let seq = [
            REFUSED, REFUSED, REFUSED, // down
            REFUSED, REFUSED, // still down, not in doubt
            PASSED, PASSED, // in doubt, then up
            PASSED,
        ];
        let times: Vec<u64> = probes(&fast_and_down(), &mut PeerHealth::new(true), &seq)
            .into_iter()
            .map(|(at, _)| at)
            .collect();
        assert_eq!(
            times,
            vec![0, 100, 200, 10_200, 20_200, 30_200, 30_300, 32_300]
        );
    }

    #[test]
    fn a_failure_that_a_pass_clears_puts_the_peer_back_on_its_interval() {
        let seq = [REFUSED, PASSED, PASSED];
        let times: Vec<(u64, bool)> = probes(&fast_and_down(), &mut PeerHealth::new(true), &seq);
        assert_eq!(times, vec![(0, true), (100, true), (2100, true)]);
    }

    #[test]
    fn a_fresh_peer_is_not_in_doubt() {
        let p = fast_and_down();
        assert_eq!(next_interval_ms(&p, &PeerHealth::new(true)), 2000);
        assert_eq!(
            next_interval_ms(&p, &PeerHealth::new(false)),
            10_000,
            "default_down=on: down, with no success counted yet"
        );
    }

    #[test]
    fn in_doubt_wins_over_down() {
        let p = fast_and_down();
        let mut h = PeerHealth::new(false);
        h.record(PASSED, 1, 5, p.rise, p.fall);
        assert!(!h.is_up());
        assert_eq!(next_interval_ms(&p, &h), 100);
    }

    #[test]
    fn without_them_every_probe_is_an_interval_apart() {
        let seq = [PASSED, REFUSED, REFUSED, REFUSED, REFUSED, PASSED, PASSED];
        let times: Vec<u64> = probes(&CheckParams::default(), &mut PeerHealth::new(true), &seq)
            .into_iter()
            .map(|(at, _)| at)
            .collect();
        assert_eq!(times, (0..7).map(|i| i * 2000).collect::<Vec<u64>>());
    }

    #[test]
    fn a_timer_only_moves_earlier() {
        assert_eq!(rearm(None, 500), Some(500));
        assert_eq!(rearm(Some(400), 500), None, "an earlier timer is kept");
        assert_eq!(rearm(Some(500), 500), None);
        assert_eq!(
            rearm(Some(700), 505),
            Some(505),
            "a later one moves, even within nginx's lazy delay"
        );
    }

    #[test]
    fn a_full_queue_serves_the_longest_waiting_slot_first_whatever_its_upstream() {
        let mut q = DueQueue::new(10, 2);
        // Slots 0..5 (the first upstream) were due late; slot 9 (the last upstream) earliest.
        for slot in 0..5 {
            q.set(slot, Some(100 + slot as u64));
        }
        q.set(9, Some(50));
        assert_eq!(q.pop_due(1000), Some(9));
        q.started();
        assert_eq!(q.pop_due(1000), Some(0));
        q.started();
        assert!(q.saturated());
        assert_eq!(q.pop_due(1000), None, "no start while saturated");
        assert_eq!(q.next_start(), None, "no wakeup while saturated");
        q.ended();
        assert_eq!(q.next_start(), Some(101));
        assert_eq!(q.pop_due(1000), Some(1));
    }

    #[test]
    fn a_queue_skips_superseded_times_and_stays_bounded() {
        let mut q = DueQueue::new(3, 8);
        for t in 0..1000u64 {
            q.set(1, Some(10_000 - t));
            q.set(2, Some(20_000 + t));
        }
        assert!(q.heap.len() <= 2 * 3 + 64 + 1);
        q.set(0, None);
        assert_eq!(q.pop_due(9_000), None, "slot 1 is due at 9001");
        assert_eq!(q.pop_due(9_001), Some(1));
        assert_eq!(q.pop_due(u64::MAX - 1), Some(2));
        assert_eq!(q.pop_due(u64::MAX - 1), None);
        q.set(2, Some(5));
        q.set(2, None);
        assert_eq!(q.pop_due(100), None, "a slot taken out is not served");
    }

    #[test]
    fn probes_past_the_handshake_cap_wait_in_line_while_kept_connections_go_ahead() {
        let mut q = DueQueue::new(HANDSHAKES_MAX + 10, 1000);
        for slot in 0..HANDSHAKES_MAX + 10 {
            q.set(slot, Some(slot as u64));
        }
        // The worker starts handshakes until the cap, then puts the next two in line.
        for slot in 0..HANDSHAKES_MAX {
            assert!(q.may_handshake());
            assert_eq!(q.pop_due(1000), Some(slot));
            q.started();
            q.handshake_started();
        }
        assert!(!q.may_handshake());
        let (a, b) = (HANDSHAKES_MAX, HANDSHAKES_MAX + 1);
        assert_eq!(q.pop_due(1000), Some(a));
        q.wait_for_handshake(a);
        assert_eq!(q.pop_due(1000), Some(b));
        q.wait_for_handshake(b);
        // A slot with a kept connection needs no handshake: it starts at once.
        assert_eq!(q.pop_due(1000), Some(b + 1));
        q.started();
        assert_eq!(
            q.next_start(),
            Some(b as u64 + 2),
            "the line waits for a place"
        );
        // A handshake ends: the first in line is served before anything due later.
        q.ended();
        q.handshake_ended();
        assert_eq!(q.next_start(), Some(0), "wake at once");
        assert_eq!(q.pop_due(1000), Some(a));
        q.started();
        q.handshake_started();
        assert_eq!(
            q.pop_due(1000),
            Some(b + 2),
            "b waits: the cap is reached again"
        );
        q.wait_for_handshake(b + 2);
        // A slot taken out of the queue (its upstream excluded) leaves the line.
        q.set(b, None);
        q.ended();
        q.handshake_ended();
        assert_eq!(q.pop_due(1000), Some(b + 2));
        q.handshake_started();
        q.ended();
        q.handshake_ended();
        assert_eq!(q.pop_due(1000), Some(b + 3));
    }

    #[test]
    fn the_handshake_line_stays_bounded() {
        let mut q = DueQueue::new(2, 8);
        for _ in 0..HANDSHAKES_MAX {
            q.handshake_started();
        }
        for t in 0..1000u64 {
            q.set(0, Some(t));
            assert_eq!(q.pop_due(u64::MAX - 2), Some(0));
            q.wait_for_handshake(0);
        }
        assert!(q.waiting.len() <= 2 * 2 + 64 + 1);
        for _ in 0..HANDSHAKES_MAX {
            q.handshake_ended();
        }
        assert_eq!(q.pop_due(0), Some(0));
        assert_eq!(q.pop_due(u64::MAX - 2), None, "served once");
    }

    #[test]
    fn a_timeout_that_fires_late_is_this_workers_doing() {
        assert!(timeout_is_verdict(0));
        assert!(timeout_is_verdict(LATE_TIMEOUT_MS - 1));
        assert!(!timeout_is_verdict(LATE_TIMEOUT_MS));
        assert!(!timeout_is_verdict(5_000));
    }

    #[test]
    fn a_restart_probes_at_once_then_spreads_out() {
        let mut s = Schedule::restart(1000);
        assert!(
            !s.owns(7),
            "a probe in flight before the restart does not count"
        );
        assert!(s.is_due(1000));
        assert!(s.claim(1000, 0, 1, 2000, 500));
        assert!(s.finish(1010, 1, 2000, 0, 777));
        assert_eq!(s.next_due_ms, 1010 + 777);
        assert!(s.claim(1787, 0, 1, 2000, 500));
        assert!(s.finish(1790, 1, 2000, 0, 5));
        assert_eq!(s.next_due_ms, 3787, "then the usual cadence");
    }

    #[test]
    fn a_local_failure_gives_the_probe_back_without_a_verdict() {
        let mut s = Schedule {
            next_due_ms: 100,
            ..Schedule::default()
        };
        assert!(s.claim(100, 0, 1, 1000, 500));
        assert!(!s.release(150, 2, 200), "only the owner releases");
        assert!(s.release(150, 1, 200));
        assert_eq!(s.next_due_ms, 350);
        assert!(s.is_idle(150));
    }

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
        // The late finisher's result does not count, nor does it overwrite the new owner's
        // schedule.
        assert!(!s.owns(1) && s.owns(2));
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
        assert_eq!(s.wake_in(1000, 1), 4000);
        assert_eq!(tick_ms(Some(s.wake_in(1000, 1))), MAX_TICK_MS);
        assert_eq!(tick_ms(Some(0)), 1);
        assert_eq!(tick_ms(None), MAX_TICK_MS);
    }

    #[test]
    fn a_peer_whose_connection_a_worker_keeps_waits_for_that_worker_then_anyone() {
        let mut s = Schedule {
            next_due_ms: 1000,
            ..Schedule::default()
        };
        assert!(s.claim(1000, 0, 7, 1000, 500));
        assert!(s.finish(1010, 7, 1000, 0, 0));
        s.keep_prober(7, true);
        // Due at 2000: worker 8 waits out the grace, worker 7 claims at once.
        assert_eq!(s.wake_in(1500, 8), 500 + PROBER_GRACE_MS);
        assert_eq!(s.wake_in(1500, 7), 500);
        assert!(!s.claim(2000, 0, 8, 1000, 500));
        let mut kept = s;
        assert!(kept.claim(2000, 0, 7, 1000, 500));
        // Worker 7 is gone: worker 8 takes the peer over after the grace.
        assert!(s.claim(2000 + PROBER_GRACE_MS, 0, 8, 1000, 500));
        assert!(s.finish(2200, 8, 1000, 0, 0));
        s.keep_prober(8, false);
        assert_eq!(
            s.prober, 0,
            "nobody keeps a connection: every worker may claim"
        );
        assert!(s.claim(3000, 0, 9, 1000, 500));
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
