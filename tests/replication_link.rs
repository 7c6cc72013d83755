//! The peer link's timing as the classic harness uses it: the primary starts, the backup 1 s
//! later, and the first writes come 1 s after that. Real processes, real QUIC.

mod common;

use std::time::{Duration, Instant};

use common::Pair;

/// A pair (not started) on free loopback ports.
fn unstarted_pair() -> Pair {
    Pair {
        certs: common::fresh_certs(),
        primary_addr: common::free_addr(),
        backup_addr: common::free_addr(),
        primary: None,
        backup: None,
        extra: Vec::new(),
        primary_http: None,
        backup_http: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_started_a_second_before_its_backup_links_in_time_for_the_harness() {
    // The primary's first dial leaves before the backup listens; UDP hears no "refused", so a
    // single attempt would wait out quinn's ~3 s handshake timeout. The harness's timing is the
    // scenario here (not a stand-in for an event): backup 1 s after the primary, writes 1 s later.
    let mut pair = unstarted_pair();
    pair.start_primary();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.start_backup();
    let backup_started = Instant::now();
    let (addr, certs) = (pair.primary_addr, pair.certs.path().to_path_buf());
    let linked = tokio::spawn(async move {
        common::wait_state(addr, &certs, "sync").await;
        backup_started.elapsed()
    });
    tokio::time::sleep_until((backup_started + Duration::from_secs(1)).into()).await;
    let p = pair.primary_client().await;
    let written = p.insert("harness", "first write").await;
    let delay = linked.await.expect("status poller");
    eprintln!("link up (primary in sync) {delay:?} after the backup was ready");
    written.expect("a write 1 s after the backup started is accepted");
    pair.wait_sync().await;
    let dump = pair.assert_converged().await;
    assert_eq!(dump.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_started_a_second_before_its_primary_links_in_time_for_the_harness() {
    // The other order (a guard, not a regression test: it passed before too): the primary's
    // first dial finds the backup listening.
    let mut pair = unstarted_pair();
    pair.start_backup();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.start_primary();
    let primary_started = Instant::now();
    let (addr, certs) = (pair.primary_addr, pair.certs.path().to_path_buf());
    let linked = tokio::spawn(async move {
        common::wait_state(addr, &certs, "sync").await;
        primary_started.elapsed()
    });
    tokio::time::sleep_until((primary_started + Duration::from_secs(1)).into()).await;
    let written = pair
        .primary_client()
        .await
        .insert("harness", "first write")
        .await;
    let delay = linked.await.expect("status poller");
    eprintln!("link up (primary in sync) {delay:?} after the primary was ready");
    written.expect("a write 1 s after the later server started is accepted");
    pair.wait_sync().await;
    assert_eq!(pair.assert_converged().await.len(), 1);
}
