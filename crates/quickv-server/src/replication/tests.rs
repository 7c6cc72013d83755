//! Unit tests of [`super`], kept beside it so the module itself stays short.

use bytes::Bytes;

use super::*;
use quickv_core::store::BUCKETS;

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

/// Everything the primary's link machine asked for, polled (the pump's part, without I/O).
fn polled(repl: &Replication) -> Vec<primary::Action> {
    std::iter::from_fn(|| repl.primary_poll()).collect()
}

/// The hellos the primary's link machine transmitted.
fn hellos(actions: &[primary::Action]) -> Vec<quickv_proto::peer::PeerHello> {
    actions
        .iter()
        .filter_map(|a| match a {
            primary::Action::Transmit(_, quickv_proto::peer::PeerMsg::Hello(h)) => {
                Some((**h).clone())
            }
            _ => None,
        })
        .collect()
}

/// An empty backup's answer to the primary's hello: its hello, then its applied marks.
fn empty_backup_answers(repl: &Replication, conn: u64) {
    let hello = quickv_proto::peer::PeerHello {
        primary: false,
        run_id: 2,
        pair: 0,
        epoch: 0,
        synced: false,
        keys: 0,
        digests: Store::new().digests(),
    };
    let marks = [quickv_proto::peer::LaneMark::default(); BUCKETS];
    for msg in [
        quickv_proto::peer::PeerMsg::Hello(Box::new(hello)),
        quickv_proto::peer::PeerMsg::Applied(Box::new(marks)),
    ] {
        repl.primary_input(|p, now, lanes, store| p.handle_ctl(conn, msg, now, lanes, store));
    }
}

#[test]
fn a_partial_copy_from_an_interrupted_bootstrap_is_never_offered_as_data() {
    let repl = replication(Role::Primary);
    repl.store.put(Bytes::from("half"), Bytes::from("copied"));
    repl.primary_input(|p, now, lanes, store| p.handle_connected(1, now, lanes, store));
    let hello = hellos(&polled(&repl)).pop().expect("the primary's hello");
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
    repl.primary_input(|p, now, lanes, store| p.handle_connected(1, now, lanes, store));
    empty_backup_answers(&repl, 1);
    let opening = polled(&repl);
    assert!(
        opening.iter().any(|a| matches!(
            a,
            primary::Action::Event(quickv_core::primary_link::PrimaryEvent::OpenLanes { .. })
        )),
        "the machine asks for the lanes"
    );
    repl.primary_side().expect("a primary").lanes.enable(txs);
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
    repl.primary_input(|p, now, _, _| p.handle_lanes_open(1, now));
    assert!(oneshot::via_oneshot(|to| repl.submit(insert(), None, to)).is_ok());
    assert_eq!(status_of(&repl).state, "sync");
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
fn a_current_store_is_offered_as_it_is() {
    let repl = replication(Role::Primary);
    repl.primary_input(|p, now, lanes, store| p.handle_connected(1, now, lanes, store));
    empty_backup_answers(&repl, 1);
    repl.primary_input(|p, now, _, _| p.handle_lanes_open(1, now));
    assert_eq!(status_of(&repl).state, "sync");
    repl.primary_input(|p, now, lanes, _| p.handle_conn_closed(1, "cut".into(), now, lanes));
    repl.store.put(Bytes::from("k"), Bytes::from("v"));
    repl.primary_input(|p, now, lanes, store| p.handle_connected(2, now, lanes, store));
    let hello = hellos(&polled(&repl)).pop().expect("the primary's hello");
    assert!(hello.synced);
    assert_eq!(hello.keys, 1);
}
