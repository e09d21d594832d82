//! Keeping etcd followed: the backoff between attempts (exponential with jitter, capped at
//! 5 s), the rotation over the endpoints, the lease that lets one worker at a time hold the
//! watch, and the connected/disconnected state whose changes are logged once per outage.

/// The first retry waits about this long.
pub const BACKOFF_BASE_MS: u64 = 100;
/// No retry waits longer.
pub const BACKOFF_CAP_MS: u64 = 5000;

/// How long to wait before attempt number `failures + 1` (`failures` >= 1 in a row):
/// exponential from `BACKOFF_BASE_MS`, capped at `BACKOFF_CAP_MS`, the upper half jittered by
/// `random`.
pub fn backoff_ms(failures: u32, random: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1 << exp).min(BACKOFF_CAP_MS);
    let half = ceiling / 2;
    half + random % (ceiling - half + 1)
}

/// The endpoint after `current` of `n`.
pub fn next_endpoint(current: usize, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (current + 1) % n
    }
}

/// How long a worker holds the watch without renewing it; another takes over after that.
pub const LEASE_MS: u64 = 1500;
/// How often the holder renews the lease (and others look whether it ran out).
pub const LEASE_RENEW_MS: u64 = 500;

/// What a worker does about the watch lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease: renewed until `now + LEASE_MS`.
    Hold,
    /// It takes the lease over (free, expired, or its holder is gone).
    Take,
    /// Another worker holds it.
    Leave,
}

/// Decides for worker `me` at `now` given the lease's holder (0: none) and its end.
pub fn lease_step(holder: i32, until_ms: u64, me: i32, now: u64) -> LeaseStep {
    if holder == me && now < until_ms {
        LeaseStep::Hold
    } else if holder == 0 || now >= until_ms {
        LeaseStep::Take
    } else {
        LeaseStep::Leave
    }
}

/// The link to etcd as the zone keeps it.
pub const LINK_UNKNOWN: u8 = 0;
pub const LINK_UP: u8 = 1;
pub const LINK_DOWN: u8 = 2;

/// What to log when the link goes from `before` to `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLog {
    Nothing,
    /// An outage starts: one `[error]` line.
    OutageStarts,
    /// It ends: one `[notice]` line.
    OutageEnds,
}

pub fn link_log(before: u8, after: u8) -> LinkLog {
    match (before, after) {
        (LINK_UP | LINK_UNKNOWN, LINK_DOWN) => LinkLog::OutageStarts,
        (LINK_DOWN, LINK_UP) => LinkLog::OutageEnds,
        _ => LinkLog::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        assert_eq!(backoff_ms(1, 0), 50);
        assert_eq!(backoff_ms(1, 50), 100);
        assert_eq!(backoff_ms(2, 0), 100);
        assert_eq!(backoff_ms(3, 0), 200);
        for f in [7, 8, 30, u32::MAX] {
            for r in [0, 1, 2500, u64::MAX] {
                let b = backoff_ms(f, r);
                assert!((2500..=5000).contains(&b), "{f} {r} {b}");
            }
        }
        let spread: std::collections::HashSet<u64> = (0..100).map(|r| backoff_ms(4, r)).collect();
        assert!(spread.len() > 50);
    }

    #[test]
    fn endpoints_rotate() {
        assert_eq!(next_endpoint(0, 3), 1);
        assert_eq!(next_endpoint(2, 3), 0);
        assert_eq!(next_endpoint(0, 1), 0);
        assert_eq!(next_endpoint(0, 0), 0);
    }

    #[test]
    fn one_holder_at_a_time() {
        assert_eq!(lease_step(0, 0, 7, 100), LeaseStep::Take);
        assert_eq!(lease_step(7, 200, 7, 100), LeaseStep::Hold);
        assert_eq!(lease_step(8, 200, 7, 100), LeaseStep::Leave);
        assert_eq!(lease_step(8, 200, 7, 200), LeaseStep::Take);
        // A holder that was held up past its lease takes it anew (others may have too).
        assert_eq!(lease_step(7, 200, 7, 300), LeaseStep::Take);
    }

    #[test]
    fn one_line_per_outage() {
        assert_eq!(link_log(LINK_UNKNOWN, LINK_UP), LinkLog::Nothing);
        assert_eq!(link_log(LINK_UNKNOWN, LINK_DOWN), LinkLog::OutageStarts);
        assert_eq!(link_log(LINK_UP, LINK_DOWN), LinkLog::OutageStarts);
        assert_eq!(link_log(LINK_DOWN, LINK_DOWN), LinkLog::Nothing);
        assert_eq!(link_log(LINK_DOWN, LINK_UP), LinkLog::OutageEnds);
        assert_eq!(link_log(LINK_UP, LINK_UP), LinkLog::Nothing);
    }
}
