//! End-to-end tests of `quickv bench` against a real standalone server: short runs, checked
//! through the JSON report and the files `--hdr-out` writes.

mod common;

use common::{cli, free_addr, fresh_certs, ServerProc};

/// Flags that keep a run short and quiet.
const SHORT: &[&str] = &[
    "--warmup",
    "100ms",
    "--duration",
    "400ms",
    "--progress",
    "off",
    "--keys",
    "2000",
];

fn bench_json(server: &ServerProc, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(SHORT);
    all.extend_from_slice(args);
    let (code, out, err) = cli(server.addr, &server.certs, &all);
    assert_eq!(code, 0, "bench failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report["total"]["counts"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {field} in {report}"))
}

#[test]
fn closed_loop_get_writes_hdr_files_and_plots() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("get");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let report = bench_json(
        &server,
        &[
            "--workload",
            "get",
            "--streams",
            "2",
            "--pipeline",
            "4",
            "--hdr-out",
            dir_arg,
            "--label",
            "e2e",
        ],
    );
    assert_eq!(report["label"], "e2e");
    assert_eq!(report["in_flight"], 8);
    assert_eq!(report["preload"]["stored"], 2000);
    assert!(count(&report, "ok") > 0, "{report}");
    assert_eq!(count(&report, "not_found"), 0, "the keyspace was preloaded");
    for kind in ["unavailable", "indeterminate", "timeout", "other"] {
        assert_eq!(count(&report, kind), 0, "{report}");
    }
    let p = &report["total"]["latency_us"];
    assert!(p["p50"].as_f64() <= p["p99"].as_f64() && p["p99"].as_f64() <= p["max"].as_f64());

    let hgrm = std::fs::read_to_string(dir.join("get.hgrm")).expect("get.hgrm");
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    let hlog = std::fs::read_to_string(dir.join("get.hlog")).expect("get.hlog");
    assert!(hlog.contains("Tag=get,"), "{hlog}");
    assert!(dir.join("report.json").is_file());

    let plot = out.path().join("plot");
    let (code, stdout, err) = cli(
        server.addr,
        &server.certs,
        &[
            "bench",
            "plot",
            dir_arg,
            "--out",
            plot.to_str().expect("utf-8"),
        ],
    );
    if err.contains("no TrueType font") {
        eprintln!("skipping the plot check: {err}");
        return;
    }
    assert_eq!(code, 0, "plot failed: {err}");
    assert!(
        stdout.contains("plot.svg") && stdout.contains("plot.png"),
        "{stdout}"
    );
    let png = std::fs::read(plot.with_extension("png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn inserts_use_fresh_keys_and_mixes_report_each_kind() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let report = bench_json(&server, &["--workload", "insert"]);
    assert!(count(&report, "ok") > 0);
    assert_eq!(count(&report, "exists"), 0, "inserts must hit fresh keys");
    // A second insert run against the same server still only creates keys.
    let again = bench_json(&server, &["--workload", "insert"]);
    assert_eq!(count(&again, "exists"), 0);

    let mix = bench_json(&server, &["--mix", "get=3,update=1", "--dist", "zipfian"]);
    let ops: Vec<&str> = mix["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["op"].as_str())
        .collect();
    assert_eq!(ops, ["get", "update"]);
    assert!(mix["ops"][1]["counts"]["ok"].as_u64() > Some(0));
}

#[test]
fn open_loop_keeps_to_a_modest_schedule() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let report = bench_json(&server, &["--workload", "ping", "--rate", "2000"]);
    let ol = &report["open_loop"];
    assert_eq!(ol["scheduled"], 1000, "2000/s over 0.5 s");
    assert_eq!(ol["not_sent"], 0, "{ol}");
    // Answered in the measured 0.4 s: about 800.
    let answered = count(&report, "ok");
    assert!((700..=900).contains(&answered), "{answered}");
}

#[test]
fn refuses_targets_off_this_machine() {
    let certs = fresh_certs();
    let (code, _, err) = cli(
        "127.0.0.1:1".parse().expect("addr"),
        certs.path(),
        &["bench", "--target", "192.0.2.1:4470", "--duration", "1s"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a loopback address"), "{err}");
}
