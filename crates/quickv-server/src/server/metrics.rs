//! Per-operation counters and latency histograms, recorded where an answer is sent.
//!
//! Every request the router answers — over QUIC or HTTP — is recorded once, when its answer is
//! known: an immediate answer right after [`crate::server::router::handle`], a replicated write
//! when the backup's ack (or the loss of the link) completes it. That is the latency a client
//! sees, minus the network.
//!
//! This is on the hot path of every request, so recording is two relaxed atomic adds into fixed
//! arrays: no lock, no allocation, no label lookup (an operation and an outcome are array
//! indexes). Histogram buckets are stored non-cumulative (one add per observation) and summed
//! when the page is rendered; see [`crate::server::http::metrics`] for the exposition.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use quickv_proto::Reply;
pub use quickv_proto::{OpKind, Outcome};

/// Operation names, indexed by [`OpKind::index`]; the `op` label of the metrics.
pub const OP_NAMES: [&str; OpKind::ALL.len()] = {
    let mut names = [""; OpKind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = OpKind::ALL[i].name();
        i += 1;
    }
    names
};

/// Outcome names, indexed by [`Outcome::index`]; the `result` label of the metrics. A server
/// counts only the outcomes it answers with ([`Outcome::SERVER`]).
pub const OUTCOME_NAMES: [&str; Outcome::SERVER.len()] = {
    let mut names = [""; Outcome::SERVER.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Outcome::SERVER[i].name();
        i += 1;
    }
    names
};

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`, inclusive). From a
/// quarter of a loopback round trip to past the ack timeout; anything slower lands in `+Inf`.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Counters of answered requests by operation and outcome, and a latency histogram per operation.
#[derive(Debug)]
pub struct OpMetrics {
    /// `answered[op][outcome]`: requests answered.
    answered: [[AtomicU64; OUTCOME_NAMES.len()]; OP_NAMES.len()],
    /// One latency histogram per operation, all outcomes together.
    latency: [Histogram; OP_NAMES.len()],
}

impl Default for OpMetrics {
    fn default() -> Self {
        OpMetrics {
            answered: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| Histogram::default()),
        }
    }
}

impl OpMetrics {
    /// Records one answered request.
    pub fn record(&self, kind: OpKind, reply: &Reply, elapsed: Duration) {
        self.record_outcome(kind, Outcome::of(reply), elapsed);
    }

    /// Records one answered request whose outcome is known without a [`Reply`] (dump, shutdown).
    pub fn record_outcome(&self, kind: OpKind, outcome: Outcome, elapsed: Duration) {
        self.count(kind, outcome.index());
        self.latency[kind.index()].observe(elapsed);
    }

    /// Counts one answered request without observing its latency: the caller observes a batch
    /// of them at once with [`OpMetrics::observe_many`] (one clock read per batch, not two per
    /// request).
    pub fn count_answer(&self, kind: OpKind, reply: &Reply) {
        self.count(kind, Outcome::of(reply).index());
    }

    /// [`OpMetrics::count_answer`] of an answer whose outcome is known without a [`Reply`] (a
    /// get encoded straight from the store).
    pub fn count_outcome(&self, kind: OpKind, outcome: Outcome) {
        self.count(kind, outcome.index());
    }

    /// Observes `n` answers of `kind` that each took `elapsed`.
    pub fn observe_many(&self, kind: OpKind, n: u64, elapsed: Duration) {
        self.latency[kind.index()].observe_n(elapsed, n);
    }

    fn count(&self, kind: OpKind, outcome: usize) {
        // Client-side outcomes (timeout, unreachable) never reach a server's metrics.
        if let Some(count) = self.answered[kind.index()].get(outcome) {
            count.fetch_add(1, Relaxed);
        }
    }

    /// Requests of `op` answered with `outcome` so far (indexes into [`OP_NAMES`] and
    /// [`OUTCOME_NAMES`]; out-of-range indexes read as zero).
    pub fn answered(&self, op: usize, outcome: usize) -> u64 {
        self.answered
            .get(op)
            .and_then(|row| row.get(outcome))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// The latency histogram of `op` (an index into [`OP_NAMES`]).
    pub fn latency(&self, op: usize) -> Option<HistogramSnapshot> {
        self.latency.get(op).map(Histogram::snapshot)
    }
}

/// A fixed-bucket latency histogram over [`LATENCY_BOUNDS_US`].
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket, *not* cumulative; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of all observations, in nanoseconds (wraps after ~584 years of summed latency).
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_n(elapsed, 1);
    }

    /// Adds `n` observations of the same `elapsed`.
    pub fn observe_n(&self, elapsed: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // `le` is inclusive: the first bound that is >= the observation.
        let slot = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[slot].fetch_add(n, Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns.saturating_mul(n), Relaxed);
    }

    /// Cumulative counts, as the exposition wants them. The count is the `+Inf` bucket, so a page
    /// is self-consistent even while requests are being recorded.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let cumulative = std::array::from_fn(|i| {
            running = running.wrapping_add(self.buckets[i].load(Relaxed));
            running
        });
        HistogramSnapshot {
            cumulative,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
        }
    }
}

/// A histogram read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations `<=` each bound of [`LATENCY_BOUNDS_US`], then the `+Inf` total.
    pub cumulative: [u64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of the observations.
    pub sum: Duration,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.cumulative[LATENCY_BOUNDS_US.len()]
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use quickv_proto::Op;

    #[test]
    fn op_kinds_use_the_protocol_names() {
        let k = Bytes::from_static(b"k");
        let ops = [
            Op::Hello { version: 1 },
            Op::Ping(k.clone()),
            Op::Insert {
                key: k.clone(),
                value: k.clone(),
            },
            Op::Update {
                key: k.clone(),
                value: k.clone(),
            },
            Op::Delete { key: k.clone() },
            Op::Get { key: k },
            Op::Count,
            Op::Dump,
            Op::Status,
            Op::Shutdown,
        ];
        for op in &ops {
            assert_eq!(OpKind::of(op).name(), op.name());
        }
    }

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(25)); // exactly on the first bound
        h.observe(Duration::from_micros(26)); // second bucket
        h.observe(Duration::from_secs(10)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[LATENCY_BOUNDS_US.len() - 1], 2);
        assert_eq!(s.count(), 3);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            s.sum,
            Duration::from_micros(25 + 26) + Duration::from_secs(10)
        );
    }

    #[test]
    fn outcomes_count_per_op() {
        let m = OpMetrics::default();
        let insert = OpKind::of(&Op::Insert {
            key: Bytes::new(),
            value: Bytes::new(),
        });
        m.record(insert, &Reply::Ok, Duration::ZERO);
        m.record(insert, &Reply::Exists, Duration::ZERO);
        m.record(insert, &Reply::Indeterminate("x".into()), Duration::ZERO);
        assert_eq!(m.answered(2, 0), 1);
        assert_eq!(m.answered(2, 2), 1);
        assert_eq!(m.answered(2, 4), 1);
        assert_eq!(m.answered(5, 0), 0);
        assert_eq!(m.answered(99, 0), 0);
        assert_eq!(m.latency(2).map(|h| h.count()), Some(3));
        assert_eq!(Outcome::of(&Reply::NotFound).name(), "not_found");
    }
}
