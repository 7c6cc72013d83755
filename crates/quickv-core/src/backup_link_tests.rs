//! Unit tests of [`super`]: admission and supersession, late messages of a superseded link, bucket
//! jobs that outlive their link, refusals, the read fence, shutdown.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::apply::{Pass, StreamApplier};
use crate::store::BucketId;
use crate::testing::t0;
use crate::transfer::bucket_msgs;
use crate::Counters;

fn config() -> BackupConfig {
    BackupConfig {
        run_id: 2,
        pair: 7,
        live_grace: Duration::from_millis(3000),
        silence: Duration::from_millis(1000),
        step: Duration::from_millis(10_000),
        drain: Duration::from_millis(2000),
        close_grace: Duration::from_millis(200),
    }
}

fn ms(n: u64) -> Instant {
    t0() + Duration::from_millis(n)
}

fn primary_hello(run_id: u64, epoch: u64, current: bool) -> PeerMsg {
    PeerMsg::Hello(Box::new(PeerHello {
        primary: true,
        run_id,
        pair: 7,
        epoch,
        synced: current,
        keys: 0,
        digests: [Digest::default(); BUCKETS],
    }))
}

fn link() -> BackupLink {
    BackupLink::new(config(), Arc::new(Store::new()), 0, t0())
}

/// Everything polled: transmits as "conn: Msg", events as their Debug head.
fn drain(l: &mut BackupLink) -> (Vec<(ConnId, PeerMsg)>, Vec<LinkEvent>) {
    let mut t = Vec::new();
    while let Some(x) = l.poll_transmit() {
        t.push(x);
    }
    let mut e = Vec::new();
    while let Some(x) = l.poll_event() {
        e.push(x);
    }
    (t, e)
}

fn closes(events: &[LinkEvent]) -> Vec<ConnId> {
    events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// A current primary's store of a few keys, and the messages of its snapshot of every bucket.
fn snapshot() -> Vec<PeerMsg> {
    let store = Store::new();
    for i in 0..40 {
        store.put(Bytes::from(format!("k{i}")), Bytes::from("v"));
    }
    let mut msgs = Vec::new();
    for b in BucketId::all() {
        msgs.extend(bucket_msgs(&store, b, &Default::default(), t0()).0);
    }
    msgs.push(PeerMsg::TransferDone);
    msgs
}

#[test]
fn a_superseded_links_late_messages_change_nothing() {
    let mut l = link();
    l.handle_connect(1, primary_hello(10, 0, false), ms(0));
    let (t, _) = drain(&mut l);
    assert!(matches!(t[0], (1, PeerMsg::Hello(_))), "{t:?}");
    assert!(matches!(t[1], (1, PeerMsg::Applied(_))), "{t:?}");
    // Both empty: nothing to copy; the link runs, waiting for `Synced`.
    assert_eq!(l.machine().state().name(), "warm_start");
    // A fresh primary process (not current, epoch 4) redials once link 1 is silent past the
    // grace: the backup's data wins, the new link proposes epoch 5.
    l.handle_connect(2, primary_hello(11, 4, false), ms(5000));
    let (_, events) = drain(&mut l);
    assert_eq!(closes(&events), vec![1], "the old link is closed");
    assert!(!l.shared().live(1) && l.shared().live(2));
    assert_eq!(l.machine().state().name(), "bootstrap");
    // Link 1's driver still had a `Synced` in its buffer: it must neither end the bootstrap nor
    // adopt link 2's epoch before link 2's primary showed it has our hello (review F6).
    l.handle_ctl(1, PeerMsg::Synced, ms(5001));
    l.handle_ctl(
        1,
        PeerMsg::TransferAck {
            ok: true,
            reason: String::new(),
        },
        ms(5001),
    );
    assert_eq!(l.late_inputs(), 2);
    assert_eq!(
        l.machine().state().name(),
        "bootstrap",
        "not synced by link 1"
    );
    assert_eq!(
        l.machine().epoch(),
        0,
        "link 2's epoch was not adopted through link 1"
    );
    l.handle_snapshot_sent(2, Ok(()), ms(5002));
    l.handle_ctl(
        2,
        PeerMsg::TransferAck {
            ok: true,
            reason: String::new(),
        },
        ms(5003),
    );
    assert_eq!(l.machine().epoch(), 5);
    l.handle_ctl(2, PeerMsg::Synced, ms(5004));
    assert_eq!(l.machine().state().name(), "sync");
}

#[test]
fn a_new_link_waits_for_the_bucket_jobs_of_the_old_one() {
    let mut l = link();
    l.handle_connect(1, primary_hello(10, 3, true), ms(0));
    drain(&mut l);
    assert_eq!(l.machine().state().name(), "bootstrap");
    let msgs = snapshot();
    // Feed until the first bucket job is handed out.
    let mut job = None;
    for m in msgs.iter().cloned() {
        l.handle_ctl(1, m, ms(1));
        if let Some(LinkEvent::Apply { id, job: j }) = drain(&mut l).1.into_iter().next() {
            job = Some((id, j));
            break;
        }
    }
    let (id, job) = job.expect("a bucket job");
    assert_eq!(id.generation, 1);
    // The link fails while the job runs; the primary redials at once.
    l.handle_conn_closed(1, "cut".into(), ms(2));
    l.handle_connect(2, primary_hello(10, 3, true), ms(3));
    let (t, _) = drain(&mut l);
    assert!(t.is_empty(), "no hello while link 1's job runs: {t:?}");
    assert_eq!(l.jobs_outstanding(), 1);
    // The job ends (it installs its bucket); only now does link 2 open, discarding the partial
    // copy before anything else of link 2 touches the store.
    let keys = job.apply(&l.store, ms(4)).expect("verified");
    l.handle_job_done(id, Ok(keys), ms(4));
    let (t, _) = drain(&mut l);
    assert!(
        matches!(t.first(), Some((2, PeerMsg::Hello(h))) if h.keys == 0),
        "{t:?}"
    );
    assert_eq!(l.store.count(), 0, "the partial copy is discarded");
    // Link 2's transfer runs to its verified end.
    for m in msgs {
        l.handle_ctl(2, m, ms(5));
        loop {
            let (_, events) = drain(&mut l);
            let mut ran = false;
            for e in events {
                if let LinkEvent::Apply { id, job } = e {
                    let r = job.apply(&l.store, ms(5));
                    l.handle_job_done(id, r, ms(5));
                    ran = true;
                }
            }
            if !ran {
                break;
            }
        }
    }
    assert_eq!(l.store.count(), 40);
    assert!(l.machine().current());
}

#[test]
fn a_stale_primary_is_told_why_and_closed_after_a_grace() {
    let mut l = BackupLink::new(config(), Arc::new(Store::new()), 5, t0());
    l.handle_connect(1, primary_hello(10, 2, true), ms(0));
    let (t, e) = drain(&mut l);
    assert!(matches!(&t[..], [(1, PeerMsg::Goodbye(r))] if r.starts_with("stale primary")));
    assert!(closes(&e).is_empty(), "the goodbye leaves first");
    assert_eq!(l.poll_timeout(), Some(ms(200)));
    l.handle_timeout(ms(200));
    assert_eq!(closes(&drain(&mut l).1), vec![1]);
}

#[test]
fn reads_are_fenced_once_the_link_is_silent_past_the_ack_timeout() {
    let mut l = link();
    l.handle_connect(1, primary_hello(10, 0, false), ms(0));
    l.handle_ctl(1, PeerMsg::Synced, ms(1));
    assert!(l.machine().reads_allowed());
    l.handle_conn_closed(1, "cut".into(), ms(10));
    assert_eq!(l.poll_timeout(), Some(ms(1010)));
    l.handle_timeout(ms(1009));
    assert!(l.machine().read_refusal().is_none());
    l.handle_timeout(ms(1010));
    assert!(!l.machine().reads_allowed());
}

#[test]
fn a_stopping_backup_says_goodbye_drains_and_admits_no_new_link() {
    let mut l = link();
    l.handle_connect(1, primary_hello(10, 0, false), ms(0));
    l.handle_ctl(1, PeerMsg::Synced, ms(1));
    drain(&mut l);
    l.handle_shutdown(ms(10));
    let (t, _) = drain(&mut l);
    assert!(matches!(&t[..], [(1, PeerMsg::Goodbye(_))]), "{t:?}");
    l.handle_connect(2, primary_hello(11, 1, true), ms(11));
    assert_eq!(closes(&drain(&mut l).1), vec![2]);
    l.handle_timeout(ms(2010));
    assert_eq!(closes(&drain(&mut l).1), vec![1]);
    assert!(l.stopped());
}

#[test]
fn a_superseded_data_stream_applies_nothing_more() {
    let mut l = link();
    l.handle_connect(1, primary_hello(10, 0, false), ms(0));
    let shared = l.shared().clone();
    let store = Store::new();
    let counters = Counters::default();
    let put = |offset| PeerMsg::Put {
        offset,
        key: Bytes::from("k"),
        value: Bytes::from(format!("v{offset}")),
        stamp: None,
    };
    let mut applier = StreamApplier::default();
    let mark = LaneMark::default();
    let mut buf = bytes::BytesMut::new();
    put(1).encode(&mut buf);
    let mut out = Vec::new();
    let pass = shared.apply_pass(
        &mut applier,
        1,
        mark,
        &mut buf,
        &Default::default(),
        &store,
        &counters,
        ms(1),
        &mut out,
    );
    assert!(matches!(pass, Ok(Pass::Done)));
    l.handle_connect(2, primary_hello(10, 1, true), ms(5000));
    put(2).encode(&mut buf);
    let pass = shared.apply_pass(
        &mut applier,
        1,
        mark,
        &mut buf,
        &Default::default(),
        &store,
        &counters,
        ms(5001),
        &mut out,
    );
    assert!(pass.is_err(), "fenced: {pass:?}");
    assert_eq!(store.get(b"k"), Some(Bytes::from("v1")));
    assert_eq!(l.begin_job(1), None, "a superseded link starts no job");
}
