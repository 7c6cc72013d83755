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
//! if the link fails first it is indeterminate too.
//!
//! **The commit point is the backup** (chain replication's tail; issue 22, `lanes_commit.rs`): the
//! backup serves reads of what it applied, so a read here of a key with a write in flight waits
//! behind that write's ack (CRAQ's dirty check, [`Lanes::read`]) instead of answering the value
//! from before it. When the link is lost every queued write is answered indeterminate and kept as
//! *unresolved*; reads of those keys are refused until the next warm start learns from the
//! backup's [`PeerMsg::Applied`] which of them it applied: those are applied here too, the others
//! dropped ([`Lanes::resolve`]).
//!
//! A session-stamped write (`store::sessions`) is first looked up: among the lane's stamped writes
//! in flight (a retry of one of them waits behind it and gets the same answer), then in the key's
//! bucket's session table (a retry of an applied write gets its original answer, one whose record
//! may be gone a `SessionExpired` error). Only a fresh write is decided and sent; its stamp travels
//! in the `Put`/`Remove`, and the ack that applies it to the store also records its answer.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::reply::{ReplyTo, Waiter};
use crate::resync::{AckClock, ResyncPlan};
use crate::store::sessions::Lookup;
use crate::store::{BucketId, Digest, Store, BUCKETS};
use crate::write::{decide, Effect};
use quickv_proto::peer::{LaneMark, PeerMsg, ReplOffset};
use quickv_proto::status::LaneStatus;
use quickv_proto::{Limits, Op, Reply, SessionWrite, WriteStamp};

/// Where a lane's frames go: the data stream of the current link that carries the lane.
///
/// A trait the caller implements, not a queue the caller polls: a write is decided and its frame
/// encoded under its lane's lock by whichever client thread submits it, and going through a
/// polled queue would add a hop (and a wake-up of the link's task) per write. The server
/// implements it with the data stream's outbox (frames encoded straight into the writer's next
/// batch); the simulator, unit tests and benches with a `std::sync::mpsc` channel (below).
pub trait FrameSink: Send + Sync + std::fmt::Debug {
    /// Appends the frames `encode` writes; false if the stream's writer is gone. Called with the
    /// lane's lock held: it must not block nor call back into the lanes.
    fn push(&self, encode: &mut dyn FnMut(&mut BytesMut)) -> bool;
}

/// A channel of encoded frames, one message per push (the simulator, unit tests, benches).
impl FrameSink for std::sync::mpsc::Sender<Bytes> {
    fn push(&self, encode: &mut dyn FnMut(&mut BytesMut)) -> bool {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        self.send(buf.freeze()).is_ok()
    }
}

/// A lane's sink.
pub type LaneSink = Arc<dyn FrameSink>;

/// Told when something the caller may wait for happened (here: a lane's queue became empty; a
/// graceful stop waits for that). The server implements it with a `tokio::sync::Notify`.
pub trait Wake: Send + Sync + std::fmt::Debug {
    /// Wakes whoever waits; must not block.
    fn wake(&self);
}

/// Sends `encode`'s frames to `sink` (a helper for the `FnOnce` encoders of this module).
fn send(sink: &LaneSink, encode: impl FnOnce(&mut BytesMut)) -> bool {
    let mut encode = Some(encode);
    sink.push(&mut |buf| {
        if let Some(encode) = encode.take() {
            encode(buf)
        }
    })
}

/// One lane per bucket.
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<Mutex<Lane>>,
    /// Frame limits of the link: resync chunks must fit them.
    limits: Limits,
    /// Woken whenever a lane's queue becomes empty (graceful stops wait for it).
    drained: Option<Arc<dyn Wake>>,
    /// The generation of the link the lanes are open on, bumped by every [`Lanes::enable`]: a
    /// superseded link's ack reader presents its own and changes nothing ([`Lanes::handle_ack_on`]).
    link: std::sync::atomic::AtomicU64,
    /// Per lane, the keys a read must not answer from the store alone (writes in flight plus
    /// unresolved writes), mirrored after every change under the lane's lock: a read of a lane
    /// with none takes no lock (the dirty check costs one atomic load then).
    dirty: Vec<std::sync::atomic::AtomicUsize>,
    /// The identity the backup will report for writes of the link the lanes are open on: this
    /// primary's run id and the link's epoch ([`Lanes::enable_marked`]).
    mark: Mutex<LaneMark>,
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
    overlay: HashMap<Bytes, (Option<Bytes>, ReplOffset), LaneHash>,
    /// Stamped writes sent and not yet acknowledged: their offset and answer, so that a retry
    /// arriving meanwhile waits for the same ack and gets the same answer.
    stamped: HashMap<WriteStamp, (ReplOffset, Reply), LaneHash>,
    /// Since when the lane waits for ack progress (the ack timeout's measure; see [`AckClock`]).
    clock: AckClock,
    /// A resync of this lane's bucket is being built ([`Lanes::begin_resync`]): writes to the
    /// bucket are refused until it is queued, so the lane's offset and overlay stay as planned.
    resyncing: bool,
    /// Writes of a lost link whose ack never came: the backup may or may not have applied them
    /// (and served them). Kept until the next warm start resolves them ([`Lanes::resolve`]).
    unresolved: commit::Unresolved,
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
    /// A read waiting behind a write in flight ([`Lanes::read`]): if the link is lost first it
    /// is refused (`unavailable`), since a read that took no effect is never indeterminate.
    read: bool,
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
            drained: None,
            link: std::sync::atomic::AtomicU64::new(0),
            dirty: (0..BUCKETS)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            mark: Mutex::new(LaneMark::default()),
        }
    }

    /// These lanes, waking `drained` whenever a lane's queue becomes empty.
    pub fn waking(mut self, drained: Arc<dyn Wake>) -> Lanes {
        self.drained = Some(drained);
        self
    }

    fn drained(&self) {
        if let Some(w) = &self.drained {
            w.wake();
        }
    }

    fn lane(&self, b: BucketId) -> std::sync::MutexGuard<'_, Lane> {
        // A panic while holding a lane lock would be a bug; keep serving with the data as it is.
        self.lanes[b.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens every lane for writes on a new link, offsets from zero; returns the link's
    /// generation (see [`Lanes::handle_ack_on`]). The link has no identity the backup could
    /// report ([`Lanes::enable_marked`]): writes it loses are dropped at the next warm start
    /// unless the backup restarted.
    pub fn enable<S: FrameSink + 'static>(&self, senders: Vec<S>) -> u64 {
        self.enable_marked(senders, LaneMark::default())
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
        now: Instant,
    ) -> Result<bool, String> {
        if !self.is_live(link) {
            return Ok(false);
        }
        self.handle_ack_if(store, b, offset, now, || self.is_live(link))
            .map(|()| true)
    }

    fn open<S: FrameSink + 'static>(&self, senders: Vec<S>) {
        for (b, tx) in BucketId::all().zip(senders) {
            let mut l = self.lane(b);
            if !l.unresolved.is_empty() {
                // A driver resolves (or discards) a lost link's writes before it opens the lanes
                // again; one that did not keeps the older rule: dropped.
                tracing::warn!(lane = %b, writes = l.unresolved.len(), "dropping unresolved writes of a lost link");
            }
            *l = Lane {
                tx: Some(Arc::new(tx)),
                ..Lane::default()
            };
            self.mirror_dirty(b, &l);
        }
    }

    /// The link is gone: nothing queued will be acknowledged. Every waiting write is indeterminate
    /// (answered as of `now`) and kept as unresolved until the next warm start; every waiting read
    /// is refused.
    pub fn fail_all(&self, reason: &str, now: Instant) {
        let mark = *self.mark.lock().unwrap_or_else(|p| p.into_inner());
        for b in BucketId::all() {
            let mut guard = self.lane(b);
            let l = &mut *guard;
            l.tx = None;
            l.overlay.clear();
            l.stamped.clear();
            l.clock.reset();
            l.resyncing = false;
            for q in l.queue.drain(..) {
                let answer = match q.read {
                    true => Reply::Unavailable(format!(
                        "the key had a write in flight and the link to the backup was lost: {reason}"
                    )),
                    false => Reply::Indeterminate(format!(
                        "sent to the backup, but no ack came: {reason}"
                    )),
                };
                if let Some((waiter, _)) = q.reply {
                    waiter.send(answer, now);
                }
                l.unresolved.keep(mark, q.offset, q.effect, q.stamp);
            }
            self.mirror_dirty(b, l);
        }
        self.drained();
    }

    /// Decides a client write (which may carry a session stamp) and, if it changes anything,
    /// sends it down its lane: the one way a write enters the lanes. `Some(answer)` when it is
    /// answered now; `None` when it waits for an ack, to be answered at `reply_to()` (called only
    /// then, once) by whoever applies that ack. A retry of a write this pair already applied (or
    /// is applying) gets that write's answer and changes nothing. `now` serves the session lookup
    /// and the ack clock (one clock read per write, the caller's; a simulator passes virtual time).
    pub fn submit(
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

    /// [`Lanes::submit`]: `Ok(())` when queued, `Err(answer)` when answered now.
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
        if l.tx.is_none() {
            return Err(Reply::Unavailable(refusal()));
        }
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
                    read: false,
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
        let (effect, answer) = decide(op, current.as_ref());
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
                read: false,
            });
            return Ok(());
        };
        let after = match &effect {
            Effect::Put(_, v) => Some(v.clone()),
            _ => None,
        };
        // Dirty before the frame leaves: the backup may serve the write before this returns.
        let before = l.overlay.insert(key.clone(), (after, offset));
        self.mirror_dirty(bucket, l);
        if !l
            .tx
            .as_ref()
            .is_some_and(|tx| send(tx, |buf| frame.encode(buf)))
        {
            match before {
                Some(before) => l.overlay.insert(key, before),
                None => l.overlay.remove(&key),
            };
            self.mirror_dirty(bucket, l);
            return Err(Reply::Unavailable(
                "the link to the backup just closed".into(),
            ));
        }
        l.next = offset;
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
            read: false,
        });
        Ok(())
    }

    /// The backup applied everything up to `offset` on lane `b`: apply and answer in order, at
    /// `now` (session records, answers and the ack clock use it: one clock read per ack, which
    /// may settle many writes; a simulator passes virtual time).
    pub fn handle_ack(
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
                // One hash of the key: the overlay names this write unless a later one replaced it.
                if let Entry::Occupied(e) = l.overlay.entry(key) {
                    if e.get().1 == q.offset {
                        e.remove();
                    }
                }
            }
            if let Some((waiter, answer)) = q.reply {
                waiter.send(answer, now);
            }
        }
        self.mirror_dirty(b, l);
        if advanced {
            l.clock.progressed(now, resyncs, l.queue.is_empty());
        }
        if l.queue.is_empty() {
            self.drained();
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
                let _ = send(tx, |buf| check.encode(buf));
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
    pub fn handle_mismatch(&self, store: &Store, b: BucketId, now: Instant) {
        let link = self.link.load(std::sync::atomic::Ordering::Acquire);
        if let Some(plan) = self.begin_resync(link, b) {
            let frames = plan.build(store, &self.limits);
            self.finish_resync(&plan, frames, now);
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
    /// dropped if the link that planned it is gone. Returns whether it was sent. `now` starts the
    /// ack clock's wait for it.
    pub fn finish_resync(&self, plan: &ResyncPlan, frames: Bytes, now: Instant) -> bool {
        let mut guard = self.lane(plan.bucket);
        let l = &mut *guard;
        if !self.is_live(plan.link) || !l.resyncing {
            return false;
        }
        l.resyncing = false;
        let Some(tx) = &l.tx else { return false };
        if l.next + 1 != plan.offset || !send(tx, |buf| buf.extend_from_slice(&frames)) {
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
            read: false,
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
                LaneStatus::new(l.next, l.acked, l.queue.len() as u64)
            })
            .collect()
    }
}

#[path = "lanes_commit.rs"]
mod commit;
#[path = "lanes_hash.rs"]
mod hash;
pub use commit::{ReadNow, Resolved};
use hash::LaneHash;

#[cfg(test)]
#[path = "lanes_tests.rs"]
mod tests;
