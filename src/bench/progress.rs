//! The live view of a run: an indicatif bar with ops/s and p99 on a terminal, plain lines
//! otherwise (CI logs and `compare.sh` output stay readable and greppable).
//!
//! Progress goes to stderr, so `--json` on stdout stays machine-readable.

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::recorder::Tally;

/// How to show progress, from `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    #[default]
    Auto,
    /// Always the bar.
    Bar,
    /// Always plain lines, one per interval.
    Lines,
    /// Nothing.
    Off,
}

impl FromStr for ProgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ProgressMode, String> {
        match s {
            "auto" => Ok(ProgressMode::Auto),
            "bar" => Ok(ProgressMode::Bar),
            "lines" => Ok(ProgressMode::Lines),
            "off" | "none" => Ok(ProgressMode::Off),
            other => Err(format!(
                "unknown progress mode {other:?}: expected auto, bar, lines or off"
            )),
        }
    }
}

/// Which part of the run an interval belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the measured phase.
    Warmup,
    /// Measured.
    Measure,
    /// Waiting for the last answers.
    Drain,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Measure => "measure",
            Phase::Drain => "drain",
        }
    }
}

/// The live view.
pub enum Progress {
    /// An indicatif bar over the whole run, in milliseconds.
    Bar(ProgressBar),
    /// Plain lines on stderr.
    Lines,
    /// Silent.
    Off,
}

impl Progress {
    /// A view for a run of `warmup + duration`.
    pub fn new(mode: ProgressMode, warmup: Duration, duration: Duration) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        match mode {
            ProgressMode::Bar => {
                let total_ms = u64::try_from((warmup + duration).as_millis()).unwrap_or(u64::MAX);
                let bar =
                    ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
                if let Ok(style) =
                    ProgressStyle::with_template("{prefix:>7} [{bar:30}] {elapsed:>4} {msg}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(Phase::Warmup.as_str());
                Progress::Bar(bar)
            }
            ProgressMode::Lines => Progress::Lines,
            ProgressMode::Auto | ProgressMode::Off => Progress::Off,
        }
    }

    /// Shows one interval of `length` ending `elapsed` into the run; `totals` is the measured
    /// phase so far (for the error count).
    pub fn update(
        &mut self,
        phase: Phase,
        elapsed: Duration,
        length: Duration,
        interval: &Tally,
        totals: &Tally,
    ) {
        let counts = interval.all_counts();
        let rate = counts.answered() as f64 / length.as_secs_f64().max(1e-9);
        let p99_us = interval.all_latency().value_at_quantile(0.99) as f64 / 1_000.0;
        let errors = totals.all_counts().errors()
            + if phase == Phase::Warmup {
                counts.errors()
            } else {
                0
            };
        let msg = format!(
            "{} ops/s  p99 {:.1} µs  errors {}",
            human(rate),
            p99_us,
            errors
        );
        match self {
            Progress::Bar(bar) => {
                bar.set_prefix(phase.as_str());
                bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                bar.set_message(msg);
            }
            Progress::Lines => {
                eprintln!(
                    "[{:>6.1}s] {:<7} {msg}",
                    elapsed.as_secs_f64(),
                    phase.as_str()
                );
            }
            Progress::Off => {}
        }
    }

    /// Marks a phase change without new figures.
    pub fn update_phase(&mut self, phase: Phase) {
        if let Progress::Bar(bar) = self {
            bar.set_prefix(phase.as_str());
        }
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `1234567.0` → `1.23M`, `45210.0` → `45.2k`.
pub fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_well() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(45_210.0), "45.2k");
        assert_eq!(human(12.0), "12");
        assert_eq!("lines".parse::<ProgressMode>(), Ok(ProgressMode::Lines));
        assert!("loud".parse::<ProgressMode>().is_err());
    }
}
