//! `quickv bench`: a load generator with honest latency, for quickv and (feature `redis`) Redis.
//!
//! # What it measures
//!
//! A run connects to one server, optionally preloads a keyspace, then keeps `connections × streams
//! × pipeline` requests in flight for `--warmup` + `--duration`, drawn from a weighted mix of
//! operations ([`workload`]) over keys picked uniformly or zipfian ([`dist`]). Every request's
//! latency goes into an HdrHistogram per operation kind ([`recorder`]); every failure is counted
//! by kind (unavailable, indeterminate, timeout, other) with the first message of each, and shown:
//! a benchmark that hides errors measures the error path.
//!
//! # Closed and open loop
//!
//! By default each in-flight slot sends its next request when the previous one is answered
//! (closed loop): the offered load adapts to the server, which is what "throughput at N in flight"
//! means. With `--rate R` the run is open loop ([`schedule`]): requests are due at fixed times,
//! `R` per second in total, and latency is measured from each request's *intended* start, so a
//! stall is charged to every request it delayed (no coordinated omission); how far the generator
//! itself fell behind is reported separately.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`workload`] | operation kinds, `--mix` parsing, key and value bytes |
//! | [`dist`] | PRNG, uniform and zipfian key choice |
//! | [`schedule`] | open-loop send times (pure arithmetic) |
//! | [`recorder`] | sharded per-op histograms and outcome counters |
//! | [`target`] | quickv and Redis behind one interface; loopback-only guard |
//! | `redis_target` | the Redis mapping (feature `redis`) |
//! | [`driver`] | connect, preload, workers, the collector loop |
//! | [`progress`] | the live line (indicatif on a terminal, plain lines otherwise) |
//! | [`report`] | the results: text table, JSON, `.hgrm`/`.hlog` files |
//! | [`hdr`] | HdrHistogram's `.hgrm` and `.hlog` formats |
//! | [`plot`] | `quickv bench plot`: latency-by-percentile curves to SVG and PNG |
//! | [`compare`] | `quickv bench table`: the quickv-vs-Redis markdown table of `bench/compare.sh` |

pub mod compare;
pub mod dist;
pub mod driver;
pub mod hdr;
pub mod plot;
pub mod progress;
pub mod recorder;
#[cfg(feature = "redis")]
pub mod redis_target;
pub mod report;
pub mod schedule;
pub mod target;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use target::TargetSpec;

pub use dist::DistKind;
pub use driver::run;
pub use progress::ProgressMode;
pub use report::BenchReport;
pub use workload::{LoadOp, Mix};

/// Most requests a run may keep in flight; far above where either system stops gaining, and it
/// bounds the generator's memory (one task per slot).
pub const MAX_IN_FLIGHT: usize = 16_384;

/// Default cap on requests per run: far more than any run on one machine sends in its duration
/// (a billion is ~50 minutes at 300 k/s), so it only stops a runaway.
pub const DEFAULT_MAX_REQUESTS: u64 = 1_000_000_000;

/// Everything a run needs, as given on the command line. Serialized into `--json` reports so a
/// result always says how it was produced.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// `HOST:PORT` of a quickv server, or a `redis://`/`rediss://` URL.
    pub target: String,
    /// quickv: `HOST:PORT` of the target's backup, for gets at both servers (`--read-from any`).
    pub backup: Option<String>,
    /// quickv: where gets go (`--read-from`); writes always go to the primary.
    #[serde(serialize_with = "as_display")]
    pub read_from: ReadAt,
    /// Directory with `ca.pem`, `client.pem`, `client.key`.
    pub certs_dir: PathBuf,
    /// Which operations, in which proportions.
    #[serde(serialize_with = "as_display")]
    pub mix: Mix,
    /// Keyspace size: keys preloaded and drawn from by get/update/delete.
    pub keys: u64,
    /// Bytes per value (and per ping payload).
    pub value_size: usize,
    /// Key choice.
    #[serde(serialize_with = "as_display")]
    pub dist: DistKind,
    /// Zipfian skew (ignored for uniform).
    pub zipf_theta: f64,
    /// QUIC connections (quickv).
    pub connections: usize,
    /// Streams per connection (quickv) / connections per `connections` (Redis).
    pub streams: usize,
    /// Requests in flight per stream.
    pub pipeline: usize,
    /// `Some(r)`: open loop at `r` requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Measured phase.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Unmeasured phase before it (connections warm, caches filled, allocator settled).
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// A request without an answer after this counts as a timeout (a write to quickv: indeterminate).
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// Preload the keyspace before the run (when the mix reads or changes existing keys).
    pub preload: bool,
    /// Most requests the run may send (warmup included), a bound besides the duration.
    pub max_requests: u64,
    /// Seed of every worker's PRNG (worker `w` uses `seed + w`), so runs are reproducible.
    pub seed: u64,
    /// Redis only: follow each write with `WAIT n <redis_wait_ms>`.
    pub redis_wait: Option<u32>,
    /// Redis only: the `WAIT` timeout, milliseconds.
    pub redis_wait_ms: u64,
    /// Worker threads of the generator's own runtime (1 = current-thread).
    pub client_threads: usize,
    /// How to show progress.
    #[serde(skip)]
    pub progress: ProgressMode,
    /// How often to print progress and cut an `.hlog` interval.
    #[serde(serialize_with = "as_secs")]
    pub interval: Duration,
    /// Where to write `.hgrm`/`.hlog` files (one pair per operation kind).
    pub hdr_out: Option<PathBuf>,
    /// A name for this run in reports and plots (default: derived from the target and load).
    pub label: Option<String>,
}

impl BenchConfig {
    /// Defaults for a closed-loop `get` run against `target`.
    pub fn new(target: impl Into<String>, certs_dir: impl Into<PathBuf>) -> BenchConfig {
        BenchConfig {
            target: target.into(),
            backup: None,
            read_from: ReadAt::Primary,
            certs_dir: certs_dir.into(),
            mix: Mix::single(LoadOp::Get),
            keys: 100_000,
            value_size: 100,
            dist: DistKind::Uniform,
            zipf_theta: dist::Zipfian::DEFAULT_THETA,
            connections: 1,
            streams: 4,
            pipeline: 16,
            rate: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            preload: true,
            max_requests: DEFAULT_MAX_REQUESTS,
            seed: 1,
            redis_wait: None,
            redis_wait_ms: 1_000,
            client_threads: 1,
            progress: ProgressMode::Auto,
            interval: Duration::from_secs(1),
            hdr_out: None,
            label: None,
        }
    }

    /// Requests in flight: `connections × streams × pipeline`.
    pub fn in_flight(&self) -> usize {
        self.connections
            .saturating_mul(self.streams)
            .saturating_mul(self.pipeline)
    }

    /// Refuses settings that cannot make a meaningful run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.connections >= 1 && self.streams >= 1 && self.pipeline >= 1,
            "--connections, --streams and --pipeline must each be at least 1"
        );
        anyhow::ensure!(
            self.in_flight() <= MAX_IN_FLIGHT,
            "{} requests in flight is more than the {MAX_IN_FLIGHT} this generator allows",
            self.in_flight()
        );
        anyhow::ensure!(
            self.duration > Duration::ZERO,
            "--duration must be positive"
        );
        anyhow::ensure!(
            self.interval >= Duration::from_millis(100),
            "--interval must be at least 100ms"
        );
        anyhow::ensure!(
            self.keys > 0 || !self.mix.kinds().any(LoadOp::needs_preload),
            "--keys must be positive for get, update and delete"
        );
        anyhow::ensure!(
            self.read_from == ReadAt::Primary || self.backup.is_some(),
            "--read-from any needs the pair's backup (--backup HOST:PORT)"
        );
        if let Some(backup) = &self.backup {
            TargetSpec::parse(backup)
                .check_loopback()
                .map_err(anyhow::Error::msg)?;
        }
        if let Some(rate) = self.rate {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number of requests per second"
            );
        }
        Ok(())
    }

    /// The run's name in reports and plots.
    pub fn label(&self) -> String {
        match &self.label {
            Some(label) => label.clone(),
            None => format!(
                "{}{} {} c{}s{}d{}",
                target::TargetSpec::parse(&self.target).system(),
                match self.read_from {
                    ReadAt::Primary => "",
                    ReadAt::Any => " reads-any",
                },
                self.mix,
                self.connections,
                self.streams,
                self.pipeline
            ),
        }
    }
}

/// Where a quickv run sends its gets (`--read-from`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadAt {
    /// Every get to the primary (the target).
    #[default]
    Primary,
    /// Gets take turns between the primary and its backup (`ReadFrom::Any`), each falling back
    /// to the other server on a refusal.
    Any,
}

impl std::fmt::Display for ReadAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadAt::Primary => "primary",
            ReadAt::Any => "any",
        })
    }
}

impl From<ReadAt> for quickv_client::ReadFrom {
    fn from(at: ReadAt) -> quickv_client::ReadFrom {
        match at {
            ReadAt::Primary => quickv_client::ReadFrom::Primary,
            ReadAt::Any => quickv_client::ReadFrom::Any,
        }
    }
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parses durations like `10s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    if !(value.is_finite() && value >= 0.0) || value * scale > 86_400.0 {
        return Err(format!("{s:?} is not a duration between 0 and 24 hours"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1000000m").is_err());
    }

    #[test]
    fn config_validation_catches_nonsense() {
        let mut cfg = BenchConfig::new("127.0.0.1:4470", "certs");
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.in_flight(), 64);
        cfg.pipeline = 0;
        assert!(cfg.validate().is_err());
        cfg.pipeline = 100_000;
        assert!(cfg.validate().is_err());
        cfg.pipeline = 1;
        cfg.rate = Some(0.0);
        assert!(cfg.validate().is_err());
        cfg.rate = None;
        cfg.keys = 0;
        assert!(cfg.validate().is_err());
        cfg.mix = Mix::single(LoadOp::Insert);
        assert!(cfg.validate().is_ok());
    }
}
