//! Slow start (`slow_start=T`): when a peer's ramp starts, how far along it is, and the weights
//! that give nginx's balancer that share. Plain arithmetic on times passed in.
//!
//! A peer comes back into service by its checks (a transition to up: the health's
//! `last_change_ms`, Unix time), or by the end of a manual down or a reload that added it (the
//! "in service since" mark kept in the slot's manual-down field, monotonic time; see
//! [`in_service_mark`]). A peer that is up when nginx starts fresh does not ramp: it had no
//! outage. Its share then grows linearly from [`FLOOR_PERMILLE`] of its full weight to all of it
//! over `T`.

use crate::policy::PeerFacts;

/// Where a ramp starts, in thousandths of the peer's full weight.
pub const FLOOR_PERMILLE: u64 = 100;

/// The steps of a peer's full weight a ramp can use: the weights of an upstream with slow start
/// are multiplied inside nginx so that its lightest peer weighs at least this much.
pub const RESOLUTION: i64 = 20;

/// The ramp's factor `elapsed_ms` into a ramp of `duration_ms`, in thousandths: 100 at the
/// start, growing linearly to 1000 at the end (and after it).
pub fn factor_permille(elapsed_ms: u64, duration_ms: u64) -> u64 {
    if duration_ms == 0 || elapsed_ms >= duration_ms {
        return 1000;
    }
    let grown = (1000 - FLOOR_PERMILLE) as u128 * elapsed_ms as u128 / duration_ms as u128;
    FLOOR_PERMILLE + grown as u64
}

/// The factor every configured weight of an upstream is multiplied by inside nginx, so that
/// the lightest peer's weight has [`RESOLUTION`] steps (1 when the weights already have them).
pub fn weight_scale(weights: impl IntoIterator<Item = i64>) -> i64 {
    let lightest = weights.into_iter().min().unwrap_or(RESOLUTION).max(1);
    (RESOLUTION + lightest - 1) / lightest
}

/// The weight nginx gets for a peer whose full (scaled) weight is `full` at `permille` of its
/// ramp: rounded, at least 1.
pub fn ramp_weight(full: i64, permille: u64) -> i64 {
    let w = (i128::from(full) * permille as i128 + 500) / 1000;
    (w as i64).clamp(1, full.max(1))
}

/// nginx's `effective_weight` after the weight moves from `old` to `new`: the balancer lowers it
/// after a failed attempt and raises it by one a pick up to the weight, so the difference it
/// keeps from the weight (a recent failure) is kept, within `0..=new`.
pub fn effective_after(effective: i64, old: i64, new: i64) -> i64 {
    effective.saturating_add(new - old).clamp(0, new.max(0))
}

/// A configured weight as the status pages show it from nginx's scaled one (`current_weight`
/// and `effective_weight` of an upstream with slow start): divided by the scale, rounded to the
/// nearest.
pub fn unscaled(value: i64, scale: i64) -> i64 {
    if scale <= 1 {
        return value;
    }
    let half = scale / 2;
    if value >= 0 {
        (value + half) / scale
    } else {
        (value - half) / scale
    }
}

/// The tag of an "in service since" mark in a slot's manual-down field. That field holds 0 (no
/// manual down), a monotonic expiry time, `u64::MAX` (no expiry) or, once a manual down ends or
/// a reload adds the peer, this tag with the monotonic time it happened (times stay far below
/// 2^62 ms).
const IN_SERVICE_TAG: u64 = 1 << 62;
const TAG_MASK: u64 = 3 << 62;

/// The manual-down field's value for a peer back in service at monotonic `now_ms`.
pub fn in_service_mark(now_ms: u64) -> u64 {
    IN_SERVICE_TAG | (now_ms & !TAG_MASK)
}

/// True when the manual-down field says the peer is forced down.
pub fn manual_down(field: u64) -> bool {
    field != 0 && field & TAG_MASK != IN_SERVICE_TAG
}

/// The end of a manual down (monotonic ms) that has one; `None` when not down or no expiry.
pub fn manual_expiry(field: u64) -> Option<u64> {
    (manual_down(field) && field != u64::MAX).then_some(field)
}

/// When the peer came back from a manual down or was added by a reload (monotonic ms).
pub fn in_service_since(field: u64) -> Option<u64> {
    (field & TAG_MASK == IN_SERVICE_TAG).then_some(field & !TAG_MASK)
}

/// How long ago (ms) the peer last came back into service: the later of its checks' last
/// transition, when that was to up (`last_change_unix_ms`, Unix time, 0 when none), and its "in
/// service since" mark (`since_ms`, monotonic). `None` when it never came back: up since nginx
/// started fresh.
pub fn back_ms_ago(
    up: bool,
    last_change_unix_ms: u64,
    now_unix_ms: u64,
    since_ms: Option<u64>,
    now_ms: u64,
) -> Option<u64> {
    let by_checks =
        (up && last_change_unix_ms != 0).then(|| now_unix_ms.saturating_sub(last_change_unix_ms));
    let by_mark = since_ms.map(|since| now_ms.saturating_sub(since));
    match (by_checks, by_mark) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How far into its ramp a peer is (ms), when it ramps: its upstream has `slow_start` of
/// `duration_ms` (0: off), the checks' verdict applies, the balancer may use it, and it came
/// back less than `duration_ms` ago.
pub fn ramp_elapsed(facts: &PeerFacts, back_ms_ago: Option<u64>, duration_ms: u64) -> Option<u64> {
    let serving = facts.verdict_applies() && !facts.down_for_balancer();
    back_ms_ago.filter(|&ago| serving && duration_ms > 0 && ago < duration_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> PeerFacts {
        PeerFacts {
            checked: true,
            healthy: true,
            ..PeerFacts::default()
        }
    }

    #[test]
    fn the_factor_grows_linearly_from_a_tenth_to_all() {
        assert_eq!(factor_permille(0, 10_000), 100);
        assert_eq!(factor_permille(5_000, 10_000), 550);
        assert_eq!(factor_permille(9_999, 10_000), 999);
        assert_eq!(factor_permille(10_000, 10_000), 1000);
        assert_eq!(factor_permille(60_000, 10_000), 1000, "after the ramp");
        assert_eq!(factor_permille(0, 0), 1000, "no slow start");
        let steps: Vec<u64> = (0..=10).map(|i| factor_permille(i * 500, 5_000)).collect();
        assert!(steps.windows(2).all(|w| w[1] - w[0] == 90), "{steps:?}");
    }

    #[test]
    fn weights_are_scaled_so_the_lightest_peer_has_twenty_steps() {
        assert_eq!(weight_scale([1, 1, 1]), 20);
        assert_eq!(weight_scale([3, 5]), 7, "3 x 7 = 21 steps");
        assert_eq!(weight_scale([20, 100]), 1, "already fine-grained");
        assert_eq!(weight_scale([50]), 1);
        assert_eq!(weight_scale([]), 1);
    }

    #[test]
    fn a_ramping_weight_is_the_factor_of_the_full_one_and_never_zero() {
        assert_eq!(ramp_weight(20, 100), 2, "a weight-1 peer starts at a tenth");
        assert_eq!(ramp_weight(20, 550), 11);
        assert_eq!(ramp_weight(20, 1000), 20);
        assert_eq!(ramp_weight(3, 100), 1, "never 0: that would starve it");
        assert_eq!(ramp_weight(100, 999), 100);
    }

    #[test]
    fn a_recent_failure_keeps_its_dent_in_the_effective_weight() {
        assert_eq!(effective_after(20, 20, 2), 2, "lowered with the weight");
        assert_eq!(effective_after(2, 2, 4), 4);
        assert_eq!(effective_after(0, 20, 2), 0, "a failed peer stays at 0");
        assert_eq!(
            effective_after(10, 20, 40),
            30,
            "a failure's deficit of 10 is kept"
        );
        assert_eq!(effective_after(1, 1, 20), 20, "scaling a fresh peer");
    }

    #[test]
    fn scaled_weights_are_shown_in_configured_units() {
        assert_eq!(unscaled(20, 20), 1);
        assert_eq!(unscaled(9, 20), 0);
        assert_eq!(unscaled(10, 20), 1);
        assert_eq!(unscaled(-30, 20), -2);
        assert_eq!(unscaled(7, 1), 7);
    }

    #[test]
    fn the_manual_down_field_also_keeps_when_a_peer_came_back() {
        assert!(!manual_down(0));
        assert!(manual_down(5_000) && manual_down(u64::MAX));
        assert_eq!(manual_expiry(5_000), Some(5_000));
        assert_eq!(manual_expiry(u64::MAX), None, "no expiry");
        let mark = in_service_mark(123_456);
        assert!(!manual_down(mark), "back in service is not down");
        assert_eq!(manual_expiry(mark), None);
        assert_eq!(in_service_since(mark), Some(123_456));
        assert_eq!(in_service_since(5_000), None);
        assert_eq!(in_service_since(u64::MAX), None);
        assert_eq!(in_service_since(0), None);
    }

    #[test]
    fn a_peer_comes_back_at_the_later_of_its_rise_and_its_release() {
        let now_unix = 1_800_000_000_000;
        // Up by its checks 3 s ago.
        assert_eq!(
            back_ms_ago(true, now_unix - 3_000, now_unix, None, 50_000),
            Some(3_000)
        );
        // The last change was to down: not back.
        assert_eq!(
            back_ms_ago(false, now_unix - 3_000, now_unix, None, 50_000),
            None
        );
        // Up since a fresh start: never came back.
        assert_eq!(back_ms_ago(true, 0, now_unix, None, 50_000), None);
        // Released from a manual down 1 s ago, up by checks long before.
        assert_eq!(
            back_ms_ago(true, now_unix - 600_000, now_unix, Some(49_000), 50_000),
            Some(1_000)
        );
        // Added by a reload 2 s ago.
        assert_eq!(
            back_ms_ago(true, 0, now_unix, Some(48_000), 50_000),
            Some(2_000)
        );
        // A wall clock set back does not underflow.
        assert_eq!(back_ms_ago(true, now_unix + 5, now_unix, None, 1), Some(0));
    }

    #[test]
    fn only_a_serving_peer_of_a_slow_start_upstream_ramps_and_only_for_t() {
        assert_eq!(ramp_elapsed(&serving(), Some(1_000), 5_000), Some(1_000));
        assert_eq!(ramp_elapsed(&serving(), Some(5_000), 5_000), None, "over");
        assert_eq!(
            ramp_elapsed(&serving(), None, 5_000),
            None,
            "never came back"
        );
        assert_eq!(
            ramp_elapsed(&serving(), Some(1_000), 0),
            None,
            "slow start off"
        );
        let down = PeerFacts {
            healthy: false,
            ..serving()
        };
        let manual = PeerFacts {
            manual_down: true,
            ..serving()
        };
        let excluded = PeerFacts {
            excluded: true,
            ..serving()
        };
        let standby = PeerFacts {
            standby: true,
            ..serving()
        };
        for facts in [down, manual, excluded, standby] {
            assert_eq!(ramp_elapsed(&facts, Some(1_000), 5_000), None, "{facts:?}");
        }
    }
}
