//! The open-loop schedule: when each request *should* start, independent of when answers come.
//!
//! A closed-loop generator sends the next request only after the previous answer, so a server
//! stall also stalls the generator, and the requests it would have sent during the stall are
//! never measured: the histogram shows one slow request where a user would have seen hundreds.
//! That is coordinated omission (Gil Tene). The fix, as in wrk2, is to fix the send times up
//! front: request `k` is due at `k / rate` seconds after the start, whatever happens, and its
//! latency is measured from that intended time. If the generator cannot send on time (all its
//! in-flight slots are busy, or its own timer woke late), the wait counts as latency, and the lag
//! between intended and actual send is reported separately so nobody mistakes a slow generator
//! for a slow server.
//!
//! This module is the arithmetic only, on durations since the start: no clock, no I/O, so it is
//! unit-tested exactly.

use std::time::Duration;

/// A constant-rate schedule of `total` requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoop {
    /// Requests per second, over all workers.
    rate: f64,
    /// Requests in the whole schedule (`rate × run length`, rounded up).
    total: u64,
}

impl OpenLoop {
    /// A schedule at `rate` requests per second lasting `length`; `None` if the rate is not a
    /// positive finite number.
    pub fn new(rate: f64, length: Duration) -> Option<OpenLoop> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let total = (length.as_secs_f64() * rate).ceil();
        Some(OpenLoop {
            rate,
            total: if total >= u64::MAX as f64 {
                u64::MAX
            } else {
                total as u64
            },
        })
    }

    /// Requests in the schedule.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The target rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When request `k` (0-based) is due, as time since the start: `k / rate`.
    pub fn intended(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many requests are due at `elapsed` since the start: every `k` with `intended(k) ≤
    /// elapsed`, capped at [`OpenLoop::total`].
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let mut due = (elapsed.as_secs_f64() * self.rate).floor() as u64;
        // Float rounding may put `due` one step either way of the exact boundary; settle it against
        // `intended`, which is the definition.
        while due < self.total && self.intended(due) <= elapsed {
            due += 1;
        }
        while due > 0 && self.intended(due - 1) > elapsed {
            due -= 1;
        }
        due.min(self.total)
    }

    /// How far behind schedule request `k` was sent, when it was sent at `sent` since the start
    /// (zero if it went out early or on time).
    pub fn lag(&self, k: u64, sent: Duration) -> Duration {
        sent.saturating_sub(self.intended(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_rates() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(OpenLoop::new(rate, Duration::from_secs(1)).is_none());
        }
    }

    #[test]
    fn total_is_rate_times_length() {
        let s = OpenLoop::new(1000.0, Duration::from_secs(10)).expect("valid");
        assert_eq!(s.total(), 10_000);
        let s = OpenLoop::new(3.0, Duration::from_millis(500)).expect("valid");
        assert_eq!(s.total(), 2); // 1.5 rounded up: requests at 0 s and 1/3 s
    }

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = OpenLoop::new(4.0, Duration::from_secs(1)).expect("valid");
        assert_eq!(s.intended(0), Duration::ZERO);
        assert_eq!(s.intended(1), Duration::from_millis(250));
        assert_eq!(s.intended(3), Duration::from_millis(750));
    }

    #[test]
    fn due_by_counts_every_request_whose_time_has_come() {
        let s = OpenLoop::new(4.0, Duration::from_secs(1)).expect("valid");
        assert_eq!(s.due_by(Duration::ZERO), 1); // request 0 is due at once
        assert_eq!(s.due_by(Duration::from_millis(249)), 1);
        assert_eq!(s.due_by(Duration::from_millis(250)), 2);
        assert_eq!(s.due_by(Duration::from_millis(999)), 4);
        assert_eq!(s.due_by(Duration::from_secs(100)), 4); // capped at total
                                                           // Against the definition, at an awkward rate, around every boundary.
        let s = OpenLoop::new(30_001.0, Duration::from_secs(2)).expect("valid");
        for k in (0..s.total()).step_by(997) {
            let at = s.intended(k);
            assert_eq!(s.due_by(at), k + 1, "k = {k}");
            if at > Duration::ZERO {
                assert_eq!(s.due_by(at - Duration::from_nanos(1)), k, "k = {k}");
            }
        }
    }

    #[test]
    fn lag_is_time_past_the_intended_start() {
        let s = OpenLoop::new(1000.0, Duration::from_secs(1)).expect("valid");
        assert_eq!(
            s.lag(10, Duration::from_millis(12)),
            Duration::from_millis(2)
        );
        assert_eq!(s.lag(10, Duration::from_millis(9)), Duration::ZERO);
    }
}
