//! End-to-end replication tests: real primary and backup processes, real QUIC and TLS, SIGKILL.
//! (Tests that play one side of the peer link byte by byte are in tests/replication_peer.rs.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use quickv_client::{Client, ClientError};
use quickv_net::tls::{self, CertPaths};
use quickv_proto::{Op, Reply};

use common::{connect, signal, wait_state, Pair};

#[tokio::test]
async fn writes_replicate_and_both_stores_converge() {
    let pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    for i in 0..200 {
        p.insert(format!("k{i}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    for i in 0..200 {
        match i % 3 {
            0 => p.update(format!("k{i}"), "updated").await.expect("update"),
            1 => assert_eq!(
                p.delete(format!("k{i}")).await.expect("delete"),
                Bytes::from(format!("v{i}"))
            ),
            _ => {}
        }
    }
    assert_eq!(p.insert("k0", "again").await, Err(ClientError::Exists));
    let dump = pair.assert_converged().await;
    assert_eq!(dump.len(), 200 - 67);
    // The backup serves reads but refuses writes.
    let b = pair.backup_client().await;
    assert_eq!(
        b.get("k0").await.expect("get"),
        Some(Bytes::from("updated"))
    );
    assert!(matches!(
        b.insert("x", "y").await,
        Err(ClientError::Unavailable(_))
    ));
    let status = p.status_json().await.expect("status");
    assert_eq!(status["state"], "sync");
    assert_eq!(status["link_up"], true);
    assert_eq!(status["lag"], 0);
}

#[tokio::test]
async fn with_the_backup_down_writes_are_refused_reads_served_then_it_resyncs() {
    let mut pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    p.insert("a", "1").await.expect("insert");
    pair.kill_backup();
    wait_state(pair.primary_addr, pair.certs.path(), "cold_start").await;
    // Refused at once (not after a timeout), and never applied.
    assert!(matches!(
        p.insert("b", "2").await,
        Err(ClientError::Unavailable(_))
    ));
    assert!(matches!(
        p.update("a", "9").await,
        Err(ClientError::Unavailable(_))
    ));
    assert_eq!(
        p.get("a").await.expect("reads still work"),
        Some(Bytes::from("1"))
    );
    assert_eq!(
        p.get("b").await.expect("get"),
        None,
        "a refused write never takes effect"
    );
    pair.start_backup();
    pair.wait_sync().await;
    p.insert("b", "2").await.expect("writes accepted again");
    let dump = pair.assert_converged().await;
    assert_eq!(
        dump,
        vec![
            (Bytes::from("a"), Bytes::from("1")),
            (Bytes::from("b"), Bytes::from("2"))
        ]
    );
    let status = p.status_json().await.expect("status");
    assert!(
        status["bootstraps"].as_u64().expect("bootstraps") >= 1,
        "{status}"
    );
}

#[tokio::test]
async fn a_restarted_primary_refuses_reads_until_it_takes_the_data_from_the_backup() {
    let mut pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    for i in 0..500 {
        p.insert(format!("key{i}"), format!("value{i}"))
            .await
            .expect("insert");
    }
    pair.kill_primary();
    // Freeze the backup so the new primary cannot sync yet.
    let backup_pid = pair.backup.as_ref().expect("backup").child.id();
    signal(backup_pid, "STOP");
    pair.start_primary();
    let p = pair.primary_client().await;
    match p.get("key1").await {
        Err(ClientError::Unavailable(reason)) => {
            assert!(reason.contains("not yet synced"), "{reason}")
        }
        other => panic!("a restarted primary must not answer from its empty store: {other:?}"),
    }
    assert!(matches!(
        p.insert("new", "x").await,
        Err(ClientError::Unavailable(_))
    ));
    signal(backup_pid, "CONT");
    pair.wait_sync().await;
    assert_eq!(
        p.get("key1").await.expect("get"),
        Some(Bytes::from("value1"))
    );
    let dump = pair.assert_converged().await;
    assert_eq!(dump.len(), 500);
}

#[tokio::test]
async fn with_both_servers_killed_the_pair_restarts_empty_and_serves() {
    let mut pair = Pair::start(&[]).await;
    pair.primary_client()
        .await
        .insert("a", "1")
        .await
        .expect("insert");
    pair.kill_primary();
    pair.kill_backup();
    pair.start_backup();
    pair.start_primary();
    pair.wait_sync().await;
    let p = pair.primary_client().await;
    assert_eq!(p.count().await.expect("count"), 0);
    p.insert("a", "2").await.expect("serves writes again");
    pair.assert_converged().await;
}

#[tokio::test]
async fn a_graceful_backup_stop_refuses_writes_at_once_and_loses_nothing() {
    let mut pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    let writes: Vec<_> = (0..300).map(|i| p.insert(format!("g{i}"), "v")).collect();
    let stop = async {
        let status = pair.backup.as_mut().expect("backup").terminate();
        assert!(status.success(), "backup exit status {status:?}");
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(writes), stop);
    let acked: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| format!("g{i}"))
        .collect();
    for r in &results {
        assert!(
            matches!(
                r,
                Ok(()) | Err(ClientError::Unavailable(_) | ClientError::Indeterminate(_))
            ),
            "{r:?}"
        );
    }
    pair.backup = None;
    let status = wait_state(pair.primary_addr, pair.certs.path(), "cold_start").await;
    assert_eq!(status["link_up"], false);
    let cause = status["last_transition"]["cause"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        cause.contains("backup is shutting down"),
        "the backup must say goodbye first: {cause}"
    );
    assert!(matches!(
        p.insert("late", "v").await,
        Err(ClientError::Unavailable(_))
    ));
    pair.start_backup();
    pair.wait_sync().await;
    let keys: BTreeSet<Bytes> = pair
        .assert_converged()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in acked {
        assert!(keys.contains(k.as_bytes()), "acknowledged write {k} lost");
    }
}

#[tokio::test]
async fn a_primary_stopped_gracefully_tells_the_backup_and_exits_zero() {
    let mut pair = Pair::start(&[]).await;
    pair.primary_client()
        .await
        .insert("k", "v")
        .await
        .expect("insert");
    let status = pair.primary.as_mut().expect("primary").terminate();
    assert!(status.success(), "primary exit status {status:?}");
    pair.primary = None;
    let b = wait_state(pair.backup_addr, pair.certs.path(), "cold_start").await;
    let cause = b["last_transition"]["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("primary said goodbye"), "{b}");
    assert_eq!(
        pair.backup_client().await.get("k").await.expect("get"),
        Some(Bytes::from("v"))
    );
}

#[tokio::test]
async fn a_client_certificate_cannot_pose_as_the_primary_on_the_peer_port() {
    let pair = Pair::start(&[]).await;
    let paths = CertPaths::new(pair.certs.path());
    let cfg = tls::client_config_from_files(
        &paths.ca_cert(),
        Some((&paths.client_cert(), &paths.client_key())),
        quickv_proto::PEER_ALPN,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("config");
    // The TLS handshake itself succeeds: the certificate is from the cluster CA.
    let (_endpoint, conn) = common::raw_connection(pair.backup_addr, cfg).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");
    assert!(
        reason
            .to_string()
            .contains("not this pair's server certificate"),
        "{reason}"
    );
    // The real pair is unaffected.
    let status = pair
        .backup_client()
        .await
        .status_json()
        .await
        .expect("status");
    assert_eq!(status["state"], "sync");
    assert_eq!(status["links"], 1, "{status}");
}

/// What a writer knows about one key: the possible states given every answer so far.
#[derive(Default)]
struct KeyHistory {
    possible: BTreeSet<Option<String>>,
}

impl KeyHistory {
    fn new() -> KeyHistory {
        KeyHistory {
            possible: [None].into_iter().collect(),
        }
    }

    /// Applies one operation's answer; `Err` if no possible state explains it.
    fn observe(
        &mut self,
        op: &str,
        value: &str,
        outcome: &Result<Reply, ClientError>,
    ) -> Result<(), String> {
        let apply = |state: &Option<String>| -> Option<(Reply, Option<String>)> {
            match (op, state) {
                ("insert", None) => Some((Reply::Ok, Some(value.to_string()))),
                ("insert", Some(_)) => Some((Reply::Exists, state.clone())),
                ("update", Some(_)) => Some((Reply::Ok, Some(value.to_string()))),
                ("update", None) => Some((Reply::NotFound, None)),
                ("delete", Some(old)) => Some((Reply::Value(Bytes::from(old.clone())), None)),
                ("delete", None) => Some((Reply::NotFound, None)),
                ("get", s) => Some((
                    s.clone()
                        .map(|v| Reply::Value(Bytes::from(v)))
                        .unwrap_or(Reply::NotFound),
                    s.clone(),
                )),
                _ => None,
            }
        };
        let before = std::mem::take(&mut self.possible);
        match outcome {
            Ok(Reply::Unavailable(_))
            | Err(ClientError::Unavailable(_) | ClientError::Connection(_)) => {
                self.possible = before.clone();
            }
            Ok(Reply::Indeterminate(_)) | Err(ClientError::Indeterminate(_)) => {
                for s in &before {
                    self.possible.insert(s.clone());
                    if let Some((_, after)) = apply(s) {
                        self.possible.insert(after);
                    }
                }
            }
            Ok(reply) => {
                for s in &before {
                    if let Some((expected, after)) = apply(s) {
                        if &expected == reply {
                            self.possible.insert(after);
                        }
                    }
                }
            }
            Err(e) => return Err(format!("{op}: unexpected error {e}")),
        }
        if self.possible.is_empty() {
            return Err(format!(
                "{op} {value} answered {outcome:?}, impossible from {before:?}"
            ));
        }
        Ok(())
    }
}

/// One writer per key (so each key's history is sequential), many keys across lanes, while the
/// backup is SIGKILLed and restarted three times and then the primary once. Every answer must be
/// explained by some history in which indeterminate writes did or did not happen, and the final
/// dump must be one of the possible states of every key.
#[tokio::test]
async fn hammer_with_kills_of_backup_and_primary_loses_no_acknowledged_write() {
    const KEYS: usize = 24;
    const OPS_PER_KEY: usize = 1000;
    let mut pair = Pair::start(&[]).await;
    let addr = pair.primary_addr;
    let certs = pair.certs.path().to_path_buf();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for k in 0..KEYS {
        let certs = certs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let key = format!("hot{k}");
            let mut history = KeyHistory::new();
            let mut client: Option<Client> = None;
            let (mut acked, mut refused) = (0, 0);
            for i in 0..OPS_PER_KEY {
                if stop.is_cancelled() {
                    break;
                }
                if client.is_none() {
                    client = Client::connect(
                        &addr.to_string(),
                        &quickv_client::ClientConfig::new(&certs),
                    )
                    .await
                    .ok();
                }
                let Some(c) = client.as_ref() else {
                    // Primary down: requests must fail; try again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let value = format!("{k}-{i}");
                let (op, req) = match i % 4 {
                    0 => (
                        "insert",
                        Op::Insert {
                            key: key.clone().into(),
                            value: value.clone().into(),
                        },
                    ),
                    1 => (
                        "update",
                        Op::Update {
                            key: key.clone().into(),
                            value: value.clone().into(),
                        },
                    ),
                    2 => (
                        "get",
                        Op::Get {
                            key: key.clone().into(),
                        },
                    ),
                    _ => (
                        "delete",
                        Op::Delete {
                            key: key.clone().into(),
                        },
                    ),
                };
                let outcome = c.call(req).await;
                if matches!(outcome, Err(ClientError::Connection(_))) {
                    client = None;
                }
                if matches!(outcome, Ok(Reply::Unavailable(ref r)) if r.contains("not yet synced"))
                    && op == "get"
                {
                    refused += 1;
                    continue;
                }
                match &outcome {
                    Ok(Reply::Ok | Reply::Value(_) | Reply::Exists | Reply::NotFound) => acked += 1,
                    _ => refused += 1,
                }
                if let Err(e) = history.observe(op, &value, &outcome) {
                    panic!("key {key}: {e}");
                }
            }
            (key, history, acked, refused)
        }));
    }
    for _ in 0..3 {
        wait_for_progress(addr, &certs, 1000).await;
        pair.kill_backup();
        wait_state(addr, &certs, "cold_start").await;
        pair.start_backup();
        pair.wait_sync().await;
    }
    wait_for_progress(addr, &certs, 1000).await;
    pair.kill_primary();
    pair.start_primary();
    pair.wait_sync().await;
    wait_for_progress(addr, &certs, 1000).await;
    stop.cancel();
    let mut total_acked = 0;
    let mut histories = HashMap::new();
    for w in writers {
        let (key, history, acked, _refused) = w.await.expect("writer");
        total_acked += acked;
        histories.insert(key, history);
    }
    let dump: HashMap<String, String> = pair
        .assert_converged()
        .await
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    for (key, history) in &histories {
        let actual = dump.get(key).cloned();
        assert!(
            history.possible.contains(&actual),
            "key {key}: final value {actual:?} not among possible {:?}",
            history.possible
        );
    }
    assert!(
        total_acked > 500,
        "too little acknowledged work to mean anything: {total_acked}"
    );
    println!("hammer: {total_acked} acknowledged operations over {KEYS} keys");
}

/// Waits until the primary has answered `n` more requests (an event in its status counters).
async fn wait_for_progress(addr: std::net::SocketAddr, certs: &std::path::Path, n: u64) {
    let c = connect(addr, certs).await;
    let start = c.status_json().await.expect("status")["requests"]
        .as_u64()
        .unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = c.status_json().await.expect("status")["requests"]
            .as_u64()
            .unwrap_or(0);
        if now >= start + n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress on the primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
