//! Per-peer counters of proxied traffic (`upstream_healthcheck_traffic`): what one attempt
//! adds, kept in shared memory with atomics so that the request path takes no lock.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{Histogram, BUCKETS_US};

/// One attempt of a proxied request on one peer, as the balancer's `free` sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// The status of the peer's response; 0 when none was read (connect error, timeout,
    /// invalid header).
    pub status: u16,
    /// nginx counts the attempt as failed (`NGX_PEER_FAILED`).
    pub failed: bool,
    /// From the connect to the end of the attempt.
    pub response_us: u64,
}

/// The response class of `status`: 0 for 1xx, ..., 4 for 5xx; `None` when there was no
/// response (or a status no class covers).
pub fn status_class(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| usize::from(status / 100 - 1))
}

/// The counters of one peer, in the shared zone. Every field only grows (wrapping at 2^64).
#[derive(Debug, Default)]
#[repr(C)]
pub struct TrafficCounters {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    failed_attempts: AtomicU64,
    response_buckets: [AtomicU64; BUCKETS_US.len() + 1],
    response_sum_us: AtomicU64,
}

impl TrafficCounters {
    /// Counts one attempt: relaxed atomic adds on this peer's counters, no lock. Readers may
    /// see one attempt's adds partly done: each counter is exact on its own.
    pub fn record(&self, a: Attempt) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(class) = status_class(a.status) {
            self.responses[class].fetch_add(1, Ordering::Relaxed);
        }
        if a.failed {
            self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        self.response_buckets[Histogram::bucket_of(a.response_us)].fetch_add(1, Ordering::Relaxed);
        self.response_sum_us
            .fetch_add(a.response_us, Ordering::Relaxed);
    }

    /// The counters as plain numbers.
    pub fn snapshot(&self) -> Traffic {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut response_times = Histogram::default();
        for (i, b) in self.response_buckets.iter().enumerate() {
            response_times.counts[i] = load(b);
        }
        response_times.count = response_times
            .counts
            .iter()
            .copied()
            .fold(0, u64::wrapping_add);
        response_times.sum_us = load(&self.response_sum_us);
        Traffic {
            requests: load(&self.requests),
            responses: self.responses.each_ref().map(load),
            failed_attempts: load(&self.failed_attempts),
            response_times,
        }
    }

    /// Sets the counters to `t` (a reload carries a peer's counters over).
    pub fn restore(&self, t: &Traffic) {
        let store = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        store(&self.requests, t.requests);
        for (a, &v) in self.responses.iter().zip(&t.responses) {
            store(a, v);
        }
        store(&self.failed_attempts, t.failed_attempts);
        for (a, &v) in self.response_buckets.iter().zip(&t.response_times.counts) {
            store(a, v);
        }
        store(&self.response_sum_us, t.response_times.sum_us);
    }
}

/// One peer's traffic as the status formats show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Attempts sent to the peer: every try of every request, failed or not.
    pub requests: u64,
    /// Responses by class, 1xx to 5xx.
    pub responses: [u64; 5],
    /// Attempts nginx counted as failed.
    pub failed_attempts: u64,
    /// Durations of the attempts.
    pub response_times: Histogram,
}

impl Traffic {
    /// The average duration of an attempt in milliseconds, 0 before the first.
    pub fn response_time_ms_avg(&self) -> f64 {
        match self.response_times.count {
            0 => 0.0,
            n => self.response_times.sum_us as f64 / n as f64 / 1000.0,
        }
    }
}

/// What a rate needs of a peer's traffic at one moment (one HTML page to the next).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficSample {
    /// Monotonic milliseconds.
    pub at_ms: u64,
    pub requests: u64,
    pub responses: u64,
    pub responses_5xx: u64,
}

impl Traffic {
    /// The sample of these counters taken at `at_ms`.
    pub fn sample(&self, at_ms: u64) -> TrafficSample {
        TrafficSample {
            at_ms,
            requests: self.requests,
            responses: self.responses.iter().copied().fold(0, u64::wrapping_add),
            responses_5xx: self.responses[4],
        }
    }
}

/// A peer's traffic between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficRate {
    /// Attempts per second, in thousandths.
    pub milli_requests_per_s: u64,
    /// The share of 5xx among the responses, in hundredths of a percent; `None` without
    /// responses in between.
    pub share_5xx_bp: Option<u64>,
}

/// The rate from `before` to `after`; `None` when no time passed or the counters went back
/// (a restart of nginx).
pub fn rate(before: TrafficSample, after: TrafficSample) -> Option<TrafficRate> {
    let ms = after.at_ms.checked_sub(before.at_ms).filter(|&ms| ms > 0)?;
    let requests = after.requests.checked_sub(before.requests)?;
    let responses = after.responses.checked_sub(before.responses)?;
    let errors = after.responses_5xx.checked_sub(before.responses_5xx)?;
    Some(TrafficRate {
        milli_requests_per_s: requests.saturating_mul(1_000_000) / ms,
        share_5xx_bp: (responses > 0).then(|| errors.saturating_mul(10_000) / responses),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(status: u16, failed: bool, ms: u64) -> Attempt {
        Attempt {
            status,
            failed,
            response_us: ms * 1000,
        }
    }

    #[test]
    fn every_attempt_is_a_request_and_lands_in_its_class() {
        let c = TrafficCounters::default();
        c.record(attempt(200, false, 2));
        c.record(attempt(204, false, 4));
        c.record(attempt(503, false, 30));
        // A real 502 that proxy_next_upstream treats as a failure: a response and a failure.
        c.record(attempt(502, true, 1));
        // A refused connect: no response, a failure.
        c.record(attempt(0, true, 0));
        let t = c.snapshot();
        assert_eq!(t.requests, 5);
        assert_eq!(t.responses, [0, 2, 0, 0, 2]);
        assert_eq!(t.failed_attempts, 2);
        assert_eq!(t.response_times.count, 5);
        assert_eq!(t.response_times.sum_us, 37_000);
        assert!((t.response_time_ms_avg() - 7.4).abs() < 1e-9);
        let cum: Vec<u64> = t.response_times.cumulative().collect();
        assert_eq!(cum[0], 2, "0 and 1 ms are within the first bucket");
    }

    #[test]
    fn statuses_outside_the_classes_count_as_no_response() {
        assert_eq!(status_class(0), None);
        assert_eq!(status_class(99), None);
        assert_eq!(status_class(100), Some(0));
        assert_eq!(status_class(599), Some(4));
        assert_eq!(status_class(600), None);
    }

    #[test]
    fn rates_come_from_two_samples() {
        let s = |at_ms, requests, responses, responses_5xx| TrafficSample {
            at_ms,
            requests,
            responses,
            responses_5xx,
        };
        assert_eq!(
            rate(s(1_000, 10, 10, 0), s(3_000, 60, 50, 10)),
            Some(TrafficRate {
                milli_requests_per_s: 25_000,
                share_5xx_bp: Some(2_500)
            })
        );
        assert_eq!(
            rate(s(0, 5, 5, 1), s(500, 6, 5, 1)),
            Some(TrafficRate {
                milli_requests_per_s: 2_000,
                share_5xx_bp: None
            }),
            "a failed attempt without a response"
        );
        assert_eq!(rate(s(10, 0, 0, 0), s(10, 5, 5, 0)), None, "no time passed");
        assert_eq!(
            rate(s(0, 50, 50, 0), s(10, 5, 5, 0)),
            None,
            "counters went back"
        );
    }

    #[test]
    fn counters_survive_a_restore() {
        let a = TrafficCounters::default();
        for i in 0..10 {
            a.record(attempt(200 + i, i % 3 == 0, i.into()));
        }
        let b = TrafficCounters::default();
        b.restore(&a.snapshot());
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(
            TrafficCounters::default().snapshot().response_time_ms_avg(),
            0.0
        );
    }
}
