//! The commit point's steps at a warm start, without I/O (issue 22): what the backup reports
//! right after its hello, how it records what it applied, and how the primary settles the writes
//! of the lost link from that report. The server's drivers and the simulator call these; neither
//! writes them out.
//!
//! - The backup applies each data-stream pass with [`apply_marked`], under the lock of its lane
//!   marks: every lane the pass advanced gets the link's mark (primary run id, epoch) and the
//!   offset applied.
//! - After its hello it sends [`PeerMsg::Applied`] with those marks ([`backup_opening`]).
//! - The primary reads that report ([`applied_marks`]) and, before anything else of the warm start
//!   touches its store, settles its unresolved writes with [`settle_lost_writes`].

use std::time::Instant;

use quickv_proto::peer::{LaneMark, PeerHello, PeerMsg};

use crate::apply::{Pass, StreamApplier};
use crate::counters::Counters;
use crate::error::LinkError;
use crate::lanes::{Lanes, Resolved};
use crate::store::{BucketId, Store, BUCKETS};

/// The backup's lane marks: per lane, the last write applied and the link it came on.
pub type Marks = [LaneMark; BUCKETS];

/// [`StreamApplier::apply_buffered`] that records, in `marks`, the mark of every lane the pass
/// advanced (`link`: the primary's run id and the link's epoch; its offset is unused). A fenced
/// applier (`live()` false) applies nothing and changes no mark. The caller holds `marks` under
/// the lock a newer link's report reads them under.
#[allow(clippy::too_many_arguments)]
pub fn apply_marked(
    applier: &mut StreamApplier,
    marks: &mut Marks,
    link: LaneMark,
    buf: &mut bytes::BytesMut,
    limits: &quickv_proto::Limits,
    store: &Store,
    counters: &Counters,
    now: Instant,
    live: impl Fn() -> bool,
    out: &mut Vec<PeerMsg>,
) -> Result<Pass, LinkError> {
    let prior = applier.applied;
    let pass = applier.apply_buffered(buf, limits, store, counters, now, live, out);
    for b in BucketId::all() {
        let offset = applier.applied[b.index()];
        if offset != prior[b.index()] {
            marks[b.index()] = LaneMark { offset, ..link };
        }
    }
    pass
}

/// What the backup sends when it answers an admitted hello: its hello, then its marks (taken
/// after the admission fenced the older links' appliers).
pub fn backup_opening(ours: PeerHello, marks: Marks) -> [PeerMsg; 2] {
    [
        PeerMsg::Hello(Box::new(ours)),
        PeerMsg::Applied(Box::new(marks)),
    ]
}

/// The primary's reading of the message after the backup's hello: its marks, or why the link
/// ends.
pub fn applied_marks(msg: PeerMsg) -> Result<Box<Marks>, String> {
    match msg {
        PeerMsg::Applied(marks) => Ok(marks),
        other => Err(format!(
            "expected the backup's applied marks, got {other:?}"
        )),
    }
}

/// What [`settle_lost_writes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// This primary is not current: it takes the backup's data whole; this many writes forgotten.
    Discarded(usize),
    /// This primary's data is the pair's: the writes the backup applied (all of them if it
    /// restarted) are applied here too, the others dropped.
    Resolved(Resolved),
}

/// Settles the writes of the previous link whose acks were lost, from the hellos (`ours`, the
/// primary's; `theirs`, the backup's) and the backup's `applied` marks; session answers of the
/// writes applied are recorded at `now`. The server's driver calls it under the store's transfer
/// fence, before anything of the warm start touches the store.
pub fn settle_lost_writes(
    lanes: &Lanes,
    store: &Store,
    ours: &PeerHello,
    theirs: &PeerHello,
    applied: &Marks,
    now: Instant,
) -> Settled {
    if !ours.synced {
        return Settled::Discarded(lanes.discard_unresolved());
    }
    let backup = theirs.synced.then_some(applied);
    Settled::Resolved(lanes.resolve(store, backup, now))
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::store::sessions::Lookup;
    use crate::store::Digest;
    use crate::testing::{submit, t0};
    use quickv_proto::{Op, Reply};

    fn hello(primary: bool, synced: bool) -> PeerHello {
        PeerHello {
            primary,
            run_id: 7,
            pair: 0,
            epoch: 1,
            synced,
            keys: 0,
            digests: [Digest::default(); BUCKETS],
        }
    }

    /// Two empty stores and the primary's lanes open on link 1 of primary run 7; the lanes'
    /// frames come out of the receivers, one per lane.
    fn linked() -> (
        Store,
        Store,
        Lanes,
        Vec<std::sync::mpsc::Receiver<Bytes>>,
        LaneMark,
    ) {
        let lanes = Lanes::default();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| std::sync::mpsc::channel()).unzip();
        let link = LaneMark {
            primary_run: 7,
            epoch: 1,
            offset: 0,
        };
        lanes.enable_marked(txs, link);
        (Store::new(), Store::new(), lanes, rxs, link)
    }

    fn put(k: &'static str, v: &'static str) -> Op {
        Op::Update {
            key: Bytes::from(k),
            value: Bytes::from(v),
        }
    }

    /// Two writes of one lane in flight; the backup applies the first only (the second frame is
    /// still on its way) and the link is lost. Its marks, reported after its hello, make the
    /// primary apply exactly the first; a fenced applier records nothing.
    #[test]
    fn the_backups_marks_settle_what_the_primary_lost() {
        let (primary, backup, lanes, rxs, link) = linked();
        let b = BucketId::of(b"k");
        for store in [&primary, &backup] {
            store.put(Bytes::from("k"), Bytes::from("v0"));
        }
        let first = submit(&lanes, &primary, put("k", "v1"), None, "");
        let second = submit(&lanes, &primary, put("k", "v2"), None, "");
        assert!(first.is_ok() && second.is_ok(), "both wait for their acks");
        let frames: Vec<Bytes> = rxs[b.index()].try_iter().collect();
        assert_eq!(frames.len(), 2);

        let mut marks: Marks = [LaneMark::default(); BUCKETS];
        let mut buf = BytesMut::from(&frames[0][..]);
        let (limits, counters) = (Default::default(), Counters::default());
        let mut applier = StreamApplier::default();
        let mut out = Vec::new();
        let fenced = |a: &mut StreamApplier, m: &mut Marks, buf: &mut BytesMut| {
            let mut out = Vec::new();
            apply_marked(
                a,
                m,
                link,
                buf,
                &limits,
                &backup,
                &counters,
                t0(),
                || false,
                &mut out,
            )
        };
        assert!(fenced(&mut applier, &mut marks, &mut buf.clone()).is_err());
        assert_eq!(
            marks[b.index()],
            LaneMark::default(),
            "a fenced pass marks nothing"
        );
        apply_marked(
            &mut applier,
            &mut marks,
            link,
            &mut buf,
            &limits,
            &backup,
            &counters,
            t0(),
            || true,
            &mut out,
        )
        .expect("applied");
        assert_eq!(marks[b.index()], LaneMark { offset: 1, ..link });

        lanes.fail_all("link lost", t0());
        let [PeerMsg::Hello(_), PeerMsg::Applied(report)] =
            backup_opening(hello(false, true), marks)
        else {
            panic!("the hello, then the marks");
        };
        let applied = applied_marks(PeerMsg::Applied(report)).expect("marks");
        assert!(applied_marks(PeerMsg::Synced).is_err());
        let settled = settle_lost_writes(
            &lanes,
            &primary,
            &hello(true, true),
            &hello(false, true),
            &applied,
            t0(),
        );
        assert_eq!(
            settled,
            Settled::Resolved(Resolved {
                kept: 1,
                dropped: 1
            })
        );
        assert_eq!(primary.get(b"k"), backup.get(b"k"));
        assert_eq!(primary.get(b"k"), Some(Bytes::from("v1")));
        let read = lanes.read(&primary, &Bytes::from("k"), || unreachable!(), t0);
        assert_eq!(read, Some(Reply::Value(Bytes::from("v1"))));
    }

    /// The simulator's failing seeds of round 6 (477, 4896, …; docs/replication.md): a stamped
    /// insert and a stamped delete of one key in flight at a link loss, both applied and recorded
    /// by the backup, neither by the primary. The bucket's digests agree (the two cancel), so no
    /// transfer would carry the backup's session records. Settled from the backup's marks, the
    /// primary applies both with their answers: the two session tables are equal, and a retry of
    /// either gets its original answer.
    #[test]
    fn a_cancelling_insert_and_delete_leave_equal_session_tables() {
        let (primary, backup, lanes, rxs, link) = linked();
        let b = BucketId::of(b"k");
        let write = |session| quickv_proto::SessionWrite {
            stamp: quickv_proto::WriteStamp {
                owner: 1,
                session,
                seq: 1,
            },
            age_ms: 0,
        };
        let insert = Op::Insert {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        };
        let delete = Op::Delete {
            key: Bytes::from("k"),
        };
        let (i, d) = (
            submit(&lanes, &primary, insert, Some(write(1)), ""),
            submit(&lanes, &primary, delete, Some(write(2)), ""),
        );
        assert!(i.is_ok() && d.is_ok(), "both in flight");
        let mut buf = BytesMut::new();
        for frame in rxs[b.index()].try_iter() {
            buf.extend_from_slice(&frame);
        }
        let mut marks: Marks = [LaneMark::default(); BUCKETS];
        let (limits, counters) = (Default::default(), Counters::default());
        let mut applier = StreamApplier::default();
        apply_marked(
            &mut applier,
            &mut marks,
            link,
            &mut buf,
            &limits,
            &backup,
            &counters,
            t0(),
            || true,
            &mut Vec::new(),
        )
        .expect("applied");
        lanes.fail_all("link lost", t0());
        assert_eq!(primary.digest(b), backup.digest(b), "the two writes cancel");
        let settled = settle_lost_writes(
            &lanes,
            &primary,
            &hello(true, true),
            &hello(false, true),
            &marks,
            t0(),
        );
        assert_eq!(
            settled,
            Settled::Resolved(Resolved {
                kept: 2,
                dropped: 0
            })
        );
        // A table's image lists its answers in the map's order, which differs between two
        // tables holding the same answers: compare them as sets.
        let image = |store: &Store| {
            let (marks, mut answers) = store.sessions().image(b, t0());
            answers.sort_by_key(|a| (a.stamp.owner, a.stamp.session, a.stamp.seq));
            (marks, answers)
        };
        assert_eq!(image(&primary), image(&backup), "equal session tables");
        // The insert's answer, and the delete's (the value it removed).
        for (session, answer) in [(1, Reply::Ok), (2, Reply::Value(Bytes::from("v")))] {
            let retry = primary.sessions().lookup(b, &write(session), t0());
            assert_eq!(retry, backup.sessions().lookup(b, &write(session), t0()));
            assert_eq!(retry, Lookup::Answered(answer));
        }
    }

    #[test]
    fn a_primary_that_is_not_current_forgets_its_lost_writes() {
        let store = Store::new();
        let lanes = Lanes::default();
        let (txs, _rxs): (Vec<_>, Vec<_>) =
            (0..BUCKETS).map(|_| std::sync::mpsc::channel()).unzip();
        lanes.enable(txs);
        store.put(Bytes::from("k"), Bytes::from("v0"));
        let _ = submit(&lanes, &store, put("k", "v"), None, "");
        lanes.fail_all("link lost", t0());
        let marks = [LaneMark::default(); BUCKETS];
        let settled = settle_lost_writes(
            &lanes,
            &store,
            &hello(true, false),
            &hello(false, true),
            &marks,
            t0(),
        );
        assert_eq!(settled, Settled::Discarded(1));
        assert_eq!(store.get(b"k"), Some(Bytes::from("v0")));
    }
}
