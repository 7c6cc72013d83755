//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! The format is small enough that a metrics crate would cost more compile time than it saves:
//! per family a `# HELP` and a `# TYPE` line, then `name{label="value",…} number` samples.
//! Histograms are `_bucket{le="…"}` samples, cumulative and ending in `le="+Inf"`, then `_sum`
//! and `_count`. Every known label combination is always present (zero until it happens), so a
//! rate over it never starts from a missing series.
//!
//! Rendering reads one [`Status`] (the same document `status` sends, built by [`Node::status`]:
//! relaxed counters and one short lock), the figures only this page shows (streams, the gateway's
//! connections and responses, [`crate::server::metrics::OpMetrics`], the store's bytes) and the
//! process's resident memory; it allocates, which is fine off the hot path.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use quickv_proto::status::{LaneStatus, ReplicationStatus, Status};

use crate::server::metrics::{LATENCY_BOUNDS_US, OP_NAMES, OUTCOME_NAMES};
use crate::server::node::{Node, Stats};

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every replication state name, for the one-hot `quickv_replication_state` gauge (kept equal to
/// [`quickv_core::state::State::name`] by a test).
pub const REPLICATION_STATES: [&str; 5] = [
    "cold_start",
    "warm_start",
    "bootstrap",
    "sync",
    "shutting_down",
];

/// Renders the whole page.
pub fn render(node: &Node) -> String {
    let status = node.status();
    let mut page = Page::default();
    identity(&mut page, &status);
    operations(&mut page, node);
    connections(&mut page, &status, &node.stats);
    store(&mut page, &status, node);
    if let Some(r) = &status.replication {
        replication(&mut page, &status.state, r);
    }
    page.out
}

/// Who this server is and how long it has run.
fn identity(page: &mut Page, status: &Status) {
    page.family(
        "quickv_info",
        "gauge",
        "Constant 1, labelled with this server's role, version and run id.",
    );
    page.sample(
        "quickv_info",
        &[
            ("role", &status.role),
            ("version", &status.version),
            ("run_id", &status.run_id),
        ],
        1,
    );
    page.gauge(
        "quickv_uptime_seconds",
        "Seconds since this server process started.",
        status.uptime_s,
    );
}

/// Requests answered and how long they took, by operation.
fn operations(page: &mut Page, node: &Node) {
    page.family(
        "quickv_ops_total",
        "counter",
        "Requests answered (QUIC and HTTP), by operation and outcome.",
    );
    for (op, op_name) in OP_NAMES.iter().enumerate() {
        for (outcome, outcome_name) in OUTCOME_NAMES.iter().enumerate() {
            page.sample(
                "quickv_ops_total",
                &[("op", op_name), ("result", outcome_name)],
                node.metrics.answered(op, outcome),
            );
        }
    }
    page.family(
        "quickv_op_duration_seconds",
        "histogram",
        "Time from routing a request to knowing its answer (a replicated write: until the backup's ack).",
    );
    for (op, op_name) in OP_NAMES.iter().enumerate() {
        let Some(h) = node.metrics.latency(op) else {
            continue;
        };
        for (bound, count) in LATENCY_BOUNDS_US.iter().zip(h.cumulative) {
            let le = seconds_from_us(*bound);
            page.sample(
                "quickv_op_duration_seconds_bucket",
                &[("op", op_name), ("le", &le)],
                count,
            );
        }
        page.sample(
            "quickv_op_duration_seconds_bucket",
            &[("op", op_name), ("le", "+Inf")],
            h.count(),
        );
        page.sample(
            "quickv_op_duration_seconds_sum",
            &[("op", op_name)],
            h.sum.as_secs_f64(),
        );
        page.sample(
            "quickv_op_duration_seconds_count",
            &[("op", op_name)],
            h.count(),
        );
    }
}

/// QUIC connections and streams, and the HTTP gateway's connections and responses.
fn connections(page: &mut Page, status: &Status, s: &Stats) {
    let get = |a: &AtomicU64| a.load(Relaxed);
    page.gauge(
        "quickv_connections",
        "QUIC client connections open.",
        status.connections,
    );
    page.counter(
        "quickv_connections_total",
        "QUIC client connections accepted.",
        status.connections_total,
    );
    page.counter(
        "quickv_connections_refused_total",
        "QUIC client connections refused at max_connections.",
        status.connections_refused,
    );
    page.gauge(
        "quickv_streams",
        "QUIC request streams open.",
        get(&s.streams),
    );
    page.counter(
        "quickv_streams_total",
        "QUIC request streams opened.",
        get(&s.streams_total),
    );
    page.counter(
        "quickv_bad_frames_total",
        "QUIC frames rejected as malformed or over a limit.",
        status.bad_frames,
    );
    page.gauge(
        "quickv_http_connections",
        "HTTP gateway connections open.",
        get(&s.http_connections),
    );
    page.counter(
        "quickv_http_connections_total",
        "HTTP gateway connections accepted.",
        get(&s.http_connections_total),
    );
    page.family(
        "quickv_http_responses_total",
        "counter",
        "HTTP gateway responses, by status class.",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        page.sample(
            "quickv_http_responses_total",
            &[("class", class)],
            get(&s.http_responses[i]),
        );
    }
}

/// The table's size and the process's memory.
fn store(page: &mut Page, status: &Status, node: &Node) {
    page.gauge("quickv_store_keys", "Entries in the store.", status.keys);
    page.gauge(
        "quickv_store_bytes",
        "Sum of key and value lengths in the store (excludes map overhead).",
        node.store.approx_bytes(),
    );
    let sessions = &status.sessions;
    page.gauge(
        "quickv_session_records",
        "Answers remembered in the session tables (for retried writes).",
        sessions.records,
    );
    page.gauge(
        "quickv_session_sessions",
        "Client sessions with records, counted per bucket.",
        sessions.sessions,
    );
    page.gauge(
        "quickv_session_bytes",
        "Bytes charged to the session tables (counted toward --max-memory).",
        sessions.bytes,
    );
    page.gauge(
        "quickv_session_budget_bytes",
        "Byte budget of the session tables.",
        sessions.budget_bytes,
    );
    page.counter(
        "quickv_session_evicted_total",
        "Sessions evicted to stay inside a session-table limit.",
        sessions.evicted,
    );
    page.counter(
        "quickv_session_swept_total",
        "Sessions dropped from the session tables as idle.",
        sessions.swept,
    );
    page.counter(
        "quickv_session_values_not_kept_total",
        "Deletes recorded as applied with the removed value not kept (over the size threshold).",
        sessions.values_not_kept,
    );
    if let Some(rss) = resident_bytes() {
        page.gauge(
            "process_resident_memory_bytes",
            "Resident set size of this process.",
            rss,
        );
    }
}

/// The replication families (primary and backup only).
fn replication(page: &mut Page, state_now: &str, r: &ReplicationStatus) {
    page.family(
        "quickv_replication_state",
        "gauge",
        "1 for the replication state this server is in, 0 for the others.",
    );
    for state in REPLICATION_STATES {
        page.sample(
            "quickv_replication_state",
            &[("state", state)],
            u8::from(state_now == state),
        );
    }
    page.gauge(
        "quickv_replication_link_up",
        "1 while the peer link is up.",
        u8::from(r.link_up),
    );
    page.gauge(
        "quickv_replication_current",
        "1 once this store is known current (synced in this process's life).",
        u8::from(r.current),
    );
    page.gauge(
        "quickv_replication_lag",
        "Writes sent to the backup and not yet acknowledged, all lanes.",
        r.lag,
    );
    per_lane(
        page,
        "quickv_replication_lane_pending",
        "Writes waiting for the backup's ack, per lane (always 0 on the backup).",
        &r.lanes,
        |l| l.pending,
    );
    per_lane(
        page,
        "quickv_replication_lane_offset",
        "Last offset sent (primary) or applied (backup), per lane, on the current link.",
        &r.lanes,
        |l| l.offset,
    );
    per_lane(
        page,
        "quickv_replication_lane_acked",
        "Last offset acknowledged (primary) or applied (backup), per lane, on the current link.",
        &r.lanes,
        |l| l.acked,
    );
    page.counter(
        "quickv_replication_links_total",
        "Peer links established.",
        r.links,
    );
    page.counter(
        "quickv_replication_bootstraps_total",
        "Bootstraps (transfers of at least one bucket) completed.",
        r.bootstraps,
    );
    page.counter(
        "quickv_replication_buckets_transferred_total",
        "Buckets copied by bootstraps.",
        r.buckets_transferred,
    );
    page.counter(
        "quickv_replication_resyncs_total",
        "Single-bucket resyncs after a digest mismatch.",
        r.resyncs,
    );
    page.counter(
        "quickv_replication_digest_checks_total",
        "Bucket digest checks sent (primary) or verified (backup).",
        r.digest_checks,
    );
    page.counter(
        "quickv_replication_digest_mismatches_total",
        "Bucket digest checks that found a difference.",
        r.digest_mismatches,
    );
}

/// One gauge family with a sample per lane (bucket), from the status's per-lane offsets.
fn per_lane(
    page: &mut Page,
    name: &str,
    help: &str,
    lanes: &[LaneStatus],
    pick: impl Fn(&LaneStatus) -> u64,
) {
    page.family(name, "gauge", help);
    for (lane, status) in lanes.iter().enumerate() {
        page.sample(name, &[("lane", &lane.to_string())], pick(status));
    }
}

/// A page being written.
#[derive(Default)]
struct Page {
    out: String,
}

impl Page {
    /// Starts a metric family: its HELP and TYPE lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled gauge sample.
    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A family with one unlabelled counter sample.
    fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }
}

/// A bucket bound in seconds, exactly (`25` µs → `"0.000025"`), without float rounding noise.
fn seconds_from_us(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The process's resident set size in bytes, from `VmRSS` in `/proc/self/status` (the same
/// figure as `resident` in `/proc/self/statm`, but in kB, so no page-size lookup — which would
/// need `unsafe` sysconf — is needed). `None` where there is no procfs.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickv_core::state::State;

    #[test]
    fn bounds_render_as_exact_seconds() {
        assert_eq!(seconds_from_us(25), "0.000025");
        assert_eq!(seconds_from_us(2_500), "0.0025");
        assert_eq!(seconds_from_us(1_000_000), "1");
        assert_eq!(seconds_from_us(2_500_000), "2.5");
    }

    #[test]
    fn the_state_list_matches_the_machine() {
        let states = [
            State::ColdStart,
            State::WarmStart,
            State::Bootstrap {
                sending: true,
                buckets: 1,
            },
            State::Sync,
            State::ShuttingDown,
        ];
        let names: Vec<_> = states.iter().map(State::name).collect();
        assert_eq!(names, REPLICATION_STATES);
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut page = Page::default();
        page.family("m", "gauge", "a \\ b\nc");
        page.sample("m", &[("l", "q\"x\\y\nz")], 1);
        page.sample("m", &[], 2.5);
        assert_eq!(
            page.out,
            "# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{l=\"q\\\"x\\\\y\\nz\"} 1\nm 2.5\n"
        );
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|b| b > 0));
        }
    }
}
