//! Graceful stops and rolling restarts of a pair (issue 20, review F7). Real processes, real QUIC.

mod common;

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
