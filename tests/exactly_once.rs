//! Exactly-once writes: session-stamped writes retried across primary SIGKILLs (real pair of
//! processes, real QUIC and TLS), and the session table's answers seen from the wire.
//!
//! - `retried_writes_across_primary_sigkills_apply_once_and_end_definite`: clients run
//!   insert → update → delete on keys of their own while the primary is SIGKILLed and restarted
//!   (taking the backup's data) twice. A write applied twice shows as a wrong answer (a fresh
//!   insert answered `exists`, a delete answered `not found` or with a value it never had); a
//!   write applied zero times after an `ok` shows as a key left over or missing in the final dumps.
//! - `kill_hammer_with_retries_is_linearizable_and_leaves_no_indeterminate_write`: the fault
//!   scenario of `tests/faults.rs` (hot keys, racing writers, history checker) with retries on and
//!   two primary kills; the checker must be clean and no write may be left indeterminate.
//! - `a_retry_gets_the_original_answer_and_an_evicted_one_a_clear_error`: stamped frames sent by
//!   hand: a duplicate gets the first answer, a retry below the window `session expired`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv::history::{check, Recorder, Workload};
use quickv_client::{Client, ClientConfig, ClientError};
use quickv_proto::{
    ErrorCode, Op, Reply, Request, Response, SessionWrite, WriteStamp, PROTOCOL_VERSION,
};
use tokio_util::sync::CancellationToken;

use common::{exchange, wait_state, Pair};

/// Longest wait for any condition.
const PATIENCE: Duration = Duration::from_secs(30);
/// Writes to see acknowledged between two faults.
const PROGRESS: u64 = 150;

/// A client that rides out a primary restart: fails fast on a dead connection, retries writes for
/// up to 30 s.
fn retrying_config(certs: &std::path::Path) -> ClientConfig {
    ClientConfig::builder(certs)
        .streams(1)
        .connect_timeout(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .backoff(Duration::from_millis(20), Duration::from_millis(400))
        .retry_writes(true)
        .build()
}

/// What the key-per-client workers saw.
#[derive(Default)]
struct Tally {
    /// Writes answered as expected.
    ok: AtomicU64,
    /// Writes answered `indeterminate` (the goal is none).
    indeterminate: AtomicU64,
    /// Answers that betray a double (or missing) application, with what was seen.
    wrong: std::sync::Mutex<Vec<String>>,
    /// `session expired` answers (none expected: nothing is evicted at these sizes).
    expired: AtomicU64,
    /// Attempts the clients resent with the same stamp.
    retries: AtomicU64,
}

/// One write until it gets a definite answer about itself: a refusal before it was sent
/// (`unavailable`, no connection) is retried as a new call, since it never took effect.
async fn definite(client: &Client, op: Op) -> Option<Reply> {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        match client.call(op.clone()).await {
            Ok(Reply::Unavailable(_)) | Err(ClientError::Connection(_)) => {}
            Ok(reply) => return Some(reply),
            Err(err) => panic!("{} failed: {err}", op.name()),
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Insert, update, delete on keys `c<id>-<n>`, until stopped (finishing the current triple).
async fn worker(client: Client, id: u32, tally: Arc<Tally>, stop: CancellationToken) {
    for n in 0..100_000u64 {
        if stop.is_cancelled() {
            break;
        }
        let key = Bytes::from(format!("c{id}-{n}"));
        let steps = [
            (
                Op::Insert {
                    key: key.clone(),
                    value: Bytes::from("a"),
                },
                Reply::Ok,
            ),
            (
                Op::Update {
                    key: key.clone(),
                    value: Bytes::from("b"),
                },
                Reply::Ok,
            ),
            (
                Op::Delete { key: key.clone() },
                Reply::Value(Bytes::from("b")),
            ),
        ];
        for (op, expected) in steps {
            let name = op.name();
            let Some(reply) = definite(&client, op).await else {
                tally.wrong.lock().expect("tally").push(format!(
                    "{name} {key:?}: no answer at all within {:?}",
                    PATIENCE * 2
                ));
                return;
            };
            match reply {
                r if r == expected => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Indeterminate(_) => {
                    tally.indeterminate.fetch_add(1, Ordering::Relaxed);
                    // Its fate is unknown: the rest of this key's triple cannot be judged.
                    break;
                }
                Reply::Error {
                    code: ErrorCode::SessionExpired,
                    ..
                } => {
                    tally.expired.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                other => {
                    tally.wrong.lock().expect("tally").push(format!(
                        "{name} {key:?}: expected {expected:?}, got {other:?}"
                    ));
                    break;
                }
            }
        }
    }
    tally
        .retries
        .fetch_add(client.write_retries(), Ordering::Relaxed);
    client.close().await;
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs the primary, waits until the backup noticed, restarts the primary (which takes the
/// backup's data) and waits for sync.
async fn kill_and_restart_primary(pair: &mut Pair) {
    pair.kill_primary();
    wait_state(pair.backup_addr, pair.certs.path(), "cold_start").await;
    pair.start_primary();
    pair.wait_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_writes_across_primary_sigkills_apply_once_and_end_definite() {
    let mut pair = Pair::start(&[]).await;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for id in 0..4 {
        let client = Client::connect(
            &pair.primary_addr.to_string(),
            &retrying_config(pair.certs.path()),
        )
        .await
        .expect("connect");
        workers.push(tokio::spawn(worker(
            client,
            id,
            tally.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..2 {
        let target = tally.ok.load(Ordering::Relaxed) + PROGRESS;
        wait_for("progress", || tally.ok.load(Ordering::Relaxed) >= target).await;
        kill_and_restart_primary(&mut pair).await;
    }
    let target = tally.ok.load(Ordering::Relaxed) + PROGRESS;
    wait_for("progress after the last restart", || {
        tally.ok.load(Ordering::Relaxed) >= target
    })
    .await;
    stop.cancel();
    for w in workers {
        tokio::time::timeout(PATIENCE * 3, w)
            .await
            .expect("workers finish")
            .expect("worker");
    }
    let wrong = tally.wrong.lock().expect("tally").clone();
    let indeterminate = tally.indeterminate.load(Ordering::Relaxed);
    let expired = tally.expired.load(Ordering::Relaxed);
    let retries = tally.retries.load(Ordering::Relaxed);
    println!(
        "{} writes answered as expected, {retries} attempts resent, {indeterminate} \
         indeterminate, {expired} expired, {} wrong",
        tally.ok.load(Ordering::Relaxed),
        wrong.len()
    );
    assert!(wrong.is_empty(), "writes applied twice or lost: {wrong:#?}");
    assert_eq!(
        indeterminate, 0,
        "every write must end with a definite answer"
    );
    assert_eq!(expired, 0, "nothing is evicted at this size");
    // Four clients write back to back: each kill cuts some of their writes off mid-flight.
    assert!(
        retries > 0,
        "no write was in flight at either kill: the test proved nothing"
    );
    // Every triple that ran to its end left nothing behind; the dumps must agree and be empty.
    let dump = pair.assert_converged().await;
    assert!(dump.is_empty(), "keys left over: {dump:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_hammer_with_retries_is_linearizable_and_leaves_no_indeterminate_write() {
    let mut pair = Pair::start(&[]).await;
    let rec = Recorder::new();
    let mut w = Workload::new(
        pair.primary_addr.to_string(),
        retrying_config(pair.certs.path()),
    );
    w.clients = 6;
    w.hot_keys = 2;
    w.ops_per_round = 60;
    w.ops_per_client = 6_000;
    w.max_time = Duration::from_secs(90);
    // Longer than the client's own 30 s deadline: the client decides, the load never abandons.
    w.call_timeout = Duration::from_secs(45);
    w.seed = 41;
    w.key_prefix = "x".into();
    let stop = CancellationToken::new();
    let load = tokio::spawn({
        let (rec, stop) = (rec.clone(), stop.clone());
        async move { w.run(&rec, stop).await }
    });
    for round in 0..2 {
        let target = rec.acknowledged_writes() + PROGRESS;
        wait_for("acknowledged writes", || {
            rec.acknowledged_writes() >= target
        })
        .await;
        rec.mark_fault(format!("primary SIGKILL {round}"));
        kill_and_restart_primary(&mut pair).await;
    }
    let target = rec.acknowledged_writes() + PROGRESS;
    wait_for("acknowledged writes after the last restart", || {
        rec.acknowledged_writes() >= target
    })
    .await;
    stop.cancel();
    let figures = load.await.expect("load");
    pair.wait_sync().await;
    let primary_dump = pair.assert_converged().await;
    let backup_dump = pair.backup_client().await.dump().await.expect("dump");
    let report = check(&rec.history(), Some(&primary_dump), Some(&backup_dump));
    println!(
        "{} operations, {} indeterminate writes left after retries\n{report}",
        figures.operations,
        rec.indeterminate_writes()
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        rec.indeterminate_writes(),
        0,
        "retries must turn every indeterminate write into a definite answer"
    );
    assert!(
        report.acknowledged_writes as u64 >= 3 * PROGRESS,
        "{report}"
    );
}

fn stamped(id: u64, op: Op, seq: u64, age_ms: u32) -> Request {
    Request {
        id,
        op,
        session: Some(SessionWrite {
            stamp: WriteStamp::new(0x5E55_1017, seq),
            age_ms,
        }),
    }
}

#[tokio::test]
async fn a_retry_gets_the_original_answer_and_an_evicted_one_a_clear_error() {
    let pair = Pair::start(&["--session-window", "1"]).await;
    let cfg = common::raw_client_config(pair.certs.path(), quickv_net::tls::Identity::Client);
    let (_endpoint, conn) = common::raw_connection(pair.primary_addr, cfg).await;
    let k = || Bytes::from_static(b"k");
    let insert = |v: &'static str| Op::Insert {
        key: k(),
        value: Bytes::from_static(v.as_bytes()),
    };
    let reply = |answers: Vec<Response>| {
        assert_eq!(answers.len(), 1, "{answers:?}");
        answers.into_iter().next().expect("one").reply
    };
    // Applied once: ok.
    let first = exchange(&conn, true, &[stamped(1, insert("v1"), 1, 0)]).await;
    assert_eq!(reply(first), Reply::Ok);
    // The same write again (a retry): the original answer, not `exists`, and nothing changes.
    let again = exchange(&conn, false, &[stamped(2, insert("v2"), 1, 40)]).await;
    assert_eq!(reply(again), Reply::Ok);
    // A new write of the same session is decided afresh.
    let fresh = exchange(&conn, false, &[stamped(3, insert("v3"), 2, 0)]).await;
    assert_eq!(reply(fresh), Reply::Exists);
    // A delete, and its retry: the same old value both times.
    let del = || Op::Delete { key: k() };
    let d1 = exchange(&conn, false, &[stamped(4, del(), 3, 0)]).await;
    assert_eq!(reply(d1), Reply::Value(Bytes::from_static(b"v1")));
    let d2 = exchange(&conn, false, &[stamped(5, del(), 3, 15)]).await;
    assert_eq!(reply(d2), Reply::Value(Bytes::from_static(b"v1")));
    // Insert again (seq 4): with a window of 1, the delete's record (seq 3) is evicted, so its
    // retry must be refused in plain words, and not applied again.
    let i4 = exchange(&conn, false, &[stamped(6, insert("v4"), 4, 0)]).await;
    assert_eq!(reply(i4), Reply::Ok);
    let late = exchange(&conn, false, &[stamped(7, del(), 3, 60)]).await;
    match reply(late) {
        Reply::Error {
            code: ErrorCode::SessionExpired,
            message,
        } => assert!(message.contains("not applied again"), "{message}"),
        other => panic!("expected session expired, got {other:?}"),
    }
    let client = pair.primary_client().await;
    assert_eq!(
        client.get("k").await.expect("get"),
        Some(Bytes::from_static(b"v4")),
        "the expired retry did not delete the key again"
    );
    // The record travelled to the backup with the write: kill the primary, restart it from the
    // backup's data, and the retry of seq 4 still gets its original answer.
    drop(client);
    conn.close(0u32.into(), b"done");
    let mut pair = pair;
    kill_and_restart_primary(&mut pair).await;
    let cfg = common::raw_client_config(pair.certs.path(), quickv_net::tls::Identity::Client);
    let (_endpoint2, conn2) = common::raw_connection(pair.primary_addr, cfg).await;
    let after = exchange(&conn2, true, &[stamped(1, insert("v5"), 4, 9_000)]).await;
    assert_eq!(reply(after), Reply::Ok, "the record survived the restart");
    // A version 1 client is still served (it sends no stamps), an unknown version is refused
    // in plain words.
    for (version, served) in [(1u16, true), (PROTOCOL_VERSION + 1, false)] {
        let cfg = common::raw_client_config(pair.certs.path(), quickv_net::tls::Identity::Client);
        let (_e, c) = common::raw_connection(pair.primary_addr, cfg).await;
        match reply(exchange(&c, false, &[Request::new(1, Op::Hello { version })]).await) {
            Reply::Hello { version: v, .. } if served => assert_eq!(v, version),
            Reply::Error {
                code: ErrorCode::UnsupportedVersion,
                message,
            } if !served => assert!(message.contains("speaks versions"), "{message}"),
            other => panic!("hello {version}: {other:?}"),
        }
    }
}
