//! A run's results: what `--json` prints, what the text table shows, and the `--hdr-out` files.
//!
//! Throughput counts *answered* requests (ok, not found, exists) over the measured duration, and
//! the table shows how many of them were the success path, so an `insert` run that mostly hit
//! `exists` cannot pass for a fast one. Errors are listed per kind with the first message seen,
//! on every report, including zeros.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::hdr::{self, IntervalLog};
use super::recorder::{Counts, OpTally, Tally};
use super::schedule::OpenLoop;
use super::target::TargetSpec;
use super::workload::LoadOp;
use super::BenchConfig;
use quickv_proto::Outcome;

/// Everything a run produced, serialized as the `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The run's name in tables and plots.
    pub label: String,
    /// `quickv` or `redis`.
    pub system: String,
    /// Who answered (server version and role).
    pub server: String,
    /// How the run was configured.
    pub config: BenchConfig,
    /// Requests in flight (`connections × streams × pipeline`).
    pub in_flight: usize,
    /// Where it ran.
    pub machine: HostInfo,
    /// The preload phase, if there was one.
    pub preload: Option<PreloadReport>,
    /// Length of the measured phase, seconds (the throughput denominator).
    pub measured_seconds: f64,
    /// One entry per operation kind in the mix.
    pub ops: Vec<OpReport>,
    /// All kinds together.
    pub total: OpReport,
    /// Open loop only: the schedule and how far the generator kept up with it.
    pub open_loop: Option<OpenLoopReport>,
    /// Anything the reader must know to trust the numbers (printed loudly).
    pub warnings: Vec<String>,
}

/// The machine the run was on: comparisons across machines are meaningless without it.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// Logical CPUs available to this process.
    pub nproc: usize,
    /// The CPU model name from `/proc/cpuinfo` (or `unknown`).
    pub cpu: String,
}

impl HostInfo {
    /// The machine this process runs on.
    pub fn current() -> HostInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        HostInfo {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
        }
    }
}

/// Results of one operation kind (or of all of them, as `op = "all"`).
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// The kind, or `all`.
    pub op: String,
    /// Answered requests per second of measured time.
    pub ops_per_sec: f64,
    /// Successful (`ok`) requests per second.
    pub ok_per_sec: f64,
    /// Every outcome, counted.
    pub counts: Counts,
    /// Latency of answered requests, microseconds.
    pub latency_us: Percentiles,
    /// The first message of each failing outcome.
    pub first_errors: Vec<ErrorSample>,
}

/// One failing outcome and the first message seen for it.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorSample {
    /// `unavailable`, `indeterminate`, `timeout` or `other`.
    pub kind: String,
    /// What the server or client said.
    pub message: String,
}

/// Latency summary, microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Answered requests the summary covers.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99.99th percentile.
    pub p99_99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// The summary of a nanosecond histogram, in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

/// The preload phase's outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PreloadReport {
    /// Keys asked for.
    pub keys: u64,
    /// Keys stored by this preload.
    pub stored: u64,
    /// Keys that were already there (a previous run's preload).
    pub already_present: u64,
    /// Keys that could not be stored.
    pub errors: u64,
    /// Why, the first time.
    pub first_error: Option<String>,
    /// Time taken, seconds.
    pub seconds: f64,
}

impl PreloadReport {
    /// Counts one preload answer.
    pub fn count(&mut self, (outcome, message): (Outcome, Option<String>)) {
        match outcome {
            Outcome::Ok => self.stored += 1,
            Outcome::Exists => self.already_present += 1,
            _ => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(message.unwrap_or_else(|| outcome.name().to_owned()));
                }
            }
        }
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: PreloadReport) {
        self.stored += other.stored;
        self.already_present += other.already_present;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How an open-loop run kept to its schedule.
#[derive(Clone, Debug, Serialize)]
pub struct OpenLoopReport {
    /// Requests per second asked for.
    pub target_rate: f64,
    /// Requests the schedule held (warmup included).
    pub scheduled: u64,
    /// Requests the pacer made due before the end.
    pub made_due: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// Requests due but never sent: the generator (or the in-flight limit) fell this far behind.
    pub not_sent: u64,
    /// Requests per second of measured time that were sent.
    pub sent_rate: f64,
    /// How late requests were sent relative to their intended start, microseconds.
    pub send_lag_us: Percentiles,
}

impl OpenLoopReport {
    /// Summarizes the schedule against what happened.
    pub fn new(
        schedule: OpenLoop,
        warmup: Duration,
        made_due: u64,
        sent: u64,
        lag: &Histogram<u64>,
    ) -> OpenLoopReport {
        let measured = (schedule.total() as f64 / schedule.rate() - warmup.as_secs_f64()).max(1e-9);
        OpenLoopReport {
            target_rate: schedule.rate(),
            scheduled: schedule.total(),
            made_due,
            sent,
            not_sent: schedule.total().saturating_sub(sent),
            sent_rate: lag.len() as f64 / measured,
            send_lag_us: Percentiles::of(lag),
        }
    }
}

impl OpReport {
    fn of(op: &str, tally: &OpTally, seconds: f64) -> OpReport {
        OpReport {
            op: op.to_owned(),
            ops_per_sec: tally.counts.answered() as f64 / seconds,
            ok_per_sec: tally.counts.ok as f64 / seconds,
            counts: tally.counts,
            latency_us: Percentiles::of(&tally.latency),
            first_errors: tally
                .first_errors
                .iter()
                .map(|(kind, message)| ErrorSample {
                    kind: kind.name().to_owned(),
                    message: message.clone(),
                })
                .collect(),
        }
    }
}

impl BenchReport {
    /// Assembles the report from the run's totals.
    pub fn build(
        cfg: &BenchConfig,
        spec: &TargetSpec,
        server: String,
        preload: Option<PreloadReport>,
        totals: &Tally,
        open_loop: Option<OpenLoopReport>,
        mut warnings: Vec<String>,
    ) -> BenchReport {
        let seconds = cfg.duration.as_secs_f64();
        let kinds: Vec<LoadOp> = cfg.mix.kinds().collect();
        let ops: Vec<OpReport> = kinds
            .iter()
            .map(|&k| OpReport::of(k.as_str(), totals.op(k), seconds))
            .collect();
        let mut all = OpTally {
            latency: totals.all_latency(),
            counts: totals.all_counts(),
            first_errors: Vec::new(),
        };
        for op in &totals.ops {
            all.first_errors.extend(op.first_errors.iter().cloned());
        }
        let total = OpReport::of("all", &all, seconds);
        if total.counts.errors() > 0 {
            warnings.push(format!(
                "{} request(s) failed (unavailable {}, indeterminate {}, timeout {}, other {}): \
                 see the error lines",
                total.counts.errors(),
                total.counts.unavailable,
                total.counts.indeterminate,
                total.counts.timeout,
                total.counts.other
            ));
        }
        if total.counts.answered() == 0 {
            warnings.push("no request was answered in the measured phase".into());
        }
        for op in &ops {
            let missed = op.counts.not_found + op.counts.exists;
            if missed * 100 > op.counts.answered() {
                let hint = if op.op == "delete" {
                    "deletes walk the keyspace once; raise --keys to cover the run"
                } else {
                    "is the keyspace preloaded?"
                };
                warnings.push(format!(
                    "{}: {missed} of {} answers were not-found/exists, not the success path ({hint})",
                    op.op,
                    op.counts.answered()
                ));
            }
        }
        if let Some(ol) = &open_loop {
            if ol.not_sent > 0 {
                warnings.push(format!(
                    "open loop: {} of {} scheduled requests were never sent; the generator fell \
                     behind (raise --pipeline/--streams or lower --rate)",
                    ol.not_sent, ol.scheduled
                ));
            }
        }
        BenchReport {
            label: cfg.label(),
            system: spec.system().to_owned(),
            server,
            config: cfg.clone(),
            in_flight: cfg.in_flight(),
            machine: HostInfo::current(),
            preload,
            measured_seconds: seconds,
            ops,
            total,
            open_loop,
            warnings,
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(out, "{} ({})", self.label, self.server);
        let _ = writeln!(
            out,
            "target {}  mix {}  keys {} ({})  value {} B  in flight {} ({}c × {}s × {}d)  {}",
            c.target,
            c.mix,
            c.keys,
            c.dist,
            c.value_size,
            self.in_flight,
            c.connections,
            c.streams,
            c.pipeline,
            match c.rate {
                Some(r) => format!("open loop at {r} req/s"),
                None => "closed loop".into(),
            }
        );
        if let Some(n) = c.redis_wait {
            let _ = writeln!(out, "writes followed by WAIT {n} {}", c.redis_wait_ms);
        }
        if let Some(p) = &self.preload {
            let _ = writeln!(
                out,
                "preload: {} stored, {} already present, {} errors in {:.1} s",
                p.stored, p.already_present, p.errors, p.seconds
            );
        }
        let _ = writeln!(
            out,
            "measured {:.1} s after {:.1} s warmup; latency in µs\n",
            self.measured_seconds,
            c.warmup.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "{:<7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>7}",
            "op",
            "ops/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "mean",
            "ok",
            "miss",
            "errors"
        );
        let mut rows: Vec<&OpReport> = self.ops.iter().collect();
        if self.ops.len() > 1 {
            rows.push(&self.total);
        }
        for r in rows {
            let l = &r.latency_us;
            let _ = writeln!(
                out,
                "{:<7} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8} {:>7}",
                r.op,
                r.ops_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p99_9,
                l.p99_99,
                l.max,
                l.mean,
                r.counts.ok,
                r.counts.not_found + r.counts.exists,
                r.counts.errors()
            );
        }
        let t = &self.total.counts;
        let _ = writeln!(
            out,
            "\nerrors: unavailable {}, indeterminate {}, timeout {}, other {}",
            t.unavailable, t.indeterminate, t.timeout, t.other
        );
        for e in &self.total.first_errors {
            let _ = writeln!(out, "  first {}: {}", e.kind, e.message);
        }
        if let Some(ol) = &self.open_loop {
            let lag = &ol.send_lag_us;
            let _ = writeln!(
                out,
                "open loop: target {:.0} req/s, sent {:.0} req/s; {} of {} scheduled never sent; \
                 send lag p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                ol.target_rate, ol.sent_rate, ol.not_sent, ol.scheduled, lag.p50, lag.p99, lag.max
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
        out
    }
}

/// Writes `<op>.hgrm` and `<op>.hlog` for each kind, `lag.hgrm` for open-loop runs, and
/// `report.json` into `dir`.
pub fn write_hdr_files(
    dir: &Path,
    kinds: &[LoadOp],
    totals: &Tally,
    logs: Vec<IntervalLog>,
    report: &BenchReport,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: String, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    for (&kind, log) in kinds.iter().zip(logs) {
        write(
            format!("{kind}.hgrm"),
            hdr::hgrm(&totals.op(kind).latency).as_bytes(),
        )?;
        write(
            format!("{kind}.hlog"),
            &log.finish().map_err(anyhow::Error::msg)?,
        )?;
    }
    if report.open_loop.is_some() {
        write("send-lag.hgrm".into(), hdr::hgrm(&totals.lag).as_bytes())?;
    }
    write(
        "report.json".into(),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    Ok(())
}
