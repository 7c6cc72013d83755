//! Ownership and fencing of the peer link (issue 20, review F1, F3, F6): what one link starts ends
//! or is fenced before the next link touches the store; epochs survive restarts. Real processes,
//! real QUIC and TLS; a scripted primary (`tests/common/peer.rs`) where a test must stop a link at a
//! chosen message.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quickv_core::store::{BucketId, Digest};
use quickv_core::transfer::chunks;
use quickv_proto::peer::PeerMsg;
use quickv_proto::Limits;

use common::peer::{
    entries_in, keys_of, primary_hello, send_peer, snapshot, RawPeerStream, ScriptedPrimary,
};
use common::Pair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bootstrap_leaves_running_totals_that_match_the_bucket() {
    // F1: link 1 sends bucket 0 whole and fails while the backup installs it on a blocking
    // thread. Link 2's warm start discards the partial copy; it must not race the job link 1 left
    // running, or bucket 0's running count and digest disagree with its contents for good.
    const N: usize = 200_000;
    let mut pair = Pair::start(&[]).await;
    pair.kill_primary();
    pair.kill_backup();
    pair.start_backup(); // restarted: empty, not current
    let certs = pair.certs.path().to_path_buf();
    let b0 = BucketId::new(0).expect("bucket 0");
    let entries = entries_in(b0, N, &Bytes::from(vec![b'v'; 32]));
    let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
    let limits = Limits::default();
    let backup = pair.backup_client().await;

    let mut first = ScriptedPrimary::dial(&pair).await;
    match first
        .send_hello(primary_hello(&certs, 0xA1, true, 5, &entries))
        .await
    {
        PeerMsg::Hello(h) => assert!(!h.synced),
        other => panic!("expected the backup's hello, got {other:?}"),
    }
    let mut msgs = vec![PeerMsg::BucketBegin(b0)];
    msgs.extend(chunks(entries.clone(), &limits));
    msgs.push(PeerMsg::BucketEnd {
        bucket: b0,
        count: N as u64,
        digest,
    });
    let hello2 = primary_hello(&certs, 0xA2, true, 5, &entries);
    let full = snapshot(&entries);
    // Link 2 is dialed now, so that its hello follows the failure of link 1 within milliseconds.
    let mut second = ScriptedPrimary::dial(&pair).await;
    send_peer(&mut first.ctl_send, &msgs).await;
    first.ctl_send.finish().expect("finish");
    // The event: the backup is inserting bucket 0 (some keys, not all).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let k = keys_of(&backup.status_json().await.expect("status"));
        assert!(
            k < N as u64,
            "bucket 0 was applied before the test caught it: raise N"
        );
        if k > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "bucket 0 was never applied");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Link 2: the primary's hello arrives while link 1's job may still insert.
    let answer = second.send_hello(hello2).await;
    assert!(matches!(answer, PeerMsg::Hello(_)), "{answer:?}");
    send_peer(&mut second.ctl_send, &full).await;
    let ack = second.ctl.next().await;
    assert!(
        matches!(ack, PeerMsg::TransferAck { ok: true, .. }),
        "{ack:?}"
    );

    let dump = backup.dump().await.expect("dump");
    let status = backup.status_json().await.expect("status");
    let running = (
        keys_of(&status),
        status["digests"][0]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    // A digest check on bucket 0's lane, before and after a resync of the bucket.
    let (mut lane_send, lane_recv) = second.conn.open_bi().await.expect("data stream");
    let mut lane = RawPeerStream {
        recv: lane_recv,
        buf: BytesMut::new(),
    };
    let mut mismatches = Vec::new();
    for offset in 0..2u64 {
        let mut msgs = vec![
            PeerMsg::Check {
                bucket: b0,
                offset,
                digest,
            },
            PeerMsg::ReplaceBegin(b0),
        ];
        msgs.extend(chunks(entries.clone(), &limits));
        msgs.push(PeerMsg::ReplaceEnd {
            bucket: b0,
            offset: offset + 1,
            digest,
        });
        send_peer(&mut lane_send, &msgs).await;
        loop {
            match lane.next().await {
                PeerMsg::Mismatch { offset: o, .. } => mismatches.push(o),
                PeerMsg::Ack { offset: o, .. } if o == offset + 1 => break,
                PeerMsg::Ack { .. } => {}
                other => panic!("unexpected {other:?} on the data stream"),
            }
        }
    }
    assert_eq!(dump.len(), N, "the contents themselves are right");
    assert_eq!(
        running,
        (N as u64, digest.to_string()),
        "bucket 0's running count/digest disagree with its contents (mismatches: {mismatches:?})"
    );
    assert!(
        mismatches.is_empty(),
        "digest checks mismatch: {mismatches:?}"
    );
}

/// Polls `f` (bounded, 20 s) until it returns `Some`; panics with `what` and the last `None`'s
/// context otherwise. For events only visible through `status` or a client's answers.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().await {
            Ok(t) => return t,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: never happened; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Another primary process of `pair` (same certificates, its own address), dialing the backup.
fn second_primary(pair: &Pair) -> common::ServerProc {
    let peer = pair.backup_addr.to_string();
    common::ServerProc::start(
        "primary",
        common::free_addr(),
        pair.certs.path(),
        &["--peer", &peer],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_primary_stays_refused_after_the_backup_restarts() {
    // F3: the epoch fence must survive a restart of the backup alone (it is persisted).
    let mut pair = Pair::start(&[]).await; // link epoch 1
    pair.kill_primary();
    pair.start_primary(); // another primary process: epoch 2 on both
    pair.wait_sync().await;
    pair.primary_client()
        .await
        .insert("acked", "by the live primary")
        .await
        .expect("insert");
    let epoch = pair
        .backup_client()
        .await
        .status_json()
        .await
        .expect("status")["epoch"]
        .as_u64()
        .expect("epoch");
    let pid = pair.primary.as_ref().expect("primary").child.id();
    let frozen = common::Stopped::stop(pid); // the live primary pauses
    pair.kill_backup();
    pair.start_backup(); // only the backup restarts
    let stale = vec![(Bytes::from("stale"), Bytes::from("zombie data"))];
    let mut zombie = ScriptedPrimary::dial(&pair).await;
    let answer = zombie
        .send_hello(primary_hello(
            pair.certs.path(),
            0x20,
            true,
            epoch - 1,
            &stale,
        ))
        .await;
    let admitted = matches!(answer, PeerMsg::Hello(_));
    drop(zombie);
    drop(frozen);
    assert!(
        !admitted,
        "a primary claiming data from epoch {} was admitted by the restarted backup (live link at \
         epoch {epoch}): {answer:?}",
        epoch - 1
    );
    match answer {
        PeerMsg::Goodbye(reason) => assert!(reason.starts_with("stale primary"), "{reason}"),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    pair.wait_sync().await;
    let dump = pair.assert_converged().await;
    assert_eq!(dump.len(), 1, "{dump:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_primary_process_does_not_take_the_backup_from_a_live_primary() {
    // F3: a second primary process (not current) dials while the live primary's link is heard
    // from; it must be refused, and the live primary must keep replicating on its link.
    let pair = Pair::start(&[]).await;
    let p = pair.primary_client().await;
    p.insert("before", "the intruder").await.expect("insert");
    let links = pair
        .backup_client()
        .await
        .status_json()
        .await
        .expect("status")["links"]
        .clone();
    let intruder = second_primary(&pair);
    let probe = intruder.client().await;
    let cause = eventually("the second primary is refused", || async {
        let status = probe.status_json().await.map_err(|e| e.to_string())?;
        let cause = status["last_transition"]["cause"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if cause.contains("another primary's link is live") {
            Ok(cause)
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert!(cause.contains("refused"), "{cause}");
    p.insert("after", "the intruder")
        .await
        .expect("the live primary still replicates");
    let backup = pair
        .backup_client()
        .await
        .status_json()
        .await
        .expect("status");
    assert_eq!(
        backup["links"], links,
        "the live link was replaced: {backup}"
    );
    drop(intruder);
    let dump = pair.assert_converged().await;
    assert_eq!(dump.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_refused_as_stale_stops_serving_reads_and_says_why() {
    // F3: the live primary is cut off (frozen) long enough for another primary process to take
    // over and acknowledge a write; when it comes back, the backup refuses it as stale, and it
    // must stop answering reads from a store that no longer receives the pair's writes.
    let pair = Pair::start(&[]).await;
    pair.primary_client()
        .await
        .insert("k", "old")
        .await
        .expect("insert");
    let old = pair.primary_client().await;
    let pid = pair.primary.as_ref().expect("primary").child.id();
    let frozen = common::Stopped::stop(pid);
    let successor = second_primary(&pair);
    common::wait_state(successor.addr, pair.certs.path(), "sync").await;
    let s = successor.client().await;
    s.update("k", "new")
        .await
        .expect("the successor replicates");
    drop(frozen); // the old primary resumes, redials, and is refused as stale
    let refusal = eventually("the old primary refuses reads", || async {
        match old.get("k").await {
            Err(e) if e.to_string().contains("stale primary") => Ok(e.to_string()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(refusal.contains("another primary"), "{refusal}");
    let status = old.status_json().await.expect("status");
    assert!(
        status["read_refusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("stale primary")),
        "{status}"
    );
    assert_eq!(status["current"], false, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_remove_of_a_key_over_the_limit_ends_the_link_unapplied() {
    // F10: `Put` checked its key against `max_key`; `Remove` did not. A peer's oversized key is
    // invalid input: the lane (and link) ends, nothing is applied or acknowledged.
    let mut pair = Pair::start(&[]).await;
    pair.kill_primary();
    let mut scripted = ScriptedPrimary::dial(&pair).await;
    let answer = scripted
        .send_hello(primary_hello(pair.certs.path(), 0x7E, true, 1000, &[]))
        .await;
    assert!(matches!(answer, PeerMsg::Hello(_)), "{answer:?}");
    send_peer(&mut scripted.ctl_send, &[PeerMsg::Synced]).await;
    let (mut lane_send, lane_recv) = scripted.conn.open_bi().await.expect("data stream");
    let mut lane = RawPeerStream {
        recv: lane_recv,
        buf: BytesMut::new(),
    };
    let key = Bytes::from(vec![b'k'; Limits::default().max_key + 1]);
    send_peer(
        &mut lane_send,
        &[PeerMsg::Remove {
            offset: 1,
            key,
            stamp: None,
        }],
    )
    .await;
    let answer = lane.try_next().await;
    assert!(
        answer.is_none(),
        "an oversized replicated key must end the lane, not be applied: {answer:?}"
    );
}
