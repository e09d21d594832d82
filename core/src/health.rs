//! The per-peer rise/fall state machine and the counters kept beside it.

use crate::outcome::{Failure, Outcome};

/// A change of verdict caused by one probe result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The peer reached `fall` consecutive failures while up.
    Down,
    /// The peer reached `rise` consecutive successes while down.
    Up,
}

/// Health of one peer. Plain data: it lives in shared memory as is, so every field is a
/// fixed-size integer and "no value" is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PeerHealth {
    /// 1 when the peer is considered up, 0 when down.
    pub up: u8,
    /// The last probe's failure (`Failure` discriminant), 0 when it passed.
    pub last_error: u8,
    /// The last probe's HTTP status, 0 when it got none.
    pub last_status: u16,
    /// Duration of the last probe in microseconds.
    pub last_duration_us: u32,
    /// Consecutive successes.
    pub rise_count: u32,
    /// Consecutive failures.
    pub fall_count: u32,
    /// Number of down-to-up transitions.
    pub transitions_up: u32,
    /// Number of up-to-down transitions.
    pub transitions_down: u32,
    /// Failed probes by kind, indexed by `Failure::index`.
    pub failures: [u32; Failure::ALL.len()],
    /// The last probe's detail code (`Outcome::detail`), 0 when it passed.
    pub last_detail: u32,
    /// Probes completed.
    pub checks: u64,
    /// Unix time of the last probe's end in milliseconds, 0 when never probed.
    pub last_check_ms: u64,
    /// Unix time of the last transition in milliseconds, 0 when none yet.
    pub last_change_ms: u64,
}

impl PeerHealth {
    /// A fresh peer, up or down as `default_down` says.
    pub fn new(up: bool) -> PeerHealth {
        PeerHealth {
            up: up as u8,
            ..PeerHealth::default()
        }
    }

    pub fn is_up(&self) -> bool {
        self.up != 0
    }

    /// Total failed probes.
    pub fn failures_total(&self) -> u64 {
        self.failures.iter().map(|&n| u64::from(n)).sum()
    }

    pub fn last_error(&self) -> Option<Failure> {
        Failure::from_u8(self.last_error)
    }

    pub fn last_status(&self) -> Option<u16> {
        (self.last_status != 0).then_some(self.last_status)
    }

    /// Records one probe result that ended at `now_ms` (Unix milliseconds) and returns the
    /// transition it causes, if any. `rise` and `fall` are at least 1.
    pub fn record(
        &mut self,
        outcome: Outcome,
        now_ms: u64,
        duration_us: u32,
        rise: u32,
        fall: u32,
    ) -> Option<Transition> {
        self.checks = self.checks.wrapping_add(1);
        self.last_check_ms = now_ms;
        self.last_duration_us = duration_us;
        self.last_status = outcome.status.unwrap_or(0);

        match outcome.failure {
            Some(failure) => {
                let slot = &mut self.failures[failure.index()];
                *slot = slot.wrapping_add(1);
                self.last_error = failure as u8;
                self.last_detail = outcome.detail;
                self.rise_count = 0;
                self.fall_count = self.fall_count.saturating_add(1);
                if self.is_up() && self.fall_count >= fall {
                    self.up = 0;
                    self.transitions_down = self.transitions_down.wrapping_add(1);
                    self.last_change_ms = now_ms;
                    return Some(Transition::Down);
                }
            }
            None => {
                self.last_error = 0;
                self.last_detail = 0;
                self.fall_count = 0;
                self.rise_count = self.rise_count.saturating_add(1);
                if !self.is_up() && self.rise_count >= rise {
                    self.up = 1;
                    self.transitions_up = self.transitions_up.wrapping_add(1);
                    self.last_change_ms = now_ms;
                    return Some(Transition::Up);
                }
            }
        }
        None
    }
}

impl PeerHealth {
    /// Takes an up peer down because proxied requests failed (passive checks) at `now_ms`
    /// (Unix milliseconds): it then needs `rise` good probes to come back, as after `fall`
    /// failed ones. `None` when it was down already.
    pub fn eject(&mut self, now_ms: u64) -> Option<Transition> {
        if !self.is_up() {
            return None;
        }
        self.up = 0;
        self.last_error = Failure::Passive as u8;
        self.last_detail = 0;
        self.last_status = 0;
        self.rise_count = 0;
        self.transitions_down = self.transitions_down.wrapping_add(1);
        self.last_change_ms = now_ms;
        Some(Transition::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome {
        failure: None,
        status: Some(200),
        detail: 0,
    };
    const REFUSED: Outcome = Outcome {
        failure: Some(Failure::Refused),
        status: None,
        detail: 0,
    };
    const BAD: Outcome = Outcome {
        failure: Some(Failure::BadStatus),
        status: Some(500),
        detail: 0,
    };

    fn run(h: &mut PeerHealth, seq: &[Outcome], rise: u32, fall: u32) -> Vec<Option<Transition>> {
        seq.iter()
            .enumerate()
            .map(|(i, &o)| h.record(o, 1000 + i as u64, 5, rise, fall))
            .collect()
    }

    #[test]
    fn an_ejected_peer_needs_rise_good_probes_to_come_back() {
        let mut h = PeerHealth::new(true);
        run(&mut h, &[OK, OK], 2, 3);
        assert_eq!(h.eject(5_000), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.last_error(), Some(Failure::Passive));
        assert_eq!((h.transitions_down, h.last_change_ms), (1, 5_000));
        assert_eq!(h.failures_total(), 0, "no probe failed");
        assert_eq!(h.eject(6_000), None, "down already");
        assert_eq!(
            run(&mut h, &[OK, OK], 2, 3),
            vec![None, Some(Transition::Up)]
        );
        assert_eq!(h.last_error(), None);
    }

    #[test]
    fn up_peer_goes_down_after_fall_consecutive_failures() {
        let mut h = PeerHealth::new(true);
        let t = run(&mut h, &[REFUSED, REFUSED, REFUSED], 2, 3);
        assert_eq!(t, vec![None, None, Some(Transition::Down)]);
        assert!(!h.is_up());
        assert_eq!(h.fall_count, 3);
        assert_eq!(h.last_change_ms, 1002);
        assert_eq!(h.transitions_down, 1);
        assert_eq!(h.last_error(), Some(Failure::Refused));
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = PeerHealth::new(true);
        let t = run(&mut h, &[REFUSED, REFUSED, OK, REFUSED, REFUSED], 2, 3);
        assert!(t.iter().all(Option::is_none));
        assert!(h.is_up());
        assert_eq!(h.fall_count, 2);
        assert_eq!(h.failures_total(), 4);
        assert_eq!(h.checks, 5);
    }

    #[test]
    fn down_peer_comes_back_after_rise_successes() {
        let mut h = PeerHealth::new(false);
        let t = run(&mut h, &[OK, BAD, OK, OK], 2, 3);
        assert_eq!(t, vec![None, None, None, Some(Transition::Up)]);
        assert!(h.is_up());
        assert_eq!(h.rise_count, 2);
        assert_eq!(h.last_error(), None);
        assert_eq!(h.last_status(), Some(200));
        assert_eq!(h.failures[Failure::BadStatus.index()], 1);
    }

    #[test]
    fn transitions_happen_once_and_counts_keep_growing() {
        let mut h = PeerHealth::new(true);
        let t = run(&mut h, &[REFUSED; 6], 1, 1);
        assert_eq!(t[0], Some(Transition::Down));
        assert!(t[1..].iter().all(Option::is_none));
        assert_eq!(h.fall_count, 6);
        let t = run(&mut h, &[OK; 3], 1, 1);
        assert_eq!(t, vec![Some(Transition::Up), None, None]);
        assert_eq!(h.rise_count, 3);
        assert_eq!((h.transitions_up, h.transitions_down), (1, 1));
    }

    #[test]
    fn fall_and_rise_of_one_flip_on_every_change() {
        let mut h = PeerHealth::new(true);
        let t = run(&mut h, &[BAD, OK, BAD, OK], 1, 1);
        assert_eq!(
            t,
            vec![
                Some(Transition::Down),
                Some(Transition::Up),
                Some(Transition::Down),
                Some(Transition::Up)
            ]
        );
        assert_eq!(h.last_status(), Some(200));
    }

    #[test]
    fn the_detail_of_the_last_failure_is_kept_until_a_probe_passes() {
        let mut h = PeerHealth::new(true);
        h.record(
            Outcome::failed_with(Failure::Mismatch, Some(200), 2),
            1,
            5,
            2,
            3,
        );
        assert_eq!(
            (h.last_error(), h.last_detail),
            (Some(Failure::Mismatch), 2)
        );
        h.record(REFUSED, 2, 5, 2, 3);
        assert_eq!((h.last_error(), h.last_detail), (Some(Failure::Refused), 0));
        h.record(
            Outcome::failed_with(Failure::TlsVerify, None, 10),
            3,
            5,
            2,
            3,
        );
        h.record(OK, 4, 5, 2, 3);
        assert_eq!((h.last_error(), h.last_detail), (None, 0));
        assert_eq!(h.failures[Failure::TlsVerify.index()], 1);
    }

    #[test]
    fn a_failure_without_status_clears_the_last_status() {
        let mut h = PeerHealth::new(true);
        run(&mut h, &[OK, REFUSED], 2, 3);
        assert_eq!(h.last_status(), None);
        assert_eq!(h.last_duration_us, 5);
    }
}
