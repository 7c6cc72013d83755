//! Turning a history (plus the servers' final dumps) into the figures a fault run must hold to.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::linearize::{check_key, Verdict};
use super::{History, MarkKind, Observed, Operation, Server};

/// Search steps allowed per key and epoch before the key is reported undecided. A linearizable
/// key of a few hundred operations takes a few thousand steps; this leaves room for histories
/// with many indeterminate writes without letting a pathological one hang a test.
pub const DEFAULT_SEARCH_BUDGET: u64 = 5_000_000;

/// Findings listed in a report, at most; the counts are always complete.
const MAX_FINDINGS: usize = 20;

/// The figures of one checked run. The first six must be zero for a correct server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryReport {
    /// Keys whose answers linearize but whose final dump value contradicts every linearization:
    /// an acknowledged write was lost (or a value appeared from nowhere).
    pub lost_writes: usize,
    /// Keys (per epoch) whose answers no sequence explains.
    pub violations: usize,
    /// Writes answered `unavailable` whose unique value was seen by a read, a delete or the dump.
    pub refused_took_effect: usize,
    /// Writes that failed before being sent whose value was seen anyway.
    pub unsent_took_effect: usize,
    /// Keys whose values differ between the primary's and the backup's final dumps.
    pub diverged_keys: usize,
    /// Keys whose search ran out of budget: neither proven right nor wrong.
    pub undecided: usize,
    /// Operations recorded.
    pub operations: usize,
    /// Writes with a definite answer (ok, exists, not found, or a delete's old value).
    pub acknowledged_writes: usize,
    /// Reads with a definite answer.
    pub reads: usize,
    /// Of those, the reads the backup answered (judged in the same history as the rest).
    pub reads_at_backup: usize,
    /// Writes answered `unavailable`.
    pub refused: usize,
    /// Writes that ended indeterminate.
    pub indeterminate: usize,
    /// Operations without an answer: writes never sent, reads refused or failed.
    pub failed: usize,
    /// Key histories checked (one per key and epoch).
    pub keys_checked: usize,
    /// Operations in the longest single-key history checked.
    pub max_ops_per_key: usize,
    /// Wall time during which writes were refused: the union, over refused writes, of the span
    /// from the refusal's invoke to the earliest completion of an acknowledged write invoked after
    /// it (or the end of the history).
    pub unavailable: Duration,
    /// Per marked fault: how long until writes were acknowledged again.
    pub faults: Vec<FaultFigure>,
    /// Human-readable details of every non-zero failure figure (capped at 20).
    pub findings: Vec<String>,
}

/// What one fault did to availability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultFigure {
    /// The mark's label.
    pub label: String,
    /// When it was injected (since the history's start).
    pub at: Duration,
    /// Writes invoked after the fault (before the next one) that were refused, indeterminate or
    /// unsent: the disruption clients saw.
    pub disrupted_writes: usize,
    /// From the fault to the completion of the first acknowledged write invoked after the last
    /// disrupted one; `None` if no write was disrupted (nothing to recover from) or none was
    /// acknowledged afterwards.
    pub recovery: Option<Duration>,
}

impl HistoryReport {
    /// True when every figure that must be zero is zero.
    pub fn is_clean(&self) -> bool {
        self.lost_writes == 0
            && self.violations == 0
            && self.refused_took_effect == 0
            && self.unsent_took_effect == 0
            && self.diverged_keys == 0
            && self.undecided == 0
    }

    fn note(&mut self, finding: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "acknowledged writes lost: {}, linearizability violations: {}, unavailable writes that took effect: {}, unsent writes that took effect: {}, keys differing after resync: {}, undecided keys: {}",
            self.lost_writes,
            self.violations,
            self.refused_took_effect,
            self.unsent_took_effect,
            self.diverged_keys,
            self.undecided
        )?;
        writeln!(
            f,
            "operations: {} (acknowledged writes {}, reads {} ({} at the backup), refused {}, indeterminate {}, failed {}); {} key histories, longest {} ops",
            self.operations,
            self.acknowledged_writes,
            self.reads,
            self.reads_at_backup,
            self.refused,
            self.indeterminate,
            self.failed,
            self.keys_checked,
            self.max_ops_per_key
        )?;
        write!(f, "unavailable time: {} ms", self.unavailable.as_millis())?;
        for fault in &self.faults {
            write!(
                f,
                "\nfault '{}' at {} ms: ",
                fault.label,
                fault.at.as_millis()
            )?;
            match fault.recovery {
                Some(r) => write!(
                    f,
                    "{} disrupted writes, recovery time {} ms",
                    fault.disrupted_writes,
                    r.as_millis()
                )?,
                None if fault.disrupted_writes == 0 => write!(f, "no write was disrupted")?,
                None => write!(
                    f,
                    "{} disrupted writes, no acknowledged write afterwards",
                    fault.disrupted_writes
                )?,
            }
        }
        for finding in &self.findings {
            write!(f, "\n  finding: {finding}")?;
        }
        Ok(())
    }
}

/// Checks a history with [`DEFAULT_SEARCH_BUDGET`]. `primary_dump` is the primary's final dump
/// (checked as a read after everything, for the last epoch); `backup_dump`, if given, must equal it.
pub fn check(
    history: &History,
    primary_dump: Option<&[(Bytes, Bytes)]>,
    backup_dump: Option<&[(Bytes, Bytes)]>,
) -> HistoryReport {
    check_with_budget(history, primary_dump, backup_dump, DEFAULT_SEARCH_BUDGET)
}

/// [`check`] with an explicit search budget per key history.
pub fn check_with_budget(
    history: &History,
    primary_dump: Option<&[(Bytes, Bytes)]>,
    backup_dump: Option<&[(Bytes, Bytes)]>,
    budget: u64,
) -> HistoryReport {
    let mut report = HistoryReport::default();
    count_outcomes(history, &mut report);
    linearizability(history, primary_dump, budget, &mut report);
    refused_effects(history, primary_dump, &mut report);
    if let (Some(p), Some(b)) = (primary_dump, backup_dump) {
        divergence(p, b, &mut report);
    }
    report.unavailable = unavailable_time(history);
    report.faults = fault_figures(history);
    report
}

fn count_outcomes(history: &History, report: &mut HistoryReport) {
    report.operations = history.ops.len();
    for op in &history.ops {
        let write = op.kind.is_write();
        match &op.outcome {
            o if o.is_definite() && write => report.acknowledged_writes += 1,
            o if o.is_definite() => {
                report.reads += 1;
                if op.server == Some(Server::Backup) {
                    report.reads_at_backup += 1;
                }
            }
            Observed::Refused(_) if write => report.refused += 1,
            Observed::Indeterminate(_) => report.indeterminate += 1,
            _ => report.failed += 1,
        }
    }
}

/// Per key and epoch: a linearization of the answers, then one that also ends in the final state.
fn linearizability(
    history: &History,
    primary_dump: Option<&[(Bytes, Bytes)]>,
    budget: u64,
    report: &mut HistoryReport,
) {
    let mut resets: Vec<Duration> = history
        .marks
        .iter()
        .filter(|m| m.kind == MarkKind::Reset)
        .map(|m| m.at)
        .collect();
    resets.sort();
    let last_epoch = resets.len();
    let epoch_at = |t: Duration| resets.iter().filter(|&&r| r <= t).count();
    // A write invoked before a reset and answered after it may have been first sent to the
    // restarted pair (a call queued while its connection was redialled): its effect may land in
    // either epoch, so each of them sees it as possibly-happened.
    let straddling: Vec<Operation> = history
        .ops
        .iter()
        .filter(|op| op.kind.is_write() && epoch_at(op.complete) > epoch_at(op.invoke))
        .map(|op| Operation {
            outcome: Observed::Indeterminate("straddles a reset".into()),
            ..op.clone()
        })
        .collect();
    let mut groups: BTreeMap<(usize, Bytes), Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        let (first, last) = (epoch_at(op.invoke), epoch_at(op.complete));
        if op.kind.is_write() && last > first {
            continue;
        }
        groups.entry((first, op.key.clone())).or_default().push(op);
    }
    for op in &straddling {
        for epoch in epoch_at(op.invoke)..=epoch_at(op.complete) {
            groups.entry((epoch, op.key.clone())).or_default().push(op);
        }
    }
    let finals: Option<BTreeMap<&Bytes, &Bytes>> =
        primary_dump.map(|d| d.iter().map(|(k, v)| (k, v)).collect());
    if let Some(finals) = &finals {
        for key in finals.keys() {
            groups.entry((last_epoch, (*key).clone())).or_default();
        }
    }
    for ((epoch, key), ops) in &groups {
        report.keys_checked += 1;
        report.max_ops_per_key = report.max_ops_per_key.max(ops.len());
        let final_value = match &finals {
            Some(f) if *epoch == last_epoch => Some(f.get(key).copied()),
            _ => None,
        };
        let shown = String::from_utf8_lossy(key);
        if final_value.is_some() {
            match check_key(ops, None, final_value, budget) {
                Verdict::Linearizable => continue,
                Verdict::Undecided { steps } => {
                    report.undecided += 1;
                    report.note(format!(
                        "key {shown} (epoch {epoch}): undecided after {steps} search steps"
                    ));
                    continue;
                }
                Verdict::Violation(_) => {}
            }
        }
        // Without the final state: tells a wrong answer from a wrong final state.
        match check_key(ops, None, None, budget) {
            Verdict::Linearizable if final_value.is_none() => {}
            Verdict::Linearizable => {
                report.lost_writes += 1;
                let fv = final_value.flatten();
                report.note(format!(
                    "key {shown}: the final dump holds {} but no linearization of its {} operations ends there (last acknowledged writes: {})",
                    fv.map(|v| format!("{:?}", String::from_utf8_lossy(v)))
                        .unwrap_or_else(|| "nothing".into()),
                    ops.len(),
                    last_acknowledged(ops, 3)
                ));
            }
            Verdict::Violation(cx) => {
                report.violations += 1;
                let stuck = cx
                    .stuck
                    .and_then(|i| ops.get(i))
                    .map(|op| describe(op))
                    .unwrap_or_else(|| "the final read".into());
                report.note(format!(
                    "key {shown} (epoch {epoch}): not linearizable; the longest explained sequence places {} of {} required operations, then cannot place {stuck} with the value {}",
                    cx.placed,
                    cx.required,
                    cx.state
                        .map(|v| format!("{:?}", String::from_utf8_lossy(&v)))
                        .unwrap_or_else(|| "absent".into())
                ));
            }
            Verdict::Undecided { steps } => {
                report.undecided += 1;
                report.note(format!(
                    "key {shown} (epoch {epoch}): undecided after {steps} search steps"
                ));
            }
        }
    }
}

/// Refused or unsent writes whose unique value shows up in an answer or in the final dump.
fn refused_effects(
    history: &History,
    primary_dump: Option<&[(Bytes, Bytes)]>,
    report: &mut HistoryReport,
) {
    let mut seen: HashSet<(&Bytes, &Bytes)> = history
        .ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Observed::Value(v) => Some((&op.key, v)),
            _ => None,
        })
        .collect();
    if let Some(dump) = primary_dump {
        seen.extend(dump.iter().map(|(k, v)| (k, v)));
    }
    // A value also carried by a write that may have happened proves nothing (values are meant to
    // be unique; this keeps a careless history from producing false alarms).
    let maybe_happened: HashSet<(&Bytes, &Bytes)> = history
        .ops
        .iter()
        .filter(|op| op.outcome.is_definite() || matches!(op.outcome, Observed::Indeterminate(_)))
        .filter_map(|op| op.kind.value().map(|v| (&op.key, v)))
        .collect();
    for op in &history.ops {
        let Some(value) = op.kind.value() else {
            continue;
        };
        let pair = (&op.key, value);
        if !seen.contains(&pair) || maybe_happened.contains(&pair) {
            continue;
        }
        match &op.outcome {
            Observed::Refused(why) => {
                report.refused_took_effect += 1;
                report.note(format!(
                    "{} was answered unavailable ({why}) but its value was seen",
                    describe(op)
                ));
            }
            Observed::Failed(why) => {
                report.unsent_took_effect += 1;
                report.note(format!(
                    "{} failed before it was sent ({why}) but its value was seen",
                    describe(op)
                ));
            }
            _ => {}
        }
    }
}

fn divergence(primary: &[(Bytes, Bytes)], backup: &[(Bytes, Bytes)], report: &mut HistoryReport) {
    let p: BTreeMap<&Bytes, &Bytes> = primary.iter().map(|(k, v)| (k, v)).collect();
    let b: BTreeMap<&Bytes, &Bytes> = backup.iter().map(|(k, v)| (k, v)).collect();
    let keys: std::collections::BTreeSet<&Bytes> = p.keys().chain(b.keys()).copied().collect();
    for key in keys {
        let (pv, bv) = (p.get(key), b.get(key));
        if pv != bv {
            report.diverged_keys += 1;
            let show = |v: Option<&&Bytes>| {
                v.map(|v| format!("{:?}", String::from_utf8_lossy(v)))
                    .unwrap_or_else(|| "absent".into())
            };
            report.note(format!(
                "key {}: primary holds {}, backup holds {}",
                String::from_utf8_lossy(key),
                show(pv),
                show(bv)
            ));
        }
    }
}

fn unavailable_time(history: &History) -> Duration {
    let write_ops = || history.ops.iter().filter(|op| op.kind.is_write());
    let mut acked: Vec<(Duration, Duration)> = write_ops()
        .filter(|op| op.outcome.is_definite())
        .map(|op| (op.invoke, op.complete))
        .collect();
    acked.sort();
    // earliest[i]: the earliest completion among acknowledged writes invoked at or after acked[i].
    let mut earliest = vec![Duration::MAX; acked.len() + 1];
    for i in (0..acked.len()).rev() {
        earliest[i] = earliest[i + 1].min(acked[i].1);
    }
    let end = history
        .ops
        .iter()
        .map(|op| op.complete)
        .max()
        .unwrap_or_default();
    let mut spans: Vec<(Duration, Duration)> = write_ops()
        .filter(|op| matches!(op.outcome, Observed::Refused(_)))
        .map(|op| {
            let first = acked.partition_point(|&(invoke, _)| invoke < op.invoke);
            let until = match earliest[first] {
                Duration::MAX => end,
                c => c,
            };
            (op.invoke, until.max(op.invoke))
        })
        .collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Duration, Duration)> = None;
    for (s, e) in spans {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

fn fault_figures(history: &History) -> Vec<FaultFigure> {
    let mut faults: Vec<_> = history
        .marks
        .iter()
        .filter(|m| m.kind == MarkKind::Fault)
        .collect();
    faults.sort_by_key(|m| m.at);
    let writes: Vec<&Operation> = history.ops.iter().filter(|op| op.kind.is_write()).collect();
    faults
        .iter()
        .enumerate()
        .map(|(i, mark)| {
            let until = faults.get(i + 1).map(|m| m.at).unwrap_or(Duration::MAX);
            let in_window = |op: &&&Operation| op.invoke >= mark.at && op.invoke < until;
            let disrupted: Vec<&&Operation> = writes
                .iter()
                .filter(in_window)
                .filter(|op| !op.outcome.is_definite())
                .collect();
            let recovery = disrupted.iter().map(|op| op.invoke).max().and_then(|last| {
                writes
                    .iter()
                    .filter(in_window)
                    .filter(|op| op.outcome.is_definite() && op.invoke > last)
                    .map(|op| op.complete)
                    .min()
                    .map(|c| c.saturating_sub(mark.at))
            });
            FaultFigure {
                label: mark.label.clone(),
                at: mark.at,
                disrupted_writes: disrupted.len(),
                recovery,
            }
        })
        .collect()
}

/// The last `n` acknowledged writes of a key, for a finding.
fn last_acknowledged(ops: &[&Operation], n: usize) -> String {
    let mut acked: Vec<&&Operation> = ops
        .iter()
        .filter(|op| op.kind.is_write() && op.outcome.is_definite())
        .collect();
    acked.sort_by_key(|op| op.complete);
    let shown: Vec<String> = acked.iter().rev().take(n).map(|op| describe(op)).collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join("; ")
    }
}

/// One operation in words: `client 3 update k=hot1 "c3.77" -> ok [1.204 s, 1.206 s]`, or
/// `client 2 get hot1 -> value "c3.77" at the backup [1.205 s, 1.205 s]`.
fn describe(op: &Operation) -> String {
    let value = op
        .kind
        .value()
        .map(|v| format!(" {:?}", String::from_utf8_lossy(v)))
        .unwrap_or_default();
    let outcome = match &op.outcome {
        Observed::Value(v) => format!("value {:?}", String::from_utf8_lossy(v)),
        other => format!("{other:?}"),
    };
    let at = op
        .server
        .map(|s| format!(" at the {}", s.name()))
        .unwrap_or_default();
    format!(
        "client {} {} {}{value} -> {outcome}{at} [{:.3} s, {:.3} s]",
        op.client,
        op.kind.name(),
        String::from_utf8_lossy(&op.key),
        op.invoke.as_secs_f64(),
        op.complete.as_secs_f64()
    )
}
