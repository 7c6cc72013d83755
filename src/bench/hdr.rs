//! HdrHistogram's file formats, so results open in the usual tools.
//!
//! - `.hgrm`: the percentile distribution text that Java's
//!   `Histogram.outputPercentileDistribution` prints and HdrHistogram's online plotter reads.
//!   Values are in milliseconds (recorded in nanoseconds, scaled by [`NS_PER_MS`]).
//! - `.hlog`: the V2 interval log (`HistogramLogWriter`), one compressed histogram per progress
//!   interval, readable by `HistogramLogProcessor` and HdrHistogram's log analyzers; it shows how
//!   latency moved during the run, which a single total histogram hides.
//!
//! [`parse_hgrm`] reads `.hgrm` back for `quickv bench plot`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

/// Recorded nanoseconds per reported millisecond: the scaling ratio of `.hgrm` and `.hlog`.
pub const NS_PER_MS: f64 = 1_000_000.0;
/// Quantile iteration steps per halving of the distance to 100 %, as HdrHistogram's default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Renders `h` (nanoseconds) as an `.hgrm` percentile distribution in milliseconds, in the exact
/// layout of Java's `outputPercentileDistribution(out, 5, 1000000.0)`.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / NS_PER_MS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / NS_PER_MS,
        h.stdev() / NS_PER_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / NS_PER_MS,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets(h)
    );
    out
}

/// The sub-bucket count HdrHistogram prints in the footer: `2^ceil(log2(2 × 10^digits))`.
fn sub_buckets(h: &Histogram<u64>) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(h.sigfig()));
    largest.next_power_of_two()
}

/// One point of a percentile distribution: latency in milliseconds at a quantile (0..=1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PercentilePoint {
    /// Latency, milliseconds.
    pub value_ms: f64,
    /// Fraction of requests at or below `value_ms`.
    pub quantile: f64,
}

/// Reads the points of an `.hgrm` file (ours or Java's): every line of four or three numbers
/// whose second is a quantile. Header, footer and blank lines are skipped; a file with no point is
/// an error, so a wrong file is noticed.
pub fn parse_hgrm(text: &str) -> Result<Vec<PercentilePoint>, String> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(format!("line {}: expected 3 or 4 columns: {line:?}", n + 1));
        }
        let number = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("line {}: {s:?} is not a number", n + 1))
        };
        let value_ms = number(fields[0])?;
        let quantile = number(fields[1])?;
        if !(0.0..=1.0).contains(&quantile) || !value_ms.is_finite() {
            return Err(format!("line {}: quantile {quantile} out of range", n + 1));
        }
        points.push(PercentilePoint { value_ms, quantile });
    }
    if points.is_empty() {
        return Err("no percentile lines (is this an .hgrm file?)".into());
    }
    Ok(points)
}

/// Builds a V2 `.hlog` in memory, one interval at a time; [`IntervalLog::finish`] returns the
/// file's bytes. Interval histograms are serialized (deflate-compressed, base64) as they come, so a
/// long run keeps a few hundred bytes per interval, not a histogram.
pub struct IntervalLog {
    /// The intervals written so far (without the header, which needs the start time).
    body: Vec<u8>,
    /// Reused across intervals.
    serializer: V2DeflateSerializer,
    /// Wall-clock time of the measured phase's start: the log's StartTime/BaseTime.
    start: SystemTime,
    /// Written at the top of the file, e.g. the run's command line.
    comment: String,
}

impl IntervalLog {
    /// An empty log whose timestamps count from `start`.
    pub fn new(start: SystemTime, comment: impl Into<String>) -> IntervalLog {
        IntervalLog {
            body: Vec::new(),
            serializer: V2DeflateSerializer::new(),
            start,
            comment: comment.into(),
        }
    }

    /// Appends one interval that began `offset` after the start and lasted `length`, tagged (e.g.
    /// with the operation name) so several logs can be merged by tools.
    pub fn push(
        &mut self,
        h: &Histogram<u64>,
        offset: Duration,
        length: Duration,
        tag: &str,
    ) -> Result<(), String> {
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(NS_PER_MS)
            .begin_log_with(&mut self.body, &mut self.serializer)
            .map_err(|e| e.to_string())?;
        // The divisor comment is part of the header only if set on the builder that writes it;
        // the interval line itself carries the scaled max.
        writer
            .write_histogram(h, offset, length, Tag::new(tag))
            .map_err(|e| e.to_string())
    }

    /// The complete file: the header Java's `HistogramLogWriter` writes, then the intervals.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(&self.comment)
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(self.start)
            .with_base_time(self.start)
            .with_max_value_divisor(NS_PER_MS)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        );
        out.extend_from_slice(&strip_divisor_lines(&self.body));
        Ok(out)
    }
}

/// Drops the `#[MaxValueDivisor ...]` header lines that each per-interval writer emitted into the
/// body (the file header carries one).
fn strip_divisor_lines(body: &[u8]) -> Vec<u8> {
    body.split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"#[MaxValueDivisor"))
        .flatten()
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::recorder::new_histogram;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.saturating_record(i * 1_000); // 1 µs .. 1 ms
        }
        h
    }

    #[test]
    fn hgrm_matches_hdrhistograms_layout() {
        let text = hgrm(&sample());
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let first = lines.next().expect("a first point");
        // Value in ms with 3 decimals, quantile with 12, cumulative count, 1/(1-q).
        assert_eq!(
            first,
            "       0.001 0.000000000000          1           1.00"
        );
        let last_point = text.lines().rfind(|l| !l.starts_with('#')).expect("points");
        assert!(
            last_point.ends_with("1.000000000000       1000"),
            "{last_point:?}"
        );
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn hgrm_round_trips_through_the_parser() {
        let points = parse_hgrm(&hgrm(&sample())).expect("parses");
        assert!(points.len() > 20);
        assert!(points.windows(2).all(|w| w[0].quantile <= w[1].quantile));
        let median = points.iter().find(|p| p.quantile >= 0.5).expect("a median");
        assert!((median.value_ms - 0.5).abs() < 0.01, "{median:?}");
        assert_eq!(points.last().map(|p| p.quantile), Some(1.0));
    }

    #[test]
    fn parser_refuses_other_files() {
        assert!(parse_hgrm("").is_err());
        assert!(parse_hgrm("hello world").is_err());
        assert!(parse_hgrm("1.0 1.5 3 4").is_err());
    }

    #[test]
    fn empty_histogram_still_renders_a_footer() {
        let text = hgrm(&new_histogram());
        assert!(text.contains("Total count    =            0]"));
        assert!(parse_hgrm(&text).is_err());
    }

    #[test]
    fn hlog_intervals_read_back() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::new(start, "quickv bench test");
        log.push(&sample(), Duration::ZERO, Duration::from_secs(1), "get")
            .expect("push");
        log.push(
            &sample(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            "get",
        )
        .expect("push");
        let bytes = log.finish().expect("finish");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.starts_with("#quickv bench test\n#[Histogram log format version 1.3]\n"));
        assert!(text.contains("#[StartTime: 1700000000.000"));
        assert_eq!(text.matches("MaxValueDivisor").count(), 1, "{text}");
        let intervals: Vec<_> = IntervalLogIterator::new(&bytes)
            .filter_map(|e| match e {
                Ok(LogEntry::Interval(i)) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(intervals.len(), 2, "{text}");
        assert_eq!(intervals[1].start_timestamp(), Duration::from_secs(1));
        assert_eq!(intervals[0].tag().map(|t| t.as_str()), Some("get"));
        assert!((intervals[0].max() - 1.0).abs() < 0.01);
    }
}
