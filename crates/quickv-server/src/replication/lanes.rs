//! The primary's 32 replication lanes: deciding writes, sending them in lane order, applying them
//! when the backup acknowledges.
//!
//! A write is decided (exists? not found? old value?) against the lane's *overlay* of writes sent
//! but not yet acknowledged, falling back to the store. It is then given the lane's next offset,
//! sent to the backup, and queued. Nothing touches the primary's store until the backup's
//! cumulative ack covers the write: then it is applied and the client is answered. Readers on the
//! primary therefore never see a value the backup has not applied.
//!
//! A refusal that depended on an unacknowledged write (insert of a key whose insert is in flight)
//! waits in the queue behind that write, so it is answered only once what it depended on is known;
//! if the link fails first it is indeterminate too. When the link is lost every queued write becomes
//! indeterminate and the overlay is dropped: those writes were not applied here, and the next warm
//! start makes the backup agree with this store (the primary's data wins after a link loss).
//!
//! A session-stamped write (`store::sessions`) is first looked up: among the lane's stamped writes
//! in flight (a retry of one of them waits behind it and gets the same answer), then in the key's
//! bucket's session table (a retry of an applied write gets its original answer, one whose record
//! may be gone a `SessionExpired` error). Only a fresh write is decided and sent; its stamp travels
//! in the `Put`/`Remove`, and the ack that applies it to the store also records its answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quickv_net::Outbox;
use tokio::sync::{mpsc, Notify};

use crate::replication::reply::{via_oneshot, ReplyTo, Waiter};
use crate::replication::resync::{AckClock, ResyncPlan};
use crate::replication::Submitted;
use crate::store::sessions::Lookup;
use crate::store::{BucketId, Digest, Store, BUCKETS};
use quickv_proto::peer::{PeerMsg, ReplOffset};
use quickv_proto::{Limits, Op, Reply, SessionWrite, WriteStamp};

/// Where a lane's frames go: the data stream of the current link that carries the lane.
#[derive(Debug, Clone)]
pub enum LaneSink {
    /// A channel of encoded frames (the simulator, unit tests, benches).
    Channel(mpsc::UnboundedSender<Bytes>),
    /// The data stream's outbox: frames are encoded straight into its writer's next batch (no
    /// allocation, no channel message per write).
    Outbox(Arc<Outbox>),
}

impl LaneSink {
    /// Sends the frames `encode` appends; false if the stream's writer is gone.
    fn send(&self, encode: impl FnOnce(&mut BytesMut)) -> bool {
        match self {
            LaneSink::Channel(tx) => {
                let mut buf = BytesMut::new();
                encode(&mut buf);
                tx.send(buf.freeze()).is_ok()
            }
            LaneSink::Outbox(outbox) => outbox.try_push(false, encode),
        }
    }
}

impl From<mpsc::UnboundedSender<Bytes>> for LaneSink {
    fn from(tx: mpsc::UnboundedSender<Bytes>) -> LaneSink {
        LaneSink::Channel(tx)
    }
}

impl From<Arc<Outbox>> for LaneSink {
    fn from(outbox: Arc<Outbox>) -> LaneSink {
        LaneSink::Outbox(outbox)
    }
}

/// One lane per bucket.
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<Mutex<Lane>>,
    /// Frame limits of the link: resync chunks must fit them.
    limits: Limits,
    /// Signalled whenever a lane's queue becomes empty (graceful stops wait on it).
    pub drained: Notify,
    /// The generation of the link the lanes are open on, bumped by every [`Lanes::enable`]: a
    /// superseded link's ack reader presents its own and changes nothing ([`Lanes::handle_ack_on`]).
    link: std::sync::atomic::AtomicU64,
}

/// A lane's state; guarded by its mutex, held only for short, non-blocking sections.
#[derive(Debug, Default)]
struct Lane {
    /// Frames for the current link's lane writer; `None` when writes are not accepted.
    tx: Option<LaneSink>,
    /// Last offset assigned on this link.
    next: ReplOffset,
    /// Highest offset the backup acknowledged on this link.
    acked: ReplOffset,
    /// Writes sent and not yet acknowledged, in offset order, plus refusals waiting behind them.
    queue: VecDeque<Queued>,
    /// Per key with writes in flight: its value after the last of them (`None` = deleted) and that
    /// write's offset.
    overlay: HashMap<Bytes, (Option<Bytes>, ReplOffset)>,
    /// Stamped writes sent and not yet acknowledged: their offset and answer, so that a retry
    /// arriving meanwhile waits for the same ack and gets the same answer.
    stamped: HashMap<WriteStamp, (ReplOffset, Reply)>,
    /// Since when the lane waits for ack progress (the ack timeout's measure; see [`AckClock`]).
    clock: AckClock,
    /// A resync of this lane's bucket is being built ([`Lanes::begin_resync`]): writes to the
    /// bucket are refused until it is queued, so the lane's offset and overlay stay as planned.
    resyncing: bool,
}

/// A queued answer.
#[derive(Debug)]
struct Queued {
    /// Completes when the ack reaches this offset.
    offset: ReplOffset,
    /// What to do to the store then.
    effect: Effect,
    /// Where the answer goes, and the answer, if a client is waiting.
    reply: Option<(Waiter, Reply)>,
    /// Whether this entry is a resync (the ack clock gives those longer).
    resync: bool,
    /// The session stamp of the write, recorded in the bucket's session table when applied.
    stamp: Option<WriteStamp>,
}

#[derive(Debug)]
enum Effect {
    Put(Bytes, Bytes),
    Remove(Bytes),
    /// A refusal or a resync: nothing to apply.
    Nothing,
}

/// Per-lane figures for `status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LaneStatus {
    /// Last offset sent.
    pub offset: ReplOffset,
    /// Last offset acknowledged.
    pub acked: ReplOffset,
    /// Entries waiting for an ack.
    pub pending: usize,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes::new(Limits::default())
    }
}

/// What a digest check on one lane asks the driver to do.
pub enum CheckOutcome {
    /// Nothing (lane disabled: no link).
    Skipped,
    /// A check frame was queued.
    Sent,
}

impl Lanes {
    /// Lanes for a link with these frame limits.
    pub fn new(limits: Limits) -> Lanes {
        Lanes {
            lanes: (0..BUCKETS).map(|_| Mutex::new(Lane::default())).collect(),
            limits,
            drained: Notify::new(),
            link: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lane(&self, b: BucketId) -> std::sync::MutexGuard<'_, Lane> {
        // A panic while holding a lane lock would be a bug; keep serving with the data as it is.
        self.lanes[b.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens every lane for writes on a new link, offsets from zero; returns the link's
    /// generation (see [`Lanes::handle_ack_on`]).
    pub fn enable<S: Into<LaneSink>>(&self, senders: Vec<S>) -> u64 {
        let link = self.link.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.open(senders);
        link
    }

    /// Whether `link` is still the generation the lanes are open on (read under a lane's lock).
    fn is_live(&self, link: u64) -> bool {
        self.link.load(std::sync::atomic::Ordering::Acquire) == link
    }

    /// [`Lanes::handle_ack`] from the ack reader of link `link`: ignored (`Ok(false)`) once a
    /// newer link has opened the lanes, so a superseded reader cannot apply the new link's writes.
    pub fn handle_ack_on(
        &self,
        link: u64,
        store: &Store,
        b: BucketId,
        offset: ReplOffset,
    ) -> Result<bool, String> {
        if !self.is_live(link) {
            return Ok(false);
        }
        self.handle_ack_if(store, b, offset, Instant::now(), || self.is_live(link))
            .map(|()| true)
    }

    fn open<S: Into<LaneSink>>(&self, senders: Vec<S>) {
        for (b, tx) in BucketId::all().zip(senders) {
            let mut l = self.lane(b);
            *l = Lane {
                tx: Some(tx.into()),
                ..Lane::default()
            };
        }
    }

    /// The link is gone: nothing queued will be acknowledged. Every waiting write is indeterminate.
    pub fn fail_all(&self, reason: &str) {
        self.fail_all_at(reason, Instant::now())
    }

    /// [`Lanes::fail_all`] at `now` (the time is an argument: a simulator passes virtual time).
    pub fn fail_all_at(&self, reason: &str, now: Instant) {
        for b in BucketId::all() {
            let mut l = self.lane(b);
            l.tx = None;
            l.overlay.clear();
            l.stamped.clear();
            l.clock.reset();
            l.resyncing = false;
            for q in l.queue.drain(..) {
                if let Some((waiter, _)) = q.reply {
                    let why = format!("sent to the backup, but no ack came: {reason}");
                    waiter.send(Reply::Indeterminate(why), now);
                }
            }
        }
        self.drained.notify_waiters();
    }

    /// Decides a client write and, if it changes anything, sends it down its lane.
    pub fn submit(&self, store: &Store, op: Op, refusal: impl FnOnce() -> String) -> Submitted {
        self.submit_stamped(store, op, None, refusal)
    }

    /// [`Lanes::submit`] for a write that may carry a session stamp: a retry of a write this pair
    /// already applied (or is applying) gets that write's answer and changes nothing.
    pub fn submit_stamped(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
    ) -> Submitted {
        via_oneshot(|to| self.submit_to(store, op, session, refusal, to))
    }

    /// Decides a write as [`Lanes::submit_stamped`] does, but a write that waits for an ack is
    /// answered at `reply_to()` (called only then, once) by whoever applies that ack; `None` then.
    /// `Some(answer)` when it is answered now.
    pub fn submit_to(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
        reply_to: impl FnOnce() -> ReplyTo,
    ) -> Option<Reply> {
        // One clock read per write: the session lookup and the ack clock.
        self.submit_to_at(store, op, session, refusal, reply_to, Instant::now())
    }

    /// [`Lanes::submit_to`] at `now`: the session lookup and the ack clock use it (a simulator
    /// passes virtual time).
    pub fn submit_to_at(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
        reply_to: impl FnOnce() -> ReplyTo,
        now: Instant,
    ) -> Option<Reply> {
        self.decide(store, op, session, refusal, reply_to, now)
            .err()
    }

    /// [`Lanes::submit_to`]: `Ok(())` when queued, `Err(answer)` when answered now.
    fn decide(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
        reply_to: impl FnOnce() -> ReplyTo,
        now: Instant,
    ) -> Result<(), Reply> {
        let Some(key) = op.key().cloned() else {
            return Err(Reply::Unavailable("not a write".into()));
        };
        let bucket = BucketId::of(&key);
        let mut guard = self.lane(bucket);
        let l = &mut *guard;
        let Some(tx) = l.tx.as_ref() else {
            return Err(Reply::Unavailable(refusal()));
        };
        if l.resyncing {
            return Err(Reply::Unavailable(format!(
                "bucket {bucket} is being resynced after a digest mismatch; retry in a moment"
            )));
        }
        if let Some(write) = &session {
            if let Some((offset, answer)) = l.stamped.get(&write.stamp) {
                // A retry of a write still in flight: answer it with that write, after its ack.
                let (offset, answer) = (*offset, answer.clone());
                l.clock.queued(now, false);
                l.queue.push_back(Queued {
                    offset: offset.max(l.queue.back().map_or(0, |q| q.offset)),
                    effect: Effect::Nothing,
                    reply: Some((Waiter::new(reply_to()), answer)),
                    resync: false,
                    stamp: None,
                });
                return Ok(());
            }
            match store.sessions().lookup(bucket, write, now) {
                Lookup::Fresh => {}
                Lookup::Answered(answer) | Lookup::Expired(answer) => return Err(answer),
            }
        }
        let stamp = session.map(|w| w.stamp);
        let in_flight = l.overlay.get(&key);
        let current = match in_flight {
            Some((v, _)) => v.clone(),
            None => store.get(&key),
        };
        let (effect, answer) = match (op, current) {
            (Op::Insert { .. }, Some(_)) => (Effect::Nothing, Reply::Exists),
            (Op::Insert { key, value }, None) => (Effect::Put(key, value), Reply::Ok),
            (Op::Update { .. }, None) => (Effect::Nothing, Reply::NotFound),
            (Op::Update { key, value }, Some(_)) => (Effect::Put(key, value), Reply::Ok),
            (Op::Delete { .. }, None) => (Effect::Nothing, Reply::NotFound),
            (Op::Delete { key }, Some(old)) => (Effect::Remove(key), Reply::Value(old)),
            _ => (Effect::Nothing, Reply::Unavailable("not a write".into())),
        };
        let frame_for = |offset| match &effect {
            Effect::Put(key, value) => Some(PeerMsg::Put {
                offset,
                key: key.clone(),
                value: value.clone(),
                stamp,
            }),
            Effect::Remove(key) => Some(PeerMsg::Remove {
                offset,
                key: key.clone(),
                stamp,
            }),
            Effect::Nothing => None,
        };
        let offset = l.next + 1;
        let Some(frame) = frame_for(offset) else {
            if in_flight.is_none() {
                return Err(answer);
            }
            // The refusal rests on a write not yet acknowledged: answer it after that one.
            let offset = l.next;
            l.clock.queued(now, false);
            l.queue.push_back(Queued {
                offset,
                effect,
                reply: Some((Waiter::new(reply_to()), answer)),
                resync: false,
                stamp: None,
            });
            return Ok(());
        };
        if !tx.send(|buf| frame.encode(buf)) {
            return Err(Reply::Unavailable(
                "the link to the backup just closed".into(),
            ));
        }
        l.next = offset;
        let after = match &effect {
            Effect::Put(_, v) => Some(v.clone()),
            _ => None,
        };
        l.overlay.insert(key, (after, offset));
        if let Some(stamp) = stamp {
            l.stamped.insert(stamp, (offset, answer.clone()));
        }
        l.clock.queued(now, false);
        l.queue.push_back(Queued {
            offset,
            effect,
            reply: Some((Waiter::new(reply_to()), answer)),
            resync: false,
            stamp,
        });
        Ok(())
    }

    /// The backup applied everything up to `offset` on lane `b`: apply and answer in order.
    pub fn handle_ack(&self, store: &Store, b: BucketId, offset: ReplOffset) -> Result<(), String> {
        self.handle_ack_at(store, b, offset, Instant::now())
    }

    /// [`Lanes::handle_ack`] at `now`: session records, answers and the ack clock use it (one
    /// clock read per ack, which may settle many writes; a simulator passes virtual time).
    pub fn handle_ack_at(
        &self,
        store: &Store,
        b: BucketId,
        offset: ReplOffset,
        now: Instant,
    ) -> Result<(), String> {
        self.handle_ack_if(store, b, offset, now, || true)
    }

    /// [`Lanes::handle_ack`], applied only if `live()` holds under the lane's lock.
    fn handle_ack_if(
        &self,
        store: &Store,
        b: BucketId,
        offset: ReplOffset,
        now: Instant,
        live: impl FnOnce() -> bool,
    ) -> Result<(), String> {
        let mut guard = self.lane(b);
        if !live() {
            return Ok(());
        }
        let l = &mut *guard;
        if offset > l.next {
            return Err(format!(
                "lane {b}: ack for offset {offset} beyond the last sent ({})",
                l.next
            ));
        }
        let advanced = offset > l.acked;
        l.acked = l.acked.max(offset);
        let mut resyncs = 0;
        while l.queue.front().is_some_and(|q| q.offset <= l.acked) {
            let Some(q) = l.queue.pop_front() else { break };
            resyncs += usize::from(q.resync);
            let (key, removed) = match q.effect {
                Effect::Put(key, value) => {
                    store.put(key.clone(), value);
                    (Some(key), None)
                }
                Effect::Remove(key) => {
                    let old = store.remove(&key);
                    (Some(key), old)
                }
                Effect::Nothing => (None, None),
            };
            if let Some(stamp) = q.stamp {
                l.stamped.remove(&stamp);
                store.sessions().record(b, stamp, removed, now);
            }
            if let Some(key) = key {
                if l.overlay.get(&key).is_some_and(|(_, o)| *o == q.offset) {
                    l.overlay.remove(&key);
                }
            }
            if let Some((waiter, answer)) = q.reply {
                waiter.send(answer, now);
            }
        }
        if advanced {
            l.clock.progressed(now, resyncs, l.queue.is_empty());
        }
        if l.queue.is_empty() {
            self.drained.notify_waiters();
        }
        Ok(())
    }

    /// Sends an integrity check on lane `b`, busy or idle: the backup compares its digest after
    /// applying everything up to the lane's last offset with the bucket's digest at that offset
    /// (the store's, corrected by the writes still in flight).
    pub fn check(&self, store: &Store, b: BucketId) -> CheckOutcome {
        let l = self.lane(b);
        match &l.tx {
            Some(_) if l.resyncing => CheckOutcome::Skipped,
            Some(tx) => {
                let check = PeerMsg::Check {
                    bucket: b,
                    offset: l.next,
                    digest: Self::digest_at_next(&l, store, b),
                };
                // A closed stream fails the link; the check goes with it.
                let _ = tx.send(|buf| check.encode(buf));
                CheckOutcome::Sent
            }
            None => CheckOutcome::Skipped,
        }
    }

    /// Bucket `b`'s digest once every write sent on its lane is applied. Exact because the lane
    /// lock is held: acks apply to this bucket of the store only under it.
    fn digest_at_next(l: &Lane, store: &Store, b: BucketId) -> Digest {
        l.overlay
            .iter()
            .fold(store.digest(b), |d, (key, (after, _))| {
                let d = match store.get(key) {
                    Some(old) => d.minus(Digest::of_entry(key, &old)),
                    None => d,
                };
                match after {
                    Some(new) => d.plus(Digest::of_entry(key, new)),
                    None => d,
                }
            })
    }

    /// The backup's digest of lane `b` differed: resend that bucket now, as it stands after the
    /// lane's last offset (a busy lane is repaired without waiting for a pause in the writes).
    /// All in one call, on the caller's thread: [`Lanes::begin_resync`], [`ResyncPlan::build`],
    /// [`Lanes::finish_resync`] (the simulator and unit tests; a live primary runs the build on a
    /// blocking thread).
    pub fn handle_mismatch(&self, store: &Store, b: BucketId) {
        self.handle_mismatch_at(store, b, Instant::now())
    }

    /// [`Lanes::handle_mismatch`] at `now`: the ack clock starts then (a simulator passes virtual
    /// time).
    pub fn handle_mismatch_at(&self, store: &Store, b: BucketId, now: Instant) {
        let link = self.link.load(std::sync::atomic::Ordering::Acquire);
        if let Some(plan) = self.begin_resync(link, b) {
            let frames = plan.build(store, &self.limits);
            self.finish_resync_at(&plan, frames, now);
        }
    }

    /// Pauses lane `b` for a resync planned by link `link`: until [`Lanes::finish_resync`], writes
    /// to the bucket are refused and its offset and overlay stay fixed. `None` if the lane is
    /// closed, already resyncing, or `link` is superseded.
    pub fn begin_resync(&self, link: u64, b: BucketId) -> Option<ResyncPlan> {
        let mut l = self.lane(b);
        if !self.is_live(link) || l.tx.is_none() || l.resyncing {
            return None;
        }
        l.resyncing = true;
        Some(ResyncPlan {
            bucket: b,
            offset: l.next + 1,
            link,
            overlay: l
                .overlay
                .iter()
                .map(|(k, (after, _))| (k.clone(), after.clone()))
                .collect(),
        })
    }

    /// Queues a resync's `frames` (from [`ResyncPlan::build`]) on its lane and resumes the lane;
    /// dropped if the link that planned it is gone. Returns whether it was sent.
    pub fn finish_resync(&self, plan: &ResyncPlan, frames: Bytes) -> bool {
        self.finish_resync_at(plan, frames, Instant::now())
    }

    /// [`Lanes::finish_resync`] at `now` (the ack clock's start).
    pub fn finish_resync_at(&self, plan: &ResyncPlan, frames: Bytes, now: Instant) -> bool {
        let mut guard = self.lane(plan.bucket);
        let l = &mut *guard;
        if !self.is_live(plan.link) || !l.resyncing {
            return false;
        }
        l.resyncing = false;
        let Some(tx) = &l.tx else { return false };
        if l.next + 1 != plan.offset || !tx.send(|buf| buf.extend_from_slice(&frames)) {
            return false;
        }
        l.next = plan.offset;
        l.clock.queued(now, true);
        l.queue.push_back(Queued {
            offset: plan.offset,
            effect: Effect::Nothing,
            reply: None,
            resync: true,
            stamp: None,
        });
        true
    }

    /// The first lane, if any, that has had something outstanding and no ack progress for longer
    /// than `ack_timeout` (`resync_limit` while it waits for a resync) at `now`: the link is dead.
    pub fn stalled(
        &self,
        now: Instant,
        ack_timeout: Duration,
        resync_limit: Duration,
    ) -> Option<(BucketId, Duration)> {
        // A resync delays the acks of every lane that shares its data stream (the backup installs
        // the bucket before it reads on): while one is outstanding, every lane gets its limit.
        let clocks: Vec<AckClock> = BucketId::all().map(|b| self.lane(b).clock).collect();
        let resyncing = clocks.iter().any(AckClock::resyncing);
        BucketId::all().zip(clocks).find_map(|(b, clock)| {
            let limit = if resyncing { resync_limit } else { ack_timeout };
            clock
                .stalled(now, limit, resync_limit)
                .map(|waited| (b, waited))
        })
    }

    /// True when no lane has anything waiting.
    pub fn idle(&self) -> bool {
        BucketId::all().all(|b| self.lane(b).queue.is_empty())
    }

    /// Per-lane figures.
    pub fn status(&self) -> Vec<LaneStatus> {
        BucketId::all()
            .map(|b| {
                let l = self.lane(b);
                LaneStatus {
                    offset: l.next,
                    acked: l.acked,
                    pending: l.queue.len(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "lanes_tests.rs"]
mod tests;
