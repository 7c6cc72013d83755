//! Where load workers put what they measured: a latency histogram and outcome counters per
//! operation kind, sharded so workers on different threads rarely meet on a lock.
//!
//! Workers record into the current *interval* ([`Recorder::record`]); the collector takes the
//! interval every tick ([`Recorder::take_into`]), which resets the shards in place, so the
//! progress line and the `.hlog` interval log see per-interval figures while the run totals are
//! the sum of the intervals. Histograms are allocated once per shard and reused: the hot path never
//! allocates.
//!
//! Latency is recorded in nanoseconds, 3 significant digits, up to [`LATENCY_MAX_NS`]; only
//! requests that got an *answer about the operation* (ok, not found, exists) are recorded.
//! Refusals, timeouts and transport failures are counted by kind instead: an `unavailable`
//! answers fast, and mixing it in would make a failing server look quick.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::LoadOp;
use quickv_proto::Outcome;

/// Highest latency the histograms track, in nanoseconds (60 s); slower answers are recorded as
/// 60 s rather than dropped.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by every histogram: 0.1 % value resolution.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// A fresh latency histogram with the bench's bounds.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's preconditions (low ≥ 1,
    // high ≥ 2 × low, digits ≤ 5), so this cannot fail; fall back to auto-resize just in case.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS).unwrap_or_else(|_| {
        let mut h = Histogram::new(SIGNIFICANT_DIGITS)
            .unwrap_or_else(|_| unreachable!("3 significant digits is always valid"));
        h.auto(true);
        h
    })
}

/// Counts of each outcome for one operation kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Succeeded.
    pub ok: u64,
    /// Answered "not found".
    pub not_found: u64,
    /// Answered "exists".
    pub exists: u64,
    /// Refused before taking effect.
    pub unavailable: u64,
    /// Fate unknown.
    pub indeterminate: u64,
    /// No answer in time.
    pub timeout: u64,
    /// Transport, protocol or server errors ([`Outcome::Error`], [`Outcome::Forbidden`],
    /// [`Outcome::Unreachable`]).
    pub other: u64,
}

impl Counts {
    fn bump(&mut self, outcome: Outcome, n: u64) {
        let slot = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::NotFound => &mut self.not_found,
            Outcome::Exists => &mut self.exists,
            Outcome::Unavailable => &mut self.unavailable,
            Outcome::Indeterminate => &mut self.indeterminate,
            Outcome::Timeout => &mut self.timeout,
            Outcome::Error | Outcome::Forbidden | Outcome::Unreachable => &mut self.other,
        };
        *slot += n;
    }

    /// Requests the server answered about the operation (ok, not found, exists).
    pub fn answered(&self) -> u64 {
        self.ok + self.not_found + self.exists
    }

    /// Requests that failed: refused, unknown fate, timed out or broke.
    pub fn errors(&self) -> u64 {
        self.unavailable + self.indeterminate + self.timeout + self.other
    }

    fn add(&mut self, other: &Counts) {
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.exists += other.exists;
        self.unavailable += other.unavailable;
        self.indeterminate += other.indeterminate;
        self.timeout += other.timeout;
        self.other += other.other;
    }
}

/// What was measured for one operation kind over some span of time.
#[derive(Clone, Debug)]
pub struct OpTally {
    /// Latency of answered requests, nanoseconds.
    pub latency: Histogram<u64>,
    /// Outcomes of every request that ended.
    pub counts: Counts,
    /// The first message seen for each failing outcome, so a report can say *why* (one each, to
    /// keep memory bounded).
    pub first_errors: Vec<(Outcome, String)>,
}

impl OpTally {
    fn new() -> OpTally {
        OpTally {
            latency: new_histogram(),
            counts: Counts::default(),
            first_errors: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.latency.reset();
        self.counts = Counts::default();
        self.first_errors.clear();
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &OpTally) {
        // Both histograms share the bounds of `new_histogram`, so adding cannot fail; should a
        // future change break that, the counts still add and the latency shows the gap.
        let _ = self.latency.add(&other.latency);
        self.counts.add(&other.counts);
        for (outcome, message) in &other.first_errors {
            if !self.first_errors.iter().any(|(o, _)| o == outcome) {
                self.first_errors.push((*outcome, message.clone()));
            }
        }
    }
}

/// Everything measured over some span: one [`OpTally`] per kind, plus the open-loop send lag.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Indexed by [`LoadOp::index`].
    pub ops: Vec<OpTally>,
    /// Open loop only: how late each request was sent relative to its intended start, ns.
    pub lag: Histogram<u64>,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            ops: LoadOp::ALL.iter().map(|_| OpTally::new()).collect(),
            lag: new_histogram(),
        }
    }

    /// The tally of one kind.
    pub fn op(&self, kind: LoadOp) -> &OpTally {
        &self.ops[kind.index()]
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Tally) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.add(theirs);
        }
        let _ = self.lag.add(&other.lag);
    }

    fn reset(&mut self) {
        self.ops.iter_mut().for_each(OpTally::reset);
        self.lag.reset();
    }

    /// Latency of every answered request of every kind, merged.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for op in &self.ops {
            let _ = all.add(&op.latency);
        }
        all
    }

    /// Counts of every kind, summed.
    pub fn all_counts(&self) -> Counts {
        let mut all = Counts::default();
        for op in &self.ops {
            all.add(&op.counts);
        }
        all
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// The shared sink of all workers: `shards` interval tallies, each behind its own lock.
#[derive(Debug)]
pub struct Recorder {
    /// Worker `w` records into shard `w % shards.len()`. With one shard per runtime thread (or a
    /// few), two workers rarely hold the same lock at the same time.
    shards: Vec<Mutex<Tally>>,
}

impl Recorder {
    /// A recorder with `shards` shards (at least one).
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Tally::new()))
                .collect(),
        }
    }

    /// Records one request of `kind` by `worker` that ended with `outcome` after `latency_ns`;
    /// `message` explains a failing outcome.
    pub fn record(
        &self,
        worker: usize,
        kind: LoadOp,
        outcome: Outcome,
        latency_ns: u64,
        message: Option<&str>,
    ) {
        let shard = &self.shards[worker % self.shards.len()];
        // A poisoned shard means a worker panicked mid-record; the counts in it are still sound
        // (each field is updated whole), so keep recording.
        let mut tally = shard.lock().unwrap_or_else(|e| e.into_inner());
        let op = &mut tally.ops[kind.index()];
        op.counts.bump(outcome, 1);
        if outcome.is_definite() {
            op.latency.saturating_record(latency_ns.max(1));
        } else if let Some(message) = message {
            if !op.first_errors.iter().any(|(o, _)| *o == outcome) {
                op.first_errors.push((outcome, message.to_owned()));
            }
        }
    }

    /// Records how late an open-loop request was sent, in nanoseconds.
    pub fn record_lag(&self, worker: usize, lag_ns: u64) {
        let shard = &self.shards[worker % self.shards.len()];
        let mut tally = shard.lock().unwrap_or_else(|e| e.into_inner());
        tally.lag.saturating_record(lag_ns.max(1));
    }

    /// Moves the current interval into `into` (which is reset first) and starts a new interval.
    pub fn take_into(&self, into: &mut Tally) {
        into.reset();
        for shard in &self.shards {
            let mut tally = shard.lock().unwrap_or_else(|e| e.into_inner());
            into.add(&tally);
            tally.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_not_timed() {
        let rec = Recorder::new(2);
        rec.record(0, LoadOp::Get, Outcome::Ok, 1_000, None);
        rec.record(1, LoadOp::Get, Outcome::NotFound, 3_000, None);
        rec.record(1, LoadOp::Get, Outcome::Unavailable, 5, Some("not in sync"));
        rec.record(0, LoadOp::Get, Outcome::Unavailable, 5, Some("later"));
        rec.record(0, LoadOp::Update, Outcome::Timeout, 9, Some("no answer"));
        let mut t = Tally::new();
        rec.take_into(&mut t);
        let get = t.op(LoadOp::Get);
        assert_eq!(get.counts.answered(), 2);
        assert_eq!(get.counts.unavailable, 2);
        assert_eq!(get.latency.len(), 2);
        assert_eq!(
            get.first_errors.len(),
            1,
            "one message per kind: {:?}",
            get.first_errors
        );
        assert_eq!(t.op(LoadOp::Update).counts.timeout, 1);
        assert_eq!(t.all_counts().errors(), 3);
        // Taking resets the interval.
        rec.take_into(&mut t);
        assert_eq!(t.all_counts(), Counts::default());
    }

    #[test]
    fn absurd_latencies_saturate_instead_of_vanishing() {
        let rec = Recorder::new(1);
        rec.record(0, LoadOp::Ping, Outcome::Ok, u64::MAX, None);
        let mut t = Tally::new();
        rec.take_into(&mut t);
        assert_eq!(t.op(LoadOp::Ping).latency.len(), 1);
    }
}
