//! Unit tests of [`super`], kept beside it so the module itself stays short.

use super::*;
use crate::testing::{submit, t0, Pending};

fn reply_now(h: Result<Pending, Reply>) -> Reply {
    match h {
        Err(r) => r,
        Ok(_) => panic!("expected an immediate answer, got a write waiting for its ack"),
    }
}

fn lanes_with_links() -> (Lanes, Vec<std::sync::mpsc::Receiver<Bytes>>) {
    let lanes = Lanes::default();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| std::sync::mpsc::channel()).unzip();
    lanes.enable(txs);
    (lanes, rxs)
}

fn insert(k: &'static str, v: &'static str) -> Op {
    Op::Insert {
        key: Bytes::from(k),
        value: Bytes::from(v),
    }
}

#[test]
fn a_superseded_links_ack_reader_cannot_apply_the_next_links_writes() {
    // F6: an old link's reader with an `Ack { offset: 1 }` still buffered must not settle
    // offset 1 of the lanes the next link has just opened.
    let store = Store::new();
    let lanes = Lanes::default();
    let (txs, _old): (Vec<_>, Vec<_>) = (0..BUCKETS)
        .map(|_| std::sync::mpsc::channel::<Bytes>())
        .unzip();
    let old = lanes.enable(txs);
    lanes.fail_all("link lost", t0());
    let (txs, _new): (Vec<_>, Vec<_>) = (0..BUCKETS)
        .map(|_| std::sync::mpsc::channel::<Bytes>())
        .unzip();
    let new = lanes.enable(txs);
    let b = BucketId::of(b"k");
    let Ok(pending) = submit(&lanes, &store, insert("k", "v"), None, "") else {
        panic!("queued");
    };
    assert_eq!(lanes.handle_ack_on(old, &store, b, 1, t0()), Ok(false));
    assert!(
        lanes.begin_resync(old, b).is_none(),
        "no resync for a superseded link"
    );
    assert_eq!(
        store.get(b"k"),
        None,
        "not applied by the superseded reader"
    );
    assert_eq!(lanes.handle_ack_on(new, &store, b, 1, t0()), Ok(true));
    assert_eq!(pending.try_recv().expect("answered"), Reply::Ok);
    assert_eq!(store.get(b"k"), Some(Bytes::from("v")));
}

#[test]
fn a_lane_being_resynced_refuses_writes_until_its_resync_is_queued() {
    let store = Store::new();
    let (lanes, rxs) = lanes_with_links();
    let b = BucketId::of(b"k");
    let link = lanes.link.load(std::sync::atomic::Ordering::Acquire);
    let plan = lanes.begin_resync(link, b).expect("lane open");
    assert!(
        lanes.begin_resync(link, b).is_none(),
        "one resync at a time"
    );
    assert!(matches!(
        reply_now(submit(&lanes, &store, insert("k", "v"), None, "")),
        Reply::Unavailable(_)
    ));
    let frames = plan.build(&store, &Limits::default());
    assert!(lanes.finish_resync(&plan, frames, t0()));
    assert_eq!(
        lanes.status()[b.index()].offset,
        1,
        "the resync took offset 1"
    );
    assert!(rxs[b.index()].try_recv().is_ok(), "sent on the lane");
    assert!(submit(&lanes, &store, insert("k", "v"), None, "").is_ok());
}

#[test]
fn writes_become_visible_only_when_acknowledged() {
    let store = Store::new();
    let (lanes, rxs) = lanes_with_links();
    let b = BucketId::of(b"k");
    let Ok(first) = submit(&lanes, &store, insert("k", "1"), None, "") else {
        panic!("insert must wait for the ack");
    };
    // A second insert of the same key depends on the first: it waits too.
    let Ok(second) = submit(&lanes, &store, insert("k", "2"), None, "") else {
        panic!("dependent refusal must wait");
    };
    assert_eq!(store.get(b"k"), None, "not visible before the ack");
    let frame = rxs[b.index()].try_recv().expect("sent to the lane");
    let mut buf = BytesMut::from(&frame[..]);
    let msg = PeerMsg::decode(&mut buf, &Default::default())
        .expect("valid")
        .expect("whole");
    assert!(matches!(msg, PeerMsg::Put { offset: 1, .. }), "{msg:?}");
    lanes.handle_ack(&store, b, 1, t0()).expect("ack");
    assert_eq!(first.try_recv().expect("answered"), Reply::Ok);
    assert_eq!(second.try_recv().expect("answered"), Reply::Exists);
    assert_eq!(store.get(b"k"), Some(Bytes::from("1")));
    // With nothing in flight, a refusal is immediate.
    assert_eq!(
        reply_now(submit(&lanes, &store, insert("k", "3"), None, "")),
        Reply::Exists
    );
}

#[test]
fn a_retried_stamped_write_is_sent_once_and_answered_like_the_original() {
    let store = Store::new();
    let (lanes, rxs) = lanes_with_links();
    let b = BucketId::of(b"k");
    let stamped = |seq, age_ms| {
        Some(SessionWrite {
            stamp: WriteStamp::new(7, seq),
            age_ms,
        })
    };
    let submit = |op, session| submit(&lanes, &store, op, session, "");
    let Ok(first) = submit(insert("k", "1"), stamped(1, 0)) else {
        panic!("must wait for the ack");
    };
    // The retry arrives while the original is in flight: it waits for the same ack.
    let Ok(retry) = submit(insert("k", "1"), stamped(1, 20)) else {
        panic!("the retry waits behind the original");
    };
    let mut frames = 0;
    while rxs[b.index()].try_recv().is_ok() {
        frames += 1;
    }
    assert_eq!(frames, 1, "the write is sent to the backup once");
    lanes.handle_ack(&store, b, 1, t0()).expect("ack");
    assert_eq!(first.try_recv().expect("answered"), Reply::Ok);
    assert_eq!(retry.try_recv().expect("answered"), Reply::Ok, "not Exists");
    // After the ack, a retry is answered from the session table at once; nothing is sent.
    assert_eq!(
        reply_now(submit(insert("k", "1"), stamped(1, 900))),
        Reply::Ok
    );
    assert!(rxs[b.index()].try_recv().is_err());
    // A new write of the session is decided as usual.
    assert_eq!(
        reply_now(submit(insert("k", "2"), stamped(2, 0))),
        Reply::Exists
    );
    // A delete's record keeps the removed value for its retries.
    let Ok(del) = submit(
        Op::Delete {
            key: Bytes::from("k"),
        },
        stamped(3, 0),
    ) else {
        panic!("must wait");
    };
    lanes.handle_ack(&store, b, 2, t0()).expect("ack");
    assert_eq!(
        del.try_recv().expect("answered"),
        Reply::Value(Bytes::from("1"))
    );
    assert_eq!(
        reply_now(submit(
            Op::Delete {
                key: Bytes::from("k")
            },
            stamped(3, 50)
        )),
        Reply::Value(Bytes::from("1"))
    );
    assert_eq!(store.get(b"k"), None);
}

/// A client stream's answer sink that records what it was given.
#[derive(Debug, Default)]
struct Sink(std::sync::Mutex<Vec<(u64, Reply)>>);

impl crate::reply::StreamAnswers for Sink {
    fn answer(&self, ticket: crate::reply::Ticket, reply: Reply, _now: Instant) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((ticket.id, reply));
    }

    fn lost(&self, ticket: crate::reply::Ticket, reply: Reply) {
        self.answer(ticket, reply, t0())
    }
}

fn to_stream(sink: &std::sync::Arc<Sink>, id: u64) -> impl FnOnce() -> ReplyTo {
    let sink = sink.clone();
    move || {
        ReplyTo::Stream(
            sink,
            crate::reply::Ticket {
                id,
                kind: quickv_proto::OpKind::Insert,
                started: t0(),
            },
        )
    }
}

#[test]
fn an_ack_answers_a_stream_sink_and_a_oneshot_alike_each_once() {
    let store = Store::new();
    let (lanes, _rxs) = lanes_with_links();
    let sink = std::sync::Arc::new(Sink::default());
    let b = BucketId::of(b"k");
    let stamp = |seq| {
        Some(SessionWrite {
            stamp: WriteStamp::new(9, seq),
            age_ms: 0,
        })
    };
    // A stamped write answered at the stream, its retry (in flight) at a oneshot, a dependent
    // refusal at the stream again.
    let queued = lanes.submit(
        &store,
        insert("k", "1"),
        stamp(1),
        String::new,
        to_stream(&sink, 10),
        t0(),
    );
    assert_eq!(queued, None, "the write waits for its ack");
    let Ok(retry) = submit(&lanes, &store, insert("k", "1"), stamp(1), "") else {
        panic!("the retry waits behind the original");
    };
    let dependent = lanes.submit(
        &store,
        insert("k", "2"),
        None,
        String::new,
        to_stream(&sink, 11),
        t0(),
    );
    assert_eq!(
        dependent, None,
        "the refusal waits for the write it rests on"
    );
    assert!(
        sink.0.lock().expect("not poisoned").is_empty(),
        "nothing answered before the ack"
    );
    lanes.handle_ack(&store, b, 1, t0()).expect("ack");
    assert_eq!(retry.try_recv().expect("answered"), Reply::Ok);
    assert_eq!(
        *sink.0.lock().expect("not poisoned"),
        vec![(10, Reply::Ok), (11, Reply::Exists)]
    );
    // Answered once: a later ack of the same offset answers nothing more.
    lanes.handle_ack(&store, b, 1, t0()).expect("ack again");
    assert_eq!(sink.0.lock().expect("not poisoned").len(), 2);
    // An answer decided now is returned, and the sink is not touched.
    let now = lanes.submit(
        &store,
        insert("k", "3"),
        None,
        String::new,
        to_stream(&sink, 12),
        t0(),
    );
    assert_eq!(now, Some(Reply::Exists));
    assert_eq!(sink.0.lock().expect("not poisoned").len(), 2);
    // A lost link answers a stream's waiting write indeterminate, once.
    let lost = lanes.submit(
        &store,
        insert("x", "1"),
        None,
        String::new,
        to_stream(&sink, 13),
        t0(),
    );
    assert_eq!(lost, None);
    lanes.fail_all("test", t0());
    let got = sink.0.lock().expect("not poisoned").clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(&got[2], (13, Reply::Indeterminate(_))), "{got:?}");
    assert_eq!(store.get(b"x"), None);
}

#[test]
fn a_lost_link_makes_waiting_writes_indeterminate_and_applies_nothing() {
    let store = Store::new();
    let (lanes, _rxs) = lanes_with_links();
    let Ok(w) = submit(&lanes, &store, insert("a", "1"), None, "") else {
        panic!("must wait");
    };
    lanes.fail_all("test", t0());
    assert!(matches!(
        w.try_recv().expect("answered"),
        Reply::Indeterminate(_)
    ));
    assert_eq!(store.get(b"a"), None);
    let refused = reply_now(submit(
        &lanes,
        &store,
        insert("a", "1"),
        None,
        "not in sync",
    ));
    assert_eq!(refused, Reply::Unavailable("not in sync".into()));
    assert!(lanes
        .handle_ack(&store, BucketId::of(b"a"), 5, t0())
        .is_err());
}

#[test]
fn a_busy_lane_is_checked_and_repaired_without_waiting_for_a_pause() {
    // Finding 7: under steady load a lane's queue is never empty; it must still be checked.
    use crate::apply::StreamApplier;
    let store = Store::new();
    let (lanes, mut rxs) = lanes_with_links();
    let (backup, counters) = (Store::new(), crate::Counters::default());
    let b = BucketId::of(b"k");
    let mut applier = StreamApplier::default();
    let feed = |rx: &mut std::sync::mpsc::Receiver<Bytes>, applier: &mut StreamApplier| {
        let mut buf = BytesMut::new();
        while let Ok(frame) = rx.try_recv() {
            buf.extend_from_slice(&frame);
        }
        let mut reports = Vec::new();
        while let Some(msg) = PeerMsg::decode(&mut buf, &Default::default()).expect("valid") {
            reports.extend(
                applier
                    .handle(msg, &backup, &counters, t0())
                    .expect("apply"),
            );
        }
        reports
    };
    let _w1 = submit(&lanes, &store, insert("k", "1"), None, "");
    assert!(feed(&mut rxs[b.index()], &mut applier).is_empty());
    lanes.handle_ack(&store, b, 1, t0()).expect("ack");
    // A second write in flight: the lane is busy when the check is due.
    let _w2 = submit(
        &lanes,
        &store,
        Op::Update {
            key: Bytes::from("k"),
            value: Bytes::from("2"),
        },
        None,
        "",
    );
    assert!(
        matches!(lanes.check(&store, b), CheckOutcome::Sent),
        "a busy lane must be checked"
    );
    assert!(
        feed(&mut rxs[b.index()], &mut applier).is_empty(),
        "the check accounts for the write in flight: no false mismatch"
    );
    // A divergence on the backup, found and repaired while the lane is still busy.
    backup.put(Bytes::from("k"), Bytes::from("rot"));
    assert!(matches!(lanes.check(&store, b), CheckOutcome::Sent));
    let reports = feed(&mut rxs[b.index()], &mut applier);
    assert!(
        matches!(reports.as_slice(), [PeerMsg::Mismatch { .. }]),
        "{reports:?}"
    );
    lanes.handle_mismatch(&store, b, t0());
    assert!(feed(&mut rxs[b.index()], &mut applier).is_empty());
    assert_eq!(
        backup.get(b"k"),
        Some(Bytes::from("2")),
        "repaired to the state after the write in flight"
    );
    lanes
        .handle_ack(&store, b, applier.applied[b.index()], t0())
        .expect("ack everything");
    assert_eq!(store.digest(b), backup.digest(b));
}
