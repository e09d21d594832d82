//! A fixed-bucket histogram of probe durations, plain data so it can live in shared memory.

/// Upper bounds of the buckets in microseconds: 1 ms to 10 s, suited to probes.
pub const BUCKETS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Counts per bucket (not cumulative; the last one is `+Inf`), their number and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Histogram {
    pub counts: [u64; BUCKETS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    /// The index in `counts` of the bucket that holds `us`.
    pub fn bucket_of(us: u64) -> usize {
        BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(BUCKETS_US.len())
    }

    pub fn observe(&mut self, us: u64) {
        let i = Self::bucket_of(us);
        self.counts[i] = self.counts[i].wrapping_add(1);
        self.count = self.count.wrapping_add(1);
        self.sum_us = self.sum_us.wrapping_add(us);
    }

    /// Cumulative counts for each bound of `BUCKETS_US`, then `+Inf` (== `count`).
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |acc, &c| {
            *acc = acc.wrapping_add(c);
            Some(*acc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        for us in [0, 1_000, 1_001, 9_999_999, 10_000_000, 10_000_001] {
            h.observe(us);
        }
        let cum: Vec<u64> = h.cumulative().collect();
        assert_eq!(cum.len(), BUCKETS_US.len() + 1);
        assert_eq!(cum[0], 2); // 0 and 1000 are <= 1 ms
        assert_eq!(cum[1], 3);
        assert_eq!(cum[BUCKETS_US.len() - 1], 5);
        assert_eq!(*cum.last().unwrap(), 6);
        assert_eq!(h.count, 6);
        assert_eq!(
            h.sum_us,
            1_000 + 1_001 + 9_999_999 + 10_000_000 + 10_000_001
        );
    }
}
