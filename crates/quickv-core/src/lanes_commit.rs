//! The commit point at the backup, on the primary's side (issue 22): reads that wait for the
//! write in flight on their key (the dirty check), and the writes of a lost link kept until the
//! backup says which of them it applied.
//!
//! Chain replication with the backup as the tail: a write takes effect when the backup applies
//! it, and the backup serves reads of what it applied. Two things follow for the primary, which
//! applies a write only when the ack comes back:
//!
//! - **A read of a key with a write in flight waits for that write's ack** (CRAQ's "dirty"
//!   check): the backup may already have served the new value, and answering the older one from
//!   the store would be a read going back in time. The read is answered with the value of the
//!   last write in flight on the key when it arrived, once the lane's ack covers everything sent
//!   before it ([`Lanes::read`]). A lane with no dirty key costs the read one atomic load.
//! - **A write whose ack was lost is neither applied nor forgotten.** The link's loss answers it
//!   `indeterminate` and keeps it, with its offset, as *unresolved*; reads of its key are refused
//!   until the next warm start. There the backup reports, per lane, the last write it applied
//!   ([`PeerMsg::Applied`](quickv_proto::peer::PeerMsg::Applied)), and [`Lanes::resolve`] applies
//!   the unresolved writes the backup applied (in lane order, recording their session answers, so
//!   a retry gets the original answer) and drops the others. A backup that restarted (not
//!   current) has lost what it applied and whatever it served: every unresolved write is then
//!   applied — any prefix of a lane is a consistent outcome, and the whole lane is the one that
//!   loses no value a client may have read there. A primary that is not current takes the
//!   backup's data whole and discards its unresolved writes ([`Lanes::discard_unresolved`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::{Effect, FrameSink, Lane, Lanes, Queued};
use crate::reply::{ReplyTo, Waiter};
use crate::store::entry::Value;
use crate::store::{BucketId, Store, BUCKETS};
use quickv_proto::peer::{LaneMark, ReplOffset};
use quickv_proto::{Reply, WriteStamp};

/// A lane's writes of a lost link, in offset order, with the link they were sent on.
#[derive(Debug, Default)]
pub(super) struct Unresolved {
    /// The link the writes were sent on (the primary's run id and the link's epoch).
    link: LaneMark,
    /// The writes: offset, effect, session stamp.
    writes: Vec<(ReplOffset, Effect, Option<WriteStamp>)>,
    /// Unresolved writes per key: reads of these keys are refused until resolved.
    keys: HashMap<Bytes, usize>,
}

impl Unresolved {
    /// Keeps a write of link `link` whose ack never came (refusals and resyncs, which changed
    /// nothing, are not kept).
    pub(super) fn keep(
        &mut self,
        link: LaneMark,
        offset: ReplOffset,
        effect: Effect,
        stamp: Option<WriteStamp>,
    ) {
        let key = match &effect {
            Effect::Put(key, _) | Effect::Remove(key) => key.clone(),
            Effect::Nothing => return,
        };
        self.link = link;
        *self.keys.entry(key).or_default() += 1;
        self.writes.push((offset, effect, stamp));
    }

    /// Keys with an unresolved write.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What [`Lanes::resolve`] did, for the log and status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Unresolved writes the backup had applied (or, restarted, may have): applied here too.
    pub kept: usize,
    /// Unresolved writes the backup never applied: dropped.
    pub dropped: usize,
}

/// A read's answer known at once ([`Lanes::read_with`], and the backup's reads likewise).
#[derive(Debug)]
pub enum ReadNow<'v> {
    /// The key's value in the store (`None`: absent), borrowed under the map's guard.
    Stored(Option<&'v Value>),
    /// A refusal (a write to the key of unknown fate).
    Refused(Reply),
}

impl ReadNow<'_> {
    /// The answer as a [`Reply`]; a stored value is shared, not copied ([`Value::to_bytes`]).
    pub fn into_reply(self) -> Reply {
        match self {
            ReadNow::Stored(Some(value)) => Reply::Value(value.to_bytes()),
            ReadNow::Stored(None) => Reply::NotFound,
            ReadNow::Refused(reply) => reply,
        }
    }
}

impl Lanes {
    /// [`Lanes::enable`] for a link the backup can name: `mark` holds this primary's run id and
    /// the link's epoch (its offset is unused), what the backup reports per lane in
    /// [`PeerMsg::Applied`](quickv_proto::peer::PeerMsg::Applied) for the writes it applies.
    pub fn enable_marked<S: FrameSink + 'static>(&self, senders: Vec<S>, mark: LaneMark) -> u64 {
        *self.mark.lock().unwrap_or_else(|p| p.into_inner()) = LaneMark { offset: 0, ..mark };
        let link = self.link.fetch_add(1, Ordering::AcqRel) + 1;
        self.open(senders);
        link
    }

    /// Publishes lane `b`'s count of dirty keys (its lock held).
    pub(super) fn mirror_dirty(&self, b: BucketId, l: &Lane) {
        let n = l.overlay.len() + l.unresolved.len();
        self.dirty[b.index()].store(n, Ordering::Release);
    }

    /// A read of `key` on the primary. `Some(answer)` now: from the store when no write to the
    /// key is in flight, or `unavailable` while a write to it is unresolved. `None` when the key
    /// has a write in flight: the read waits in the lane's queue and is answered at `reply_to()`
    /// (called then, once) with that write's value once the ack covers it, or `unavailable` if
    /// the link is lost first. `now` is asked only then (the ack clock).
    pub fn read(
        &self,
        store: &Store,
        key: &Bytes,
        reply_to: impl FnOnce() -> ReplyTo,
        now: impl FnOnce() -> Instant,
    ) -> Option<Reply> {
        self.read_with(store, key, reply_to, now, |read| read.into_reply())
    }

    /// [`Lanes::read`] whose immediate answer is handed to `answer` instead of returned as a
    /// [`Reply`]: a value from the store is borrowed under the map's guard
    /// ([`Store::get_with`]), so a caller that encodes it at once copies it once and touches no
    /// reference count. The checks, and the moments the store is read, are those of
    /// [`Lanes::read`]: `Some(answer(..))` now, `None` when the read waits (answered at
    /// `reply_to()`, and `answer` is not called).
    pub fn read_with<R>(
        &self,
        store: &Store,
        key: &Bytes,
        reply_to: impl FnOnce() -> ReplyTo,
        now: impl FnOnce() -> Instant,
        answer: impl FnOnce(ReadNow<'_>) -> R,
    ) -> Option<R> {
        let b = BucketId::of(key);
        if self.dirty[b.index()].load(Ordering::Acquire) == 0 {
            return Some(store.get_with(key, |value| answer(ReadNow::Stored(value))));
        }
        let mut guard = self.lane(b);
        let l = &mut *guard;
        if l.unresolved.keys.contains_key(key) {
            return Some(answer(ReadNow::Refused(Reply::Unavailable(
                "a write to this key lost its ack with the link to the backup; its fate is \
                 settled when the backup is back"
                    .into(),
            ))));
        }
        let Some((after, _)) = l.overlay.get(key) else {
            // Read under the lane's lock, as the dirty check found it.
            return Some(store.get_with(key, |value| answer(ReadNow::Stored(value))));
        };
        let waited = match after {
            Some(value) => Reply::Value(value.clone()),
            None => Reply::NotFound,
        };
        // Behind everything sent so far on the lane (the queue stays in offset order): answered
        // once the key's last write is acknowledged, with its value.
        let offset = l.next;
        l.clock.queued(now(), false);
        l.queue.push_back(Queued {
            offset,
            effect: Effect::Nothing,
            reply: Some((Waiter::new(reply_to()), waited)),
            resync: false,
            stamp: None,
            read: true,
        });
        None
    }

    /// Settles the writes of the lost link at a warm start where this primary's data is the
    /// pair's. `applied`: the backup's [`LaneMark`]s when it is current (it still holds what it
    /// applied: those writes are applied here, in lane order, the rest dropped); `None` when it
    /// restarted (every unresolved write is applied: the backup may have served any of them).
    /// Session answers of the applied writes are recorded (at `now`), as an ack would.
    pub fn resolve(
        &self,
        store: &Store,
        applied: Option<&[LaneMark; BUCKETS]>,
        now: Instant,
    ) -> Resolved {
        let mut done = Resolved::default();
        for b in BucketId::all() {
            let mut guard = self.lane(b);
            let l = &mut *guard;
            let unresolved = std::mem::take(&mut l.unresolved);
            let upto = match applied {
                None => ReplOffset::MAX,
                Some(marks) => {
                    let m = marks[b.index()];
                    let same_link = (m.primary_run, m.epoch)
                        == (unresolved.link.primary_run, unresolved.link.epoch);
                    if same_link {
                        m.offset
                    } else {
                        0
                    }
                }
            };
            for (offset, effect, stamp) in unresolved.writes {
                if offset > upto {
                    done.dropped += 1;
                    continue;
                }
                done.kept += 1;
                let removed = match effect {
                    Effect::Put(key, value) => {
                        store.put(key, value);
                        None
                    }
                    Effect::Remove(key) => store.remove(&key),
                    Effect::Nothing => None,
                };
                if let Some(stamp) = stamp {
                    store.sessions().record(b, stamp, removed, now);
                }
            }
            self.mirror_dirty(b, l);
        }
        done
    }

    /// Forgets the writes of the lost link: this primary takes the backup's data whole (it is
    /// not current), which holds exactly the ones that took effect.
    pub fn discard_unresolved(&self) -> usize {
        let mut dropped = 0;
        for b in BucketId::all() {
            let mut l = self.lane(b);
            dropped += std::mem::take(&mut l.unresolved).writes.len();
            self.mirror_dirty(b, &l);
        }
        dropped
    }

    /// Unresolved writes held, over every lane (status).
    pub fn unresolved(&self) -> usize {
        BucketId::all()
            .map(|b| self.lane(b).unresolved.writes.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{submit, t0, Pending};
    use quickv_proto::Op;

    fn open(lanes: &Lanes, run: u64, epoch: u64) -> Vec<std::sync::mpsc::Receiver<Bytes>> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| std::sync::mpsc::channel()).unzip();
        let mark = LaneMark {
            primary_run: run,
            epoch,
            offset: 0,
        };
        lanes.enable_marked(txs, mark);
        rxs
    }

    fn update(k: &'static str, v: &'static str) -> Op {
        Op::Update {
            key: Bytes::from(k),
            value: Bytes::from(v),
        }
    }

    /// A read on a channel: `Err(answer)` now, `Ok(channel)` when it waits.
    fn read(lanes: &Lanes, store: &Store, key: &'static str) -> Result<Pending, Reply> {
        let (tx, rx) = std::sync::mpsc::channel();
        let to = move || {
            ReplyTo::Once(Box::new(move |reply| {
                let _ = tx.send(reply);
            }))
        };
        match lanes.read(store, &Bytes::from(key), to, t0) {
            Some(now) => Err(now),
            None => Ok(rx),
        }
    }

    fn at_once(h: Result<Pending, Reply>) -> Reply {
        match h {
            Err(reply) => reply,
            Ok(_) => panic!("expected an answer at once, the read waits"),
        }
    }

    fn queued(h: Result<Pending, Reply>) -> Pending {
        h.unwrap_or_else(|now| panic!("expected to wait for the ack, got {now:?} at once"))
    }

    fn value(v: &'static str) -> Reply {
        Reply::Value(Bytes::from(v))
    }

    #[test]
    fn a_read_of_a_key_with_a_write_in_flight_answers_that_write_after_its_ack() {
        let store = Store::new();
        store.put(Bytes::from("k"), Bytes::from("v1"));
        let lanes = Lanes::default();
        let _rx = open(&lanes, 7, 1);
        assert_eq!(
            at_once(read(&lanes, &store, "k")),
            value("v1"),
            "clean: at once"
        );
        let write = queued(submit(&lanes, &store, update("k", "v2"), None, ""));
        let r = queued(read(&lanes, &store, "k"));
        assert_eq!(
            at_once(read(&lanes, &store, "other")),
            Reply::NotFound,
            "another key of the lane is answered at once"
        );
        assert!(r.try_recv().is_err(), "not before the ack");
        lanes
            .handle_ack(&store, BucketId::of(b"k"), 1, t0())
            .expect("ack");
        assert_eq!(write.try_recv().expect("write answered"), Reply::Ok);
        assert_eq!(r.try_recv().expect("read answered"), value("v2"));
    }

    #[test]
    fn a_lost_ack_keeps_the_write_unresolved_and_the_backups_marks_settle_it() {
        let b = BucketId::of(b"k");
        for (backup, want, kept) in [
            // The backup applied offset 1 of this link: kept.
            (Some((7, 1, 1)), Some("v2"), 1),
            // It applied nothing of this link (its mark is an older link's): dropped.
            (Some((7, 0, 5)), Some("v1"), 0),
            // It restarted: kept (it may have served the value before it died).
            (None, Some("v2"), 1),
        ] {
            let store = Store::new();
            store.put(Bytes::from("k"), Bytes::from("v1"));
            let lanes = Lanes::default();
            let _rx = open(&lanes, 7, 1);
            let write = queued(submit(&lanes, &store, update("k", "v2"), None, ""));
            let r = queued(read(&lanes, &store, "k"));
            lanes.fail_all("link lost", t0());
            assert!(matches!(write.try_recv(), Ok(Reply::Indeterminate(_))));
            assert!(matches!(r.try_recv(), Ok(Reply::Unavailable(_))));
            assert!(
                matches!(read(&lanes, &store, "k"), Err(Reply::Unavailable(_))),
                "refused while unresolved"
            );
            assert_eq!(lanes.unresolved(), 1);
            let mut marks = [LaneMark::default(); BUCKETS];
            if let Some((run, epoch, offset)) = backup {
                marks[b.index()] = LaneMark {
                    primary_run: run,
                    epoch,
                    offset,
                };
            }
            let done = lanes.resolve(&store, backup.map(|_| &marks), t0());
            assert_eq!(done.kept, kept, "{backup:?}");
            assert_eq!(store.get(b"k"), want.map(Bytes::from), "{backup:?}");
            assert_eq!(
                at_once(read(&lanes, &store, "k")),
                value(want.unwrap_or("v1"))
            );
            assert_eq!(lanes.unresolved(), 0);
        }
    }

    #[test]
    fn a_primary_that_takes_the_backups_data_discards_its_unresolved_writes() {
        let store = Store::new();
        let lanes = Lanes::default();
        let _rx = open(&lanes, 7, 1);
        let insert = Op::Insert {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        };
        let _write = queued(submit(&lanes, &store, insert, None, ""));
        lanes.fail_all("link lost", t0());
        assert_eq!(lanes.discard_unresolved(), 1);
        assert_eq!(at_once(read(&lanes, &store, "k")), Reply::NotFound);
    }
}
