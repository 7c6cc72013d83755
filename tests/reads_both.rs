//! Reads at both servers of a pair, judged in one history (issue 22). Real processes and real
//! QUIC; the peer link runs through a UDP relay (`common::relay`) so a test can hold the backup's
//! acks, or cut the link, at the exact moment the pattern needs: after the backup applied a write,
//! before the primary heard of it.
//!
//! - **Reading ahead**: the backup applies a write before the primary does (the primary applies
//!   it on the ack). A read at the backup returns the new value; a read at the primary that starts
//!   after it has ended must not return the old one.
//! - **Phantom values**: the backup applied an update whose ack was lost with the link (the
//!   update ended `indeterminate`), and a client read its value at the backup. After the relink
//!   the pair must still hold that value (or a later one): a value a client has read cannot
//!   vanish.
//!
//! Each test asserts the pattern directly and checks the whole history (reads at both servers,
//! the final dumps) with the history checker.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv::history::{check, HistoryReport, Kind, Observed, Recorder, Server};
use quickv_client::{Client, ClientConfig};

use common::relay::{Flow, Relay};
use common::{Pair, ServerProc};

/// Longest wait for any condition here.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long the primary's read may go unanswered while the backup's acks are held before the test
/// lets them through: today's primary answers at once (from its store); a primary that waits for
/// the write's ack answers only after the release.
const WINDOW: Duration = Duration::from_millis(500);

/// A pair whose peer link runs through a relay, with the `[timeouts]` given, both in sync.
async fn relayed_pair(timeouts: &str) -> (Pair, Relay) {
    let certs = common::fresh_certs();
    let file = certs.path().join("timeouts.toml");
    std::fs::write(
        &file,
        format!(
            "certs = {:?}\n[primary]\nlisten = \"127.0.0.1:1\"\n[backup]\nlisten = \"127.0.0.1:2\"\n[timeouts]\n{timeouts}\n",
            certs.path()
        ),
    )
    .expect("write config");
    let config = file.to_string_lossy().into_owned();
    let mut addrs = None;
    let relay = Relay::start(|| {
        let [primary, backup] = quickv::supervisor::free_udp_addrs().expect("free ports");
        addrs = Some((primary, backup));
        backup
    })
    .await;
    let (primary_addr, backup_addr) = addrs.expect("addresses chosen");
    let (front, back) = (relay.front.to_string(), relay.back.to_string());
    let backup = ServerProc::start(
        "backup",
        backup_addr,
        certs.path(),
        &["--peer", &back, "--config", &config],
    );
    let primary = ServerProc::start(
        "primary",
        primary_addr,
        certs.path(),
        &["--peer", &front, "--config", &config],
    );
    let pair = Pair {
        certs,
        primary_addr,
        backup_addr,
        primary: Some(primary),
        backup: Some(backup),
        extra: Vec::new(),
        primary_http: None,
        backup_http: None,
    };
    pair.wait_sync().await;
    (pair, relay)
}

/// A client of one server whose writes are not retried: an update whose ack was lost must end
/// `indeterminate`, as the pattern needs.
async fn client_of(addr: SocketAddr, certs: &Path) -> Client {
    let config = ClientConfig::builder(certs).retry_writes(false).build();
    Client::connect(&addr.to_string(), &config)
        .await
        .expect("connect")
}

/// Reads `key` at the backup (client `id`, recorded) until it returns `want`.
async fn read_at_backup_until(rec: &Recorder, id: u32, backup: &Client, key: &Bytes, want: &Bytes) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = rec
            .call_at(id, backup, Server::Backup, key.clone(), Kind::Get)
            .await;
        if seen == Observed::Value(want.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never applied the write: it answers {seen:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Both final dumps, then the checker's verdict on the history.
async fn judge(pair: &Pair, rec: &Recorder) -> HistoryReport {
    pair.wait_sync().await;
    let p = pair.primary_client().await;
    let b = pair.backup_client().await;
    let pd = p.dump().await.expect("primary dump");
    let bd = b.dump().await.expect("backup dump");
    let report = check(&rec.history(), Some(&pd), Some(&bd));
    println!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_the_primary_never_returns_a_value_older_than_one_the_backup_served() {
    // Timeouts far longer than the test holds the acks: only the order of events is under test.
    let (pair, relay) = relayed_pair("ack_ms = 10000\npeer_idle_ms = 10000").await;
    let certs = pair.certs.path();
    let (p, b) = (
        client_of(pair.primary_addr, certs).await,
        client_of(pair.backup_addr, certs).await,
    );
    let rec = Recorder::new();
    let key = Bytes::from_static(b"ahead");
    let v1 = rec.unique_value(1);
    let inserted = rec
        .call_at(
            1,
            &p,
            Server::Primary,
            key.clone(),
            Kind::Insert(v1.clone()),
        )
        .await;
    assert_eq!(inserted, Observed::Ok);

    // The backup's acks stop in the network; the update reaches the backup and is applied there.
    relay.set(Flow::Pass, Flow::Hold);
    let v2 = rec.unique_value(1);
    let update = tokio::spawn({
        let (rec, p, key, v2) = (rec.clone(), p.clone(), key.clone(), v2.clone());
        async move {
            rec.call_at(1, &p, Server::Primary, key, Kind::Update(v2))
                .await
        }
    });
    read_at_backup_until(&rec, 2, &b, &key, &v2).await;

    // That read has ended; a read at the primary starts now.
    let read = rec.call_at(3, &p, Server::Primary, key.clone(), Kind::Get);
    tokio::pin!(read);
    let early = tokio::select! {
        answer = &mut read => Some(answer),
        _ = tokio::time::sleep(WINDOW) => None,
    };
    relay.pass().await;
    let answer = match early {
        Some(answer) => answer,
        None => read.await,
    };
    let updated = update.await.expect("update task");
    assert_eq!(
        updated,
        Observed::Ok,
        "the update is acknowledged once the acks pass"
    );
    let report = judge(&pair, &rec).await;
    assert_ne!(
        answer,
        Observed::Value(v1.clone()),
        "reading ahead: the backup served {v2:?}, then the primary answered the older {v1:?}"
    );
    assert_eq!(answer, Observed::Value(v2));
    assert!(report.is_clean(), "{report}");
    assert!(report.reads_at_backup >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_read_at_the_backup_survives_the_relink_after_its_ack_was_lost() {
    // A short ack timeout: the primary gives up on the held write soon after the cut.
    let (pair, relay) = relayed_pair("ack_ms = 1500\npeer_idle_ms = 1500").await;
    let certs = pair.certs.path();
    let (p, b) = (
        client_of(pair.primary_addr, certs).await,
        client_of(pair.backup_addr, certs).await,
    );
    let rec = Recorder::new();
    let key = Bytes::from_static(b"phantom");
    let v1 = rec.unique_value(1);
    let inserted = rec
        .call_at(
            1,
            &p,
            Server::Primary,
            key.clone(),
            Kind::Insert(v1.clone()),
        )
        .await;
    assert_eq!(inserted, Observed::Ok);

    relay.set(Flow::Pass, Flow::Hold);
    let v2 = rec.unique_value(1);
    let update = tokio::spawn({
        let (rec, p, key, v2) = (rec.clone(), p.clone(), key.clone(), v2.clone());
        async move {
            rec.call_at(1, &p, Server::Primary, key, Kind::Update(v2))
                .await
        }
    });
    read_at_backup_until(&rec, 2, &b, &key, &v2).await;

    // The link is lost with the ack: the update's fate is unknown to the primary.
    relay.cut();
    let updated = update.await.expect("update task");
    assert!(
        matches!(updated, Observed::Indeterminate(_)),
        "the update whose ack was lost ends indeterminate: {updated:?}"
    );
    // The network heals; the pair links again (both current) and returns to sync.
    relay.pass().await;
    pair.wait_sync().await;
    let at_primary = rec
        .call_at(3, &p, Server::Primary, key.clone(), Kind::Get)
        .await;
    let at_backup = rec
        .call_at(4, &b, Server::Backup, key.clone(), Kind::Get)
        .await;
    let report = judge(&pair, &rec).await;
    assert_eq!(
        (&at_primary, &at_backup),
        (&Observed::Value(v2.clone()), &Observed::Value(v2.clone())),
        "phantom value: a client read {v2:?} at the backup, and after the relink the pair \
         answers otherwise (the older value is {v1:?})"
    );
    assert!(report.is_clean(), "{report}");
}
