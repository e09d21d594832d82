//! Passive checks (`upstream_healthcheck_passive`): which proxied attempts count as failures,
//! when enough of them eject a peer, and for how long a peer without active checks stays out.
//!
//! The per-peer state lives in the shared zone and is updated with atomics on the request path;
//! only an ejection takes the zone lock (to record the change every worker applies).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::PassiveParams;

/// The longest an ejected peer without active checks stays down, however often it failed on
/// probation (unless `down_time` itself is longer).
pub const MAX_DOWN_TIME_MS: u64 = 5 * 60 * 1000;

/// Whether an attempt counts against its peer: what nginx counts as a failed try (connect
/// error, timeout, invalid header, a `proxy_next_upstream` status), except a timeout under
/// `timeouts=off`; and a response whose status is in `statuses=`.
pub fn counts_as_failure(
    p: &PassiveParams,
    status: u16,
    nginx_failed: bool,
    timed_out: bool,
) -> bool {
    if nginx_failed && (p.timeouts || !timed_out) {
        return true;
    }
    status != 0 && p.statuses.as_ref().is_some_and(|s| s.is_valid(status))
}

/// How long an ejected peer without active checks stays down: `down_time`, doubled for each
/// ejection in a row on probation, at most `MAX_DOWN_TIME_MS` (or `down_time` if longer).
pub fn down_time_ms(p: &PassiveParams, level: u32) -> u64 {
    let doubled = p.down_time_ms.saturating_mul(1u64 << level.min(32));
    doubled.min(MAX_DOWN_TIME_MS.max(p.down_time_ms))
}

/// The passive state of one peer, in the shared zone. The window is counted with atomics; the
/// ejection fields are written under the zone lock.
#[derive(Debug, Default)]
#[repr(C)]
pub struct PassiveState {
    /// When the current window began (monotonic ms), 0 before the first failure.
    window_start_ms: AtomicU64,
    /// Failures counted in the current window.
    fails: AtomicU32,
    /// Ejections in a row on probation (doubles the down time).
    level: AtomicU32,
    /// Without active checks: down until then (monotonic ms); 0 when not ejected.
    down_until_ms: AtomicU64,
    /// Without active checks: on probation until then, once back.
    probation_until_ms: AtomicU64,
    /// Ejections so far.
    ejections: AtomicU64,
    /// No refusal to eject is logged before then (monotonic ms).
    quiet_until_ms: AtomicU64,
}

/// What a failed attempt leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Counted; the peer stays.
    Counted,
    /// The peer must go: the window filled up (`on_probation` false), or it failed on
    /// probation.
    Eject { on_probation: bool },
}

impl PassiveState {
    /// Counts a failed attempt at `now_ms` (monotonic). The failure that fills a window asks
    /// for the ejection and starts the count over (requests still in flight when the peer
    /// goes, or a peer that may not go, fill a new window before asking again); so does any
    /// failure of a peer back on probation.
    pub fn fail(&self, now_ms: u64, p: &PassiveParams) -> Judgement {
        let probation = self.probation_until_ms.load(Ordering::Relaxed);
        if self.down_until_ms.load(Ordering::Relaxed) == 0 && now_ms < probation {
            return Judgement::Eject { on_probation: true };
        }
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let n = if start == 0 || now_ms.saturating_sub(start) >= p.window_ms {
            // A new window begins with this failure (another process may begin it at the same
            // time: one of them wins, the other's failure counts in it).
            match self.window_start_ms.compare_exchange(
                start,
                now_ms.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.fails.store(1, Ordering::Relaxed);
                    1
                }
                Err(_) => self.fails.fetch_add(1, Ordering::Relaxed) + 1,
            }
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n < p.fails {
            return Judgement::Counted;
        }
        self.fails.store(0, Ordering::Relaxed);
        self.window_start_ms.store(0, Ordering::Relaxed);
        Judgement::Eject {
            on_probation: false,
        }
    }

    /// Whether a refusal to eject (the last peer up) should be logged at `now_ms`: at most
    /// once per `window`.
    pub fn may_log_refusal(&self, now_ms: u64, p: &PassiveParams) -> bool {
        let next = self.quiet_until_ms.load(Ordering::Relaxed);
        now_ms >= next
            && self
                .quiet_until_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(p.window_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Ejects the peer at `now_ms` (the caller holds the zone lock and decided that it may
    /// go). With active checks the checks bring it back; without, it is down for the time
    /// this returns, then on probation for one `window`.
    pub fn eject(&self, now_ms: u64, p: &PassiveParams, active: bool, on_probation: bool) -> u64 {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        self.window_start_ms.store(0, Ordering::Relaxed);
        if active {
            return 0;
        }
        let level = if on_probation {
            self.level.load(Ordering::Relaxed).saturating_add(1)
        } else {
            0
        };
        self.level.store(level, Ordering::Relaxed);
        let down = down_time_ms(p, level);
        let until = now_ms.saturating_add(down).max(1);
        self.down_until_ms.store(until, Ordering::Relaxed);
        self.probation_until_ms
            .store(until.saturating_add(p.window_ms), Ordering::Relaxed);
        down
    }

    /// Brings the peer back on probation when its down time ran out by `now_ms` (the caller
    /// holds the zone lock); true when it did.
    pub fn expire(&self, now_ms: u64) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        if until == 0 || until > now_ms {
            return false;
        }
        self.down_until_ms.store(0, Ordering::Relaxed);
        true
    }

    /// Down by a passive ejection (without active checks), until `expire`.
    pub fn is_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) != 0
    }

    /// When the ejection ends (monotonic ms), 0 when not down.
    pub fn down_until_ms(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Back from an ejection and on probation at `now_ms`.
    pub fn on_probation(&self, now_ms: u64) -> bool {
        !self.is_down() && now_ms < self.probation_until_ms.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Takes over another zone's state of the same peer (a reload).
    pub fn copy_from(&self, old: &PassiveState) {
        let copy = |to: &AtomicU64, from: &AtomicU64| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        copy(&self.window_start_ms, &old.window_start_ms);
        copy(&self.down_until_ms, &old.down_until_ms);
        copy(&self.probation_until_ms, &old.probation_until_ms);
        copy(&self.ejections, &old.ejections);
        copy(&self.quiet_until_ms, &old.quiet_until_ms);
        self.fails
            .store(old.fails.load(Ordering::Relaxed), Ordering::Relaxed);
        self.level
            .store(old.level.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_passive;

    fn params(args: &str) -> PassiveParams {
        let args: Vec<&[u8]> = args.split(' ').map(str::as_bytes).collect();
        parse_passive(&args).unwrap()
    }

    #[test]
    fn what_counts_as_a_failure() {
        let p = params("fails=3");
        assert!(counts_as_failure(&p, 0, true, false), "connect error");
        assert!(counts_as_failure(&p, 0, true, true), "timeout");
        assert!(
            counts_as_failure(&p, 502, true, false),
            "proxy_next_upstream http_502"
        );
        assert!(
            !counts_as_failure(&p, 503, false, false),
            "a 503 nginx passes on"
        );
        let p = params("fails=3 statuses=500,502-504 timeouts=off");
        assert!(counts_as_failure(&p, 503, false, false));
        assert!(!counts_as_failure(&p, 501, false, false));
        assert!(!counts_as_failure(&p, 0, true, true), "timeouts=off");
        assert!(
            counts_as_failure(&p, 0, true, false),
            "connect errors still count"
        );
        let p = params("fails=1 statuses=5xx,!503");
        assert!(counts_as_failure(&p, 599, false, false));
        assert!(!counts_as_failure(&p, 503, false, false));
        assert!(!counts_as_failure(&p, 200, false, false));
    }

    #[test]
    fn fails_within_one_window_eject_and_start_the_count_over() {
        let p = params("fails=3 window=10s");
        let s = PassiveState::default();
        let eject = Judgement::Eject {
            on_probation: false,
        };
        assert_eq!(s.fail(1_000, &p), Judgement::Counted);
        assert_eq!(s.fail(2_000, &p), Judgement::Counted);
        assert_eq!(s.fail(10_999, &p), eject);
        // Requests in flight when it went: a new window, three more before asking again.
        assert_eq!(s.fail(10_999, &p), Judgement::Counted);
        assert_eq!(s.fail(11_000, &p), Judgement::Counted);
        assert_eq!(s.fail(11_001, &p), eject);
        // A window that ran out starts over.
        assert_eq!(s.fail(12_000, &p), Judgement::Counted);
        assert_eq!(s.fail(13_000, &p), Judgement::Counted);
        assert_eq!(
            s.fail(25_000, &p),
            Judgement::Counted,
            "new window from 25 s"
        );
        assert_eq!(s.fail(26_000, &p), Judgement::Counted);
        assert_eq!(s.fail(27_000, &p), eject);
    }

    #[test]
    fn a_refusal_to_eject_is_logged_once_per_window() {
        let p = params("fails=1 window=10s");
        let s = PassiveState::default();
        assert!(s.may_log_refusal(1_000, &p));
        assert!(!s.may_log_refusal(1_001, &p) && !s.may_log_refusal(10_999, &p));
        assert!(s.may_log_refusal(11_000, &p));
    }

    #[test]
    fn without_active_checks_a_peer_serves_its_time_then_probation_doubles_it() {
        let p = params("fails=2 window=10s down_time=10s");
        let s = PassiveState::default();
        assert_eq!(s.eject(1_000, &p, false, false), 10_000);
        assert!(s.is_down() && !s.expire(10_999) && s.expire(11_000));
        assert!(!s.is_down() && s.on_probation(11_000) && s.on_probation(20_999));
        // One failure on probation: straight back down, for twice as long.
        assert_eq!(s.fail(12_000, &p), Judgement::Eject { on_probation: true });
        assert_eq!(s.eject(12_000, &p, false, true), 20_000);
        assert!(s.expire(32_000));
        assert_eq!(s.eject(33_000, &p, false, true), 40_000);
        // Probation passed without a failure: the next ejection is a first one again.
        assert!(s.expire(73_000) && !s.on_probation(83_000));
        assert_eq!(s.fail(90_000, &p), Judgement::Counted);
        assert_eq!(
            s.fail(90_001, &p),
            Judgement::Eject {
                on_probation: false
            }
        );
        assert_eq!(s.eject(90_001, &p, false, false), 10_000);
        assert_eq!(s.ejections(), 4);
    }

    #[test]
    fn down_time_doubles_up_to_five_minutes() {
        let p = params("fails=1 down_time=10s");
        let times: Vec<u64> = (0..7).map(|l| down_time_ms(&p, l)).collect();
        assert_eq!(
            times,
            [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        assert_eq!(down_time_ms(&params("fails=1 down_time=10m"), 3), 600_000);
        assert_eq!(down_time_ms(&p, 200), 300_000);
    }

    #[test]
    fn with_active_checks_the_probe_decides_recovery() {
        let p = params("fails=1");
        let s = PassiveState::default();
        assert_eq!(s.eject(5, &p, true, false), 0);
        assert!(
            !s.is_down() && !s.on_probation(6),
            "the checks hold the verdict"
        );
        assert_eq!(s.ejections(), 1);
    }
}
