//! The classic pressure run through the HTTP gateway, in its own test binary so that it does not
//! share the machine with the other classic tests (cargo runs test binaries one at a time).

mod common;
#[path = "classic/kit.rs"]
mod kit;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use common::http::call;
use kit::{assert_dumps, reap, Kit, BACKUP, PRIMARY};

/// Percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Sends `forms` to `path` on `addr`, all at once, each on its own connection; returns every
/// answer with its latency (connect included), in order.
async fn burst(
    addr: SocketAddr,
    path: &'static str,
    forms: Vec<String>,
) -> Vec<(Result<Value, String>, Duration)> {
    let tasks: Vec<_> = forms
        .into_iter()
        .map(|form| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = match call(addr, Method::POST, path, &form).await {
                    Ok((200, body)) => {
                        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
                    }
                    Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
                    Err(e) => Err(e),
                };
                (answer, sent.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}

/// The classic pressure run: 2000 concurrent clients each insert one key (about 60 bytes, value
/// about 70, form-encoded POST), then 2000 concurrent `POST /kv/get` with a form body. Every one
/// must succeed, and both servers' dumps must then hold all 2000. The latency percentiles are
/// printed (measured, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_run_2000_clients_through_the_gateway() {
    const CLIENTS: usize = 2000;
    let kit = Kit::new();
    let mut procs = [kit.start(PRIMARY), kit.start(BACKUP)];
    kit.wait_pair(&mut procs).await;
    let [p, _] = kit.http;
    let pairs: Vec<(String, String)> = (0..CLIENTS)
        .map(|i| {
            let key = format!("classic-pressure-key-{i:05}-{}", "k".repeat(33));
            let value = format!("classic-pressure-value-{i:05}-{}", "v".repeat(41));
            (key, value)
        })
        .collect();
    assert_eq!(pairs[0].0.len(), 60);
    assert_eq!(pairs[0].1.len(), 70);

    let run = async {
        let inserts = burst(
            p,
            "/kv/insert",
            pairs
                .iter()
                .map(|(k, v)| format!("key={k}&value={v}"))
                .collect(),
        )
        .await;
        let gets = burst(
            p,
            "/kv/get",
            pairs.iter().map(|(k, _)| format!("key={k}")).collect(),
        )
        .await;
        (inserts, gets)
    };
    let (inserts, gets) = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the pressure run finished in time");

    let mut failures = Vec::new();
    for ((key, _), (answer, _)) in pairs.iter().zip(&inserts) {
        match answer {
            Ok(doc) if doc["success"] == "true" => {}
            other => failures.push(format!("insert {key}: {other:?}")),
        }
    }
    for ((key, value), (answer, _)) in pairs.iter().zip(&gets) {
        match answer {
            Ok(doc) if doc["success"] == "true" && doc["value"] == value.as_str() => {}
            other => failures.push(format!("get {key}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        2 * CLIENTS,
        &failures[..failures.len().min(5)]
    );
    for (name, results) in [("insert", &inserts), ("get", &gets)] {
        let mut took: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
        took.sort();
        eprintln!(
            "pressure run, {CLIENTS} concurrent HTTP clients, {name}: p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms",
            percentile(&took, 50.0),
            percentile(&took, 99.0),
            percentile(&took, 100.0)
        );
    }
    let model: BTreeMap<String, String> = pairs.into_iter().collect();
    assert_dumps(&kit, &model, "after the pressure run").await;
    kit.stop(PRIMARY);
    kit.stop(BACKUP);
    reap(&mut procs);
}
