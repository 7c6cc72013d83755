//! Unit tests of [`super`], kept beside it so the module itself stays short.

use bytes::Bytes;

use super::*;

fn replication(role: Role) -> Arc<Replication> {
    let addr = "127.0.0.1:1".parse().expect("addr");
    let mut config = ServerConfig::new(role, addr);
    config.peer = Some("127.0.0.1:2".parse().expect("addr"));
    Replication::new(Arc::new(Store::new()), config, 1)
}

/// The status document's `state` and replication part, as `status` fills them.
fn status_of(repl: &Replication) -> Status {
    let mut status = Status::default();
    repl.fill_status(&mut status);
    status
}

#[test]
fn the_pair_identity_survives_a_renewed_server_certificate_but_not_another_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::tls::generate(dir.path(), &[], false).expect("certs");
    let before = pair_id(dir.path());
    assert_ne!(before, 0);
    crate::pki::renew_server(&quickv_net::tls::CertPaths::new(dir.path())).expect("renew");
    assert_eq!(
        pair_id(dir.path()),
        before,
        "same names after a renewal: same pair"
    );
    let other = tempfile::tempdir().expect("tempdir");
    crate::tls::generate(other.path(), &["db.example".to_owned()], false).expect("certs");
    assert_ne!(pair_id(other.path()), before, "other names: another pair");
}

#[test]
fn a_partial_copy_from_an_interrupted_bootstrap_is_never_offered_as_data() {
    let repl = replication(Role::Primary);
    repl.store.put(Bytes::from("half"), Bytes::from("copied"));
    let hello = repl.hello_now();
    assert!(!hello.synced);
    assert_eq!(
        hello.keys, 0,
        "a store that is not current must not be offered"
    );
    assert_eq!(repl.store.count(), 0);
}

#[test]
fn writes_are_admitted_only_by_the_machine_in_sync() {
    // Finding 6: the lanes open before the primary enters `Sync`, and stay open while it
    // shuts down; neither window may admit a write.
    let repl = replication(Role::Primary);
    let (txs, _rxs): (Vec<_>, Vec<_>) = (0..BUCKETS)
        .map(|_| std::sync::mpsc::channel::<Bytes>())
        .unzip();
    repl.with_machine(|v| v.machine.handle_link_up());
    repl.lanes.enable(txs);
    let insert = || Op::Insert {
        key: Bytes::from("k"),
        value: Bytes::from("v"),
    };
    assert!(
        matches!(
            oneshot::via_oneshot(|to| repl.submit(insert(), None, to)),
            Err(quickv_proto::Reply::Unavailable(_))
        ),
        "lanes open, machine in warm_start: refused"
    );
    repl.with_machine(|v| {
        let empty = hello_of(true, 1, 0, false, 0, &Store::new(), Instant::now());
        v.machine.handle_hellos(&empty, &empty, 1);
        v.machine.handle_synced();
    });
    assert!(oneshot::via_oneshot(|to| repl.submit(insert(), None, to)).is_ok());
    repl.begin_shutdown();
    assert!(
        matches!(
            oneshot::via_oneshot(|to| repl.submit(insert(), None, to)),
            Err(quickv_proto::Reply::Unavailable(_))
        ),
        "shutting down: refused"
    );
}

#[test]
fn a_superseded_links_driver_cannot_change_the_machine() {
    // F6: link 1's driver still holds a `Synced` when link 2 is admitted (generation 2).
    let repl = replication(Role::Backup);
    repl.applying_link.store(1, Ordering::Release);
    repl.with_machine(|v| v.machine.handle_link_up());
    let empty = repl.hello_now();
    let stale_hello = PeerHello {
        primary: true,
        ..empty.clone()
    };
    repl.with_link_machine(1, |v| v.machine.handle_hellos(&stale_hello, &empty, 3));
    repl.applying_link.store(2, Ordering::Release);
    assert!(repl
        .with_link_machine(1, |v| v.machine.handle_synced())
        .is_none());
    assert_eq!(repl.state(), State::WarmStart);
    let epoch = status_of(&repl).replication.map(|r| r.epoch);
    assert_eq!(epoch, Some(0), "the old link adopted no epoch");
}

#[test]
fn a_current_store_is_offered_as_it_is() {
    let repl = replication(Role::Backup);
    let empty = repl.hello_now();
    repl.with_machine(|v| {
        v.machine.handle_link_up();
        v.machine.handle_hellos(&empty, &empty, 1);
        v.machine.handle_synced();
    });
    repl.store.put(Bytes::from("k"), Bytes::from("v"));
    let hello = repl.hello_now();
    assert!(hello.synced);
    assert_eq!(hello.keys, 1);
    assert_eq!(status_of(&repl).state, "sync");
}
