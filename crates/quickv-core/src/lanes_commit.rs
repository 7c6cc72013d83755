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
        let b = BucketId::of(key);
        let from_store = || match store.get(key) {
            Some(value) => Reply::Value(value),
            None => Reply::NotFound,
        };
        if self.dirty[b.index()].load(Ordering::Acquire) == 0 {
            return Some(from_store());
        }
        let mut guard = self.lane(b);
        let l = &mut *guard;
        if l.unresolved.keys.contains_key(key) {
            return Some(Reply::Unavailable(
                "a write to this key lost its ack with the link to the backup; its fate is \
                 settled when the backup is back"
                    .into(),
            ));
        }
        let Some((after, _)) = l.overlay.get(key) else {
            return Some(from_store());
        };
        let answer = match after {
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
            reply: Some((Waiter::new(reply_to()), answer)),
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
