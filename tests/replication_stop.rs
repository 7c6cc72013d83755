//! Graceful stops and rolling restarts of a pair (issue 20, review F7). Real processes, real QUIC.

mod common;

use std::time::Duration;

use bytes::Bytes;

use common::{wait_state, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stopped_during_its_backups_bootstrap_waits_for_it_and_loses_nothing() {
    // F7, a quick rolling restart: the backup restarts, and the primary is stopped (SIGTERM)
    // while the backup's bootstrap is under way. The primary holds the only full copy; it must
    // let the bootstrap verify before it stops, so that the restarted primary finds the data.
    const KEYS: usize = 100_000;
    let mut pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    let value = Bytes::from(vec![b'v'; 100]);
    for batch in 0..KEYS / 5_000 {
        let pairs = (0..5_000).map(|i| (format!("k{:09}", batch * 5_000 + i), value.clone()));
        for (i, r) in p.insert_many(pairs).await.into_iter().enumerate() {
            r.unwrap_or_else(|e| panic!("insert {i} of batch {batch}: {e}"));
        }
    }
    drop(p);
    pair.kill_backup();
    pair.start_backup();
    // The event: the primary is sending the bootstrap.
    wait_state(pair.primary_addr, pair.certs.path(), "bootstrap").await;
    let exit = pair.primary.as_mut().expect("primary").terminate();
    assert!(exit.success(), "graceful stop: {exit:?}");
    pair.primary = None;
    pair.start_primary();
    pair.wait_sync().await;
    let count = pair.primary_client().await.count().await.expect("count");
    assert_eq!(count, KEYS as u64, "the rolling restart lost data");
    pair.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_queued_longer_than_the_ack_timeout_keeps_the_link_while_acks_flow() {
    // F5: the ack timeout means "no ack progress while something is outstanding", not "a write
    // waited in the queue longer than the ack timeout". Four clients each pipeline a large batch
    // at once: writes queue on the primary for a while, but the backup acknowledges steadily, so
    // the link must stay up and every insert succeed. The client's deadline is set far beyond the
    // burst (the claim is about the link, not about how fast a loaded machine drains it): 40,000
    // writes queue for longer than the 1 s ack timeout in a debug build on two cores.
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 10_000;
    let pair = Pair::start(&[]).await;
    let before = pair
        .primary_client()
        .await
        .status_json()
        .await
        .expect("status");
    let value = Bytes::from(vec![b'v'; 200]);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = pair
            .primary_client()
            .await
            .with_timeout(Duration::from_secs(300));
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let pairs = (0..PER_CLIENT).map(|i| (format!("c{c}k{i:07}"), value.clone()));
            let failed: Vec<String> = client
                .insert_many(pairs)
                .await
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.expect("client task"));
    }
    let after = pair
        .primary_client()
        .await
        .status_json()
        .await
        .expect("status");
    assert!(
        failed.is_empty(),
        "{} of {} inserts failed, first: {:?}; last transition: {}",
        failed.len(),
        CLIENTS * PER_CLIENT,
        failed.first(),
        after["last_transition"]
    );
    assert_eq!(after["links"], before["links"], "the link was dropped");
    pair.assert_converged().await;
}
