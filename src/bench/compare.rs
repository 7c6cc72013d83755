//! `quickv bench table`: turns a directory of run reports into the markdown tables of
//! `docs/benchmarks.md`, so `bench/compare.sh` stays a thin script and the arithmetic is tested.
//!
//! Each run is a `report.json` (written by `--hdr-out`) whose `label` names its *series* (e.g.
//! `quickv`, `redis`, `quickv-t2`). Rows are keyed by workload (the mix) and requests in flight;
//! the main table puts the base series beside the other with the ratio base/other per row; the
//! ceiling table puts each depth's `get` beside its `ping` for the base series; every extra series
//! gets a table against the base. Ratios are always base/other: above 1 means the base series did
//! more operations per second (or, for p99, had the *slower* tail).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The figures of one run that the tables use.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The series (the run's `--label`).
    pub series: String,
    /// The mix, e.g. `get=1`.
    pub workload: String,
    /// Requests in flight.
    pub in_flight: u64,
    /// Answered requests per second.
    pub ops: f64,
    /// Median latency, µs.
    pub p50: f64,
    /// 99th percentile latency, µs.
    pub p99: f64,
    /// Failed requests (any kind).
    pub errors: u64,
    /// Answers off the success path (not found / exists).
    pub misses: u64,
}

impl Row {
    /// Reads the fields from a `--json` report.
    pub fn from_report(v: &serde_json::Value) -> Option<Row> {
        let total = v.get("total")?;
        let counts = total.get("counts")?;
        let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let latency = total.get("latency_us")?;
        Some(Row {
            series: v.get("label")?.as_str()?.to_owned(),
            workload: workload_name(v.get("config")?.get("mix")?.as_str()?),
            in_flight: n(v, "in_flight")?,
            ops: f(total, "ops_per_sec")?,
            p50: f(latency, "p50")?,
            p99: f(latency, "p99")?,
            errors: ["unavailable", "indeterminate", "timeout", "other"]
                .iter()
                .filter_map(|k| n(counts, k))
                .sum(),
            misses: n(counts, "not_found").unwrap_or(0) + n(counts, "exists").unwrap_or(0),
        })
    }
}

/// `get=1` → `get`; mixes stay as written.
fn workload_name(mix: &str) -> String {
    match mix.split_once('=') {
        Some((kind, _)) if !mix.contains(',') => kind.to_owned(),
        _ => mix.to_owned(),
    }
}

/// Every `report.json` under `dirs` (searched one level deep as well).
pub fn load_rows(dirs: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_reports(dir, 2, &mut files)?;
    }
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let row = Row::from_report(&value)
            .with_context(|| format!("{} is not a quickv bench report", file.display()))?;
        rows.push(row);
    }
    Ok(rows)
}

fn collect_reports(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let report = dir.join("report.json");
    if report.is_file() {
        out.push(report);
    }
    if depth == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_reports(&path, depth - 1, out)?;
        }
    }
    Ok(())
}

/// Rows of one series, by (workload, in flight).
type Series<'a> = BTreeMap<(String, u64), &'a Row>;

fn series<'a>(rows: &'a [Row], name: &str) -> Series<'a> {
    rows.iter()
        .filter(|r| r.series == name)
        .map(|r| ((r.workload.clone(), r.in_flight), r))
        .collect()
}

/// Workload order in tables: reads, writes, then the ceiling, then anything else.
fn workload_rank(w: &str) -> (usize, String) {
    let rank = ["get", "insert", "update", "delete", "ping"]
        .iter()
        .position(|k| *k == w)
        .unwrap_or(9);
    (rank, w.to_owned())
}

/// `a / b` with two decimals, or `–` when it is undefined.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

/// A cell for a run: ops/s, p50, p99, with a marker when it had errors or misses.
fn cells(row: Option<&&Row>) -> [String; 3] {
    match row {
        Some(r) => {
            let mut ops = format!("{:.0}", r.ops);
            if r.errors > 0 {
                let _ = write!(ops, " ⚠{} err", r.errors);
            }
            if r.misses > 0 && r.workload != "delete" {
                let _ = write!(ops, " ({} miss)", r.misses);
            }
            [ops, format!("{:.0}", r.p50), format!("{:.0}", r.p99)]
        }
        None => ["–".into(), "–".into(), "–".into()],
    }
}

/// The markdown tables: `base` against `other`, `base`'s get against its ping, and `base` against
/// each of `extra`.
pub fn tables(rows: &[Row], base: &str, other: &str, extra: &[String]) -> String {
    let mut out = String::new();
    let b = series(rows, base);
    let o = series(rows, other);
    let mut keys: Vec<(String, u64)> = b.keys().chain(o.keys()).cloned().collect();
    keys.sort_by_key(|(w, n)| (workload_rank(w), *n));
    keys.dedup();

    let _ = writeln!(
        out,
        "| workload | in flight | {base} ops/s | p50 µs | p99 µs | {other} ops/s | p50 µs | p99 µs | ops/s {base}/{other} | p99 {base}/{other} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for key in &keys {
        let (rb, ro) = (b.get(key), o.get(key));
        let [b_ops, b_p50, b_p99] = cells(rb);
        let [o_ops, o_p50, o_p99] = cells(ro);
        let (ops_ratio, p99_ratio) = match (rb, ro) {
            (Some(x), Some(y)) => (ratio(x.ops, y.ops), ratio(x.p99, y.p99)),
            _ => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {b_ops} | {b_p50} | {b_p99} | {o_ops} | {o_p50} | {o_p99} | {ops_ratio} | {p99_ratio} |",
            key.0, key.1
        );
    }

    let depths: Vec<u64> = {
        let mut d: Vec<u64> = b.keys().map(|(_, n)| *n).collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    let ceiling: Vec<String> = depths
        .iter()
        .filter_map(|&n| {
            let get = b.get(&("get".to_owned(), n))?;
            let ping = b.get(&("ping".to_owned(), n))?;
            Some(format!(
                "| {n} | {:.0} | {:.0} | {} |",
                get.ops,
                ping.ops,
                ratio(get.ops, ping.ops)
            ))
        })
        .collect();
    if !ceiling.is_empty() {
        let _ = writeln!(
            out,
            "\n| in flight | {base} get ops/s | {base} ping ops/s | get/ping |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|");
        for line in ceiling {
            let _ = writeln!(out, "{line}");
        }
    }

    for name in extra {
        let e = series(rows, name);
        if e.is_empty() {
            continue;
        }
        let mut keys: Vec<(String, u64)> = e.keys().cloned().collect();
        keys.sort_by_key(|(w, n)| (workload_rank(w), *n));
        let _ = writeln!(
            out,
            "\n| workload | in flight | {base} ops/s | p99 µs | {name} ops/s | p99 µs | ops/s {base}/{name} | p99 {base}/{name} |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for key in keys {
            let (rb, re) = (b.get(&key), e.get(&key));
            let [b_ops, _, b_p99] = cells(rb);
            let [e_ops, _, e_p99] = cells(re);
            let (r_ops, r_p99) = match (rb, re) {
                (Some(x), Some(y)) => (ratio(x.ops, y.ops), ratio(x.p99, y.p99)),
                _ => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {b_ops} | {b_p99} | {e_ops} | {e_p99} | {r_ops} | {r_p99} |",
                key.0, key.1
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(series: &str, workload: &str, n: u64, ops: f64, p99: f64) -> Row {
        Row {
            series: series.into(),
            workload: workload.into(),
            in_flight: n,
            ops,
            p50: p99 / 2.0,
            p99,
            errors: 0,
            misses: 0,
        }
    }

    #[test]
    fn ratios_are_base_over_other_per_row() {
        let rows = vec![
            row("quickv", "get", 64, 500_000.0, 400.0),
            row("redis", "get", 64, 50_000.0, 2_000.0),
            row("quickv", "ping", 64, 600_000.0, 300.0),
            row("quickv", "update", 1, 10_000.0, 150.0),
            row("quickv-t2", "get", 64, 250_000.0, 900.0),
        ];
        let md = tables(&rows, "quickv", "redis", &["quickv-t2".into()]);
        assert!(
            md.contains("| get | 64 | 500000 | 200 | 400 | 50000 | 1000 | 2000 | 10.00 | 0.20 |"),
            "{md}"
        );
        // A row with one side missing shows dashes, not a made-up ratio.
        assert!(
            md.contains("| update | 1 | 10000 | 75 | 150 | – | – | – | – | – |"),
            "{md}"
        );
        // get before update before ping.
        let (g, u, p) = (
            md.find("| get | 64").unwrap_or(0),
            md.find("| update |").unwrap_or(0),
            md.find("| ping | 64").unwrap_or(0),
        );
        assert!(g < u && u < p, "{md}");
        assert!(md.contains("| 64 | 500000 | 600000 | 0.83 |"), "{md}");
        assert!(
            md.contains("| get | 64 | 500000 | 400 | 250000 | 900 | 2.00 | 0.44 |"),
            "{md}"
        );
    }

    #[test]
    fn errors_are_shown_in_the_cell() {
        let mut r = row("quickv", "insert", 16, 1000.0, 10.0);
        r.errors = 3;
        let md = tables(&[r], "quickv", "redis", &[]);
        assert!(md.contains("1000 ⚠3 err"), "{md}");
    }

    #[test]
    fn rows_read_from_reports() {
        let v = serde_json::json!({
            "label": "redis",
            "in_flight": 16,
            "config": {"mix": "insert=1"},
            "total": {
                "ops_per_sec": 1234.5,
                "latency_us": {"p50": 10.0, "p99": 20.0},
                "counts": {"ok": 5, "not_found": 0, "exists": 1, "unavailable": 0,
                           "indeterminate": 2, "timeout": 0, "other": 1}
            }
        });
        let r = Row::from_report(&v).expect("a row");
        assert_eq!(r.workload, "insert");
        assert_eq!((r.errors, r.misses, r.in_flight), (3, 1, 16));
        assert!(Row::from_report(&serde_json::json!({"label": "x"})).is_none());
    }
}
