//! `/metrics` end to end: a real pair, QUIC and HTTP traffic, and the page parsed by the strict
//! Prometheus parser of `tests/common/prometheus.rs`, its counters checked exactly.

mod common;

use std::net::SocketAddr;

use serde_json::json;

use common::http::{get, post};
use common::prometheus::scrape;
use common::Pair;

#[tokio::test]
async fn metrics_parse_and_count_quic_and_http_traffic_exactly() {
    let pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");
    let quic = pair.primary_client().await;
    let before = scrape(p).await;

    const HTTP_INSERTS: usize = 7;
    const QUIC_INSERTS: usize = 5;
    for i in 0..HTTP_INSERTS {
        let r = post(
            p,
            "/kv/insert",
            &[("key", &format!("h{i}")), ("value", "v")],
        )
        .await;
        assert_eq!(r.json(), json!({"success": "true"}));
    }
    for i in 0..QUIC_INSERTS {
        quic.insert(format!("q{i}"), "v")
            .await
            .expect("quic insert");
    }
    post(p, "/kv/insert", &[("key", "h0"), ("value", "v")])
        .await
        .expect_refusal();
    quic.get("h1").await.expect("get");
    quic.get("missing").await.expect("get");

    let after = scrape(p).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let total = (HTTP_INSERTS + QUIC_INSERTS) as f64;
    assert_eq!(
        delta("quickv_ops_total", &[("op", "insert"), ("result", "ok")]),
        total
    );
    assert_eq!(
        delta(
            "quickv_ops_total",
            &[("op", "insert"), ("result", "exists")]
        ),
        1.0
    );
    assert_eq!(
        delta("quickv_ops_total", &[("op", "get"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        delta(
            "quickv_ops_total",
            &[("op", "get"), ("result", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        delta("quickv_op_duration_seconds_count", &[("op", "insert")]),
        total + 1.0
    );
    assert!(delta("quickv_op_duration_seconds_sum", &[("op", "insert")]) > 0.0);
    assert_eq!(
        delta(
            "quickv_op_duration_seconds_bucket",
            &[("op", "insert"), ("le", "+Inf")]
        ),
        total + 1.0
    );
    assert_eq!(after.value("quickv_store_keys", &[]), total);
    assert_eq!(after.value("quickv_store_bytes", &[]), total * 3.0);
    assert!(
        after.value("quickv_connections", &[]) >= 1.0,
        "the QUIC client is connected"
    );
    assert!(
        after.value("quickv_streams", &[]) >= 1.0,
        "and holds a stream open"
    );
    assert!(
        after.value("quickv_http_connections", &[]) >= 1.0,
        "this scrape"
    );
    assert!(after.value("quickv_ops_total", &[("op", "hello"), ("result", "ok")]) >= 1.0);
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "sync")]),
        1.0
    );
    assert_eq!(after.value("quickv_replication_link_up", &[]), 1.0);
    assert_eq!(after.value("quickv_replication_lag", &[]), 0.0);
    assert_eq!(
        after.sum("quickv_replication_lane_offset") - before.sum("quickv_replication_lane_offset"),
        after.sum("quickv_replication_lane_acked") - before.sum("quickv_replication_lane_acked"),
        "every offset sent was acknowledged"
    );
    assert!(
        after.sum("quickv_replication_lane_acked") - before.sum("quickv_replication_lane_acked")
            >= total,
        "each replicated write took a lane offset"
    );
    assert!(after.value("process_resident_memory_bytes", &[]) > 1e6);

    let backup = scrape(b).await;
    assert_eq!(
        backup.value("quickv_replication_state", &[("state", "sync")]),
        1.0
    );
    assert_eq!(backup.value("quickv_store_keys", &[]), total);
    assert_eq!(
        backup.value("quickv_replication_digest_mismatches_total", &[]),
        0.0
    );
    assert_eq!(
        backup.value(
            "quickv_info",
            &[
                ("role", "backup"),
                ("version", env!("CARGO_PKG_VERSION")),
                ("run_id", backup_run_id(b).await.as_str())
            ]
        ),
        1.0
    );
    for result in [
        "ok",
        "not_found",
        "exists",
        "unavailable",
        "indeterminate",
        "error",
    ] {
        assert_eq!(
            backup.value("quickv_ops_total", &[("op", "insert"), ("result", result)]),
            0.0,
            "replicated writes are not client requests on the backup"
        );
    }
}

/// The backup's run id, from its status page.
async fn backup_run_id(addr: SocketAddr) -> String {
    get(addr, "/kvman/status").await.json()["run_id"]
        .as_str()
        .expect("run_id")
        .to_string()
}
