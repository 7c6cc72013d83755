//! Unit tests of [`super`]: the opening in order, jobs of an older link fencing the next one,
//! late messages, the ack timeout, redial timing, a backup's goodbye, the graceful stop (F7).

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::{BucketId, BUCKETS};
use crate::testing::{submit, t0};
use crate::transfer::bucket_msgs;

fn config() -> PrimaryConfig {
    PrimaryConfig {
        run_id: 1,
        pair: 7,
        ack_timeout: Duration::from_millis(1000),
        step: Duration::from_millis(10_000),
        check_every: Duration::from_millis(2000),
        drain: Duration::from_millis(5000),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(250),
    }
}

fn ms(n: u64) -> Instant {
    t0() + Duration::from_millis(n)
}

/// The backup's answer: its hello (`keys` keys, one per bucket from 0) and empty applied marks.
fn answer(epoch: u64, current: bool, store: &Store) -> [PeerMsg; 2] {
    let hello = PeerHello {
        primary: false,
        run_id: 2,
        pair: 7,
        epoch,
        synced: current,
        keys: store.count(),
        digests: store.digests(),
    };
    [
        PeerMsg::Hello(Box::new(hello)),
        PeerMsg::Applied(Box::new([LaneMark::default(); BUCKETS])),
    ]
}

fn drain(l: &mut PrimaryLink) -> (Vec<PeerMsg>, Vec<PrimaryEvent>) {
    let mut t = Vec::new();
    while let Some((_, m)) = l.poll_transmit() {
        t.push(m);
    }
    let mut e = Vec::new();
    while let Some(x) = l.poll_event() {
        e.push(x);
    }
    (t, e)
}

struct World {
    link: PrimaryLink,
    lanes: Lanes,
    store: Store,
    rxs: Vec<mpsc::Receiver<Bytes>>,
}

impl World {
    fn new() -> World {
        World {
            link: PrimaryLink::new(config(), 0, t0()),
            lanes: Lanes::default(),
            store: Store::new(),
            rxs: Vec::new(),
        }
    }

    fn connect(&mut self, conn: ConnId, at: u64) {
        self.link
            .handle_connected(conn, ms(at), &self.lanes, &self.store);
    }

    fn ctl(&mut self, conn: ConnId, msg: PeerMsg, at: u64) {
        self.link
            .handle_ctl(conn, msg, ms(at), &self.lanes, &self.store);
    }

    fn timeout(&mut self, at: u64) {
        self.link.handle_timeout(ms(at), &self.lanes, &self.store);
    }

    /// Runs `OpenLanes` as the driver does.
    fn run_events(&mut self, at: u64) -> Vec<PrimaryEvent> {
        let (_, events) = drain(&mut self.link);
        for e in &events {
            if let PrimaryEvent::OpenLanes { conn, mark } = e {
                let (txs, rxs): (Vec<_>, Vec<_>) =
                    (0..BUCKETS).map(|_| mpsc::channel::<Bytes>()).unzip();
                self.lanes.enable_marked(txs, *mark);
                self.rxs = rxs;
                self.link.handle_lanes_open(*conn, ms(at));
            }
        }
        events
    }
}

#[test]
fn the_opening_goes_hello_answer_marks_lanes_synced() {
    let mut w = World::new();
    assert_eq!(
        w.link.poll_timeout(),
        Some(t0()),
        "the first dial is due at once"
    );
    w.timeout(0);
    assert!(matches!(drain(&mut w.link).1[..], [PrimaryEvent::Dial]));
    w.connect(1, 10);
    let (sent, _) = drain(&mut w.link);
    assert!(matches!(&sent[..], [PeerMsg::Hello(h)] if h.primary && h.epoch == 0));
    let [hello, marks] = answer(0, false, &Store::new());
    w.ctl(1, hello, 20);
    w.ctl(1, marks, 21);
    let events = w.run_events(22);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PrimaryEvent::OpenLanes { mark, .. } if mark.epoch == 1)),
        "{events:?}"
    );
    let (sent, _) = drain(&mut w.link);
    assert!(matches!(&sent[..], [PeerMsg::Synced]), "{sent:?}");
    assert_eq!(w.link.machine().state().name(), "sync");
    assert!(w.link.lanes_open());
}

#[test]
fn a_newer_links_hello_waits_for_the_bucket_job_of_the_older_one() {
    // The primary restarted (empty, not current); the backup is current with data: its data
    // wins and the primary receives it. The link drops while a bucket job runs; the next link's
    // hello (which discards a partial copy) must wait for that job (F1, on the primary's side).
    let mut w = World::new();
    w.connect(1, 0);
    drain(&mut w.link);
    let theirs = Store::new();
    for i in 0..20 {
        theirs.put(Bytes::from(format!("k{i}")), Bytes::from("v"));
    }
    let [hello, marks] = answer(3, true, &theirs);
    w.ctl(1, hello, 1);
    w.ctl(1, marks, 2);
    let b = BucketId::all()
        .find(|b| !theirs.bucket_snapshot(*b).is_empty())
        .expect("a bucket with keys");
    for msg in bucket_msgs(&theirs, b, &Default::default(), t0()).0 {
        w.ctl(1, msg, 3);
    }
    let job = match &w.run_events(3)[..] {
        [.., PrimaryEvent::Apply { id, .. }] => *id,
        other => panic!("expected a bucket job, got {other:?}"),
    };
    w.link.handle_conn_closed(1, "cut".into(), ms(4), &w.lanes);
    w.timeout(60);
    assert!(drain(&mut w.link)
        .1
        .iter()
        .any(|e| matches!(e, PrimaryEvent::Dial)));
    w.connect(2, 70);
    assert!(
        drain(&mut w.link).0.is_empty(),
        "no hello while the old job runs"
    );
    // A late message of the old link changes nothing.
    w.ctl(1, PeerMsg::TransferDone, 71);
    assert_eq!(w.link.late_inputs(), 1);
    w.link
        .handle_job_done(job, Ok(1), ms(80), &w.lanes, &w.store);
    let (sent, _) = drain(&mut w.link);
    assert!(matches!(&sent[..], [PeerMsg::Hello(_)]), "{sent:?}");
}

#[test]
fn no_ack_progress_past_the_ack_timeout_loses_the_link_and_redials_after_the_backoff() {
    let mut w = World::new();
    w.connect(1, 0);
    let [hello, marks] = answer(0, false, &Store::new());
    w.ctl(1, hello, 0);
    w.ctl(1, marks, 0);
    w.run_events(0);
    drain(&mut w.link);
    let op = quickv_proto::Op::Insert {
        key: Bytes::from("k"),
        value: Bytes::from("v"),
    };
    let pending = submit(&w.lanes, &w.store, op, None, "").expect("queued");
    w.timeout(750);
    assert!(w.link.lanes_open());
    w.timeout(1250);
    let (_, events) = drain(&mut w.link);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PrimaryEvent::Lost { .. })),
        "{events:?}"
    );
    assert!(
        matches!(
            pending.try_recv(),
            Ok(quickv_proto::Reply::Indeterminate(_))
        ),
        "the write in flight is indeterminate"
    );
    assert_eq!(w.link.poll_timeout(), Some(ms(1300)), "redial after 50 ms");
}

#[test]
fn a_stop_during_a_bootstrap_to_a_backup_that_is_not_current_waits_for_its_verdict() {
    let mut w = World::new();
    w.store.put(Bytes::from("k"), Bytes::from("v"));
    let mut current = Machine::new(true);
    current.handle_link_up();
    let empty = answer(0, false, &Store::new());
    let PeerMsg::Hello(theirs) = &empty[0] else {
        unreachable!()
    };
    current.handle_hellos(theirs, theirs, 1);
    current.handle_synced();
    current.handle_link_lost("cut".into());
    w.link = PrimaryLink::with_machine(config(), current, t0());
    w.connect(1, 0);
    let [hello, marks] = answer(1, false, &Store::new());
    w.ctl(1, hello, 1);
    w.ctl(1, marks, 2);
    let events = w.run_events(2);
    assert!(events
        .iter()
        .any(|e| matches!(e, PrimaryEvent::SendSnapshot { .. })));
    assert!(w.link.catching_up());
    w.link.handle_snapshot_sent(1, Ok(()), ms(3), &w.lanes);
    w.link.handle_stop(ms(10), &w.lanes);
    assert!(
        drain(&mut w.link).0.is_empty(),
        "no goodbye before the verdict"
    );
    assert_eq!(w.link.poll_timeout(), Some(ms(5010)));
    let ack = PeerMsg::TransferAck {
        ok: true,
        reason: String::new(),
    };
    w.ctl(1, ack, 500);
    let (sent, _) = drain(&mut w.link);
    assert!(matches!(&sent[..], [PeerMsg::Goodbye(_)]), "{sent:?}");
    assert!(!w.link.stopped());
    w.link
        .handle_conn_closed(1, "backup closed".into(), ms(600), &w.lanes);
    assert!(w.link.stopped());
}

#[test]
fn a_stop_waits_for_a_bootstrap_at_most_the_drain_time() {
    let mut w = World::new();
    w.store.put(Bytes::from("k"), Bytes::from("v"));
    let mut current = Machine::new(true);
    current.handle_link_up();
    let PeerMsg::Hello(empty) = &answer(0, false, &Store::new())[0] else {
        unreachable!()
    };
    current.handle_hellos(empty, empty, 1);
    current.handle_synced();
    current.handle_link_lost("cut".into());
    w.link = PrimaryLink::with_machine(config(), current, t0());
    w.connect(1, 0);
    let [hello, marks] = answer(1, false, &Store::new());
    w.ctl(1, hello, 1);
    w.ctl(1, marks, 2);
    w.run_events(2);
    w.link.handle_stop(ms(10), &w.lanes);
    w.timeout(5009);
    assert!(drain(&mut w.link).0.is_empty());
    w.timeout(5010);
    let (sent, _) = drain(&mut w.link);
    assert!(matches!(&sent[..], [PeerMsg::Goodbye(_)]), "{sent:?}");
    w.timeout(6010);
    assert!(w.link.stopped());
}

#[test]
fn a_backups_goodbye_refuses_writes_at_once_and_ends_the_link_once_drained() {
    let mut w = World::new();
    w.connect(1, 0);
    let [hello, marks] = answer(0, false, &Store::new());
    w.ctl(1, hello, 0);
    w.ctl(1, marks, 0);
    w.run_events(0);
    drain(&mut w.link);
    let op = quickv_proto::Op::Insert {
        key: Bytes::from("k"),
        value: Bytes::from("v"),
    };
    let _pending = submit(&w.lanes, &w.store, op, None, "").expect("queued");
    w.ctl(1, PeerMsg::Goodbye("backup shutting down".into()), 10);
    assert!(!w.link.machine().writes_allowed());
    assert!(w.link.wants_drained());
    assert_eq!(w.link.live_conn(), Some(1), "writes in flight may finish");
    w.lanes
        .handle_ack(&w.store, BucketId::of(b"k"), 1, ms(20))
        .expect("ack");
    w.link.handle_drained(ms(20), &w.lanes);
    assert_eq!(w.link.live_conn(), None);
}

#[test]
fn a_primary_refused_as_stale_never_dials_again() {
    // A stale primary that redialed would claim no data; a backup that is itself not current
    // would admit it, and the pair would start afresh from two empty stores while the live
    // primary holds the data (the simulator found it: 169 of 20,000 seeds).
    let mut w = World::new();
    w.timeout(0);
    assert!(matches!(drain(&mut w.link).1[..], [PrimaryEvent::Dial]));
    w.connect(1, 10);
    drain(&mut w.link);
    let refusal = crate::state::Refusal::StaleEpoch {
        primary: 1,
        backup: 3,
    };
    w.ctl(1, PeerMsg::Goodbye(refusal.to_string()), 20);
    let (_, events) = drain(&mut w.link);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PrimaryEvent::Lost { .. })),
        "{events:?}"
    );
    assert!(w.link.machine().fenced());
    assert!(w
        .link
        .machine()
        .read_refusal()
        .is_some_and(|r| r.starts_with("stale primary")));
    assert_eq!(w.link.poll_timeout(), None, "no redial is due");
    w.timeout(60_000);
    let (_, events) = drain(&mut w.link);
    assert!(
        !events.iter().any(|e| matches!(e, PrimaryEvent::Dial)),
        "{events:?}"
    );
}
