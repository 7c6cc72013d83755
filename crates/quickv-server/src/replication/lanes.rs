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

use crate::replication::link::chunks;
use crate::replication::reply::{via_oneshot, ReplyTo, Waiter};
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
    /// When it was sent, for the ack timeout.
    sent: Instant,
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
        self.handle_ack_if(store, b, offset, || self.is_live(link))
            .map(|()| true)
    }

    /// [`Lanes::handle_mismatch`] from the reader of link `link`; `None` once superseded.
    pub fn handle_mismatch_on(&self, link: u64, store: &Store, b: BucketId) -> Option<bool> {
        let mut guard = self.lane(b);
        if !self.is_live(link) {
            return None;
        }
        let repaired = store.recount_bucket(b);
        Self::send_resync(&mut guard, store, b, &self.limits);
        Some(repaired)
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
        for b in BucketId::all() {
            let mut l = self.lane(b);
            l.tx = None;
            l.overlay.clear();
            l.stamped.clear();
            let now = Instant::now();
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
        self.decide(store, op, session, refusal, reply_to).err()
    }

    /// [`Lanes::submit_to`]: `Ok(())` when queued, `Err(answer)` when answered now.
    fn decide(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
        reply_to: impl FnOnce() -> ReplyTo,
    ) -> Result<(), Reply> {
        let Some(key) = op.key().cloned() else {
            return Err(Reply::Unavailable("not a write".into()));
        };
        let bucket = BucketId::of(&key);
        // One clock read per write: the session lookup and the ack timeout's start.
        let now = Instant::now();
        let mut guard = self.lane(bucket);
        let l = &mut *guard;
        let Some(tx) = l.tx.as_ref() else {
            return Err(Reply::Unavailable(refusal()));
        };
        if let Some(write) = &session {
            if let Some((offset, answer)) = l.stamped.get(&write.stamp) {
                // A retry of a write still in flight: answer it with that write, after its ack.
                let (offset, answer) = (*offset, answer.clone());
                l.queue.push_back(Queued {
                    offset: offset.max(l.queue.back().map_or(0, |q| q.offset)),
                    effect: Effect::Nothing,
                    reply: Some((Waiter::new(reply_to()), answer)),
                    sent: now,
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
            l.queue.push_back(Queued {
                offset,
                effect,
                reply: Some((Waiter::new(reply_to()), answer)),
                sent: now,
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
        l.queue.push_back(Queued {
            offset,
            effect,
            reply: Some((Waiter::new(reply_to()), answer)),
            sent: now,
            stamp,
        });
        Ok(())
    }

    /// The backup applied everything up to `offset` on lane `b`: apply and answer in order.
    pub fn handle_ack(&self, store: &Store, b: BucketId, offset: ReplOffset) -> Result<(), String> {
        self.handle_ack_if(store, b, offset, || true)
    }

    /// [`Lanes::handle_ack`], applied only if `live()` holds under the lane's lock.
    fn handle_ack_if(
        &self,
        store: &Store,
        b: BucketId,
        offset: ReplOffset,
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
        l.acked = l.acked.max(offset);
        // One clock read per ack (which may settle many writes): session records and answers.
        let now = Instant::now();
        while l.queue.front().is_some_and(|q| q.offset <= l.acked) {
            let Some(q) = l.queue.pop_front() else { break };
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
    /// First recounts the bucket's running totals from its contents (exact: acks apply to this
    /// bucket only under the lane lock); returns whether they were wrong, and so repaired.
    pub fn handle_mismatch(&self, store: &Store, b: BucketId) -> bool {
        let mut guard = self.lane(b);
        let repaired = store.recount_bucket(b);
        Self::send_resync(&mut guard, store, b, &self.limits);
        repaired
    }

    /// Sends the whole bucket down the lane as it is after the lane's last offset: the store's
    /// entries with the writes still in flight laid over them. Exact because the lane lock is held.
    fn send_resync(l: &mut Lane, store: &Store, b: BucketId, limits: &Limits) {
        let Some(tx) = &l.tx else { return };
        let mut entries: HashMap<Bytes, Bytes> = store.bucket_snapshot(b).into_iter().collect();
        for (key, (after, _)) in &l.overlay {
            match after {
                Some(v) => entries.insert(key.clone(), v.clone()),
                None => entries.remove(key),
            };
        }
        let entries: Vec<_> = entries.into_iter().collect();
        let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
        let offset = l.next + 1;
        let chunks = chunks(entries, limits);
        let sent = tx.send(|buf| {
            PeerMsg::ReplaceBegin(b).encode(buf);
            for chunk in &chunks {
                chunk.encode(buf);
            }
            PeerMsg::ReplaceEnd {
                bucket: b,
                offset,
                digest,
            }
            .encode(buf);
        });
        if sent {
            l.next = offset;
            l.queue.push_back(Queued {
                offset,
                effect: Effect::Nothing,
                reply: None,
                sent: Instant::now(),
                stamp: None,
            });
        }
    }

    /// The oldest unacknowledged entry's age, over all lanes (for the ack timeout).
    pub fn oldest_unacked(&self) -> Option<Duration> {
        BucketId::all()
            .filter_map(|b| self.lane(b).queue.front().map(|q| q.sent.elapsed()))
            .max()
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
mod tests {
    use super::*;

    fn reply_now(h: Submitted) -> Reply {
        match h {
            Err(r) => r,
            Ok(_) => panic!("expected an immediate answer, got a write waiting for its ack"),
        }
    }

    fn lanes_with_links() -> (Lanes, Vec<mpsc::UnboundedReceiver<Bytes>>) {
        let lanes = Lanes::default();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::unbounded_channel()).unzip();
        lanes.enable(txs);
        (lanes, rxs)
    }

    fn insert(k: &'static str, v: &'static str) -> Op {
        Op::Insert {
            key: Bytes::from(k),
            value: Bytes::from(v),
        }
    }

    #[tokio::test]
    async fn a_superseded_links_ack_reader_cannot_apply_the_next_links_writes() {
        // F6: an old link's reader with an `Ack { offset: 1 }` still buffered must not settle
        // offset 1 of the lanes the next link has just opened.
        let store = Store::new();
        let lanes = Lanes::default();
        let (txs, _old): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::unbounded_channel()).unzip();
        let old = lanes.enable(txs);
        lanes.fail_all("link lost");
        let (txs, _new): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::unbounded_channel()).unzip();
        let new = lanes.enable(txs);
        let b = BucketId::of(b"k");
        let Ok(pending) = lanes.submit(&store, insert("k", "v"), String::new) else {
            panic!("queued");
        };
        assert_eq!(lanes.handle_ack_on(old, &store, b, 1), Ok(false));
        assert_eq!(lanes.handle_mismatch_on(old, &store, b), None);
        assert_eq!(
            store.get(b"k"),
            None,
            "not applied by the superseded reader"
        );
        assert_eq!(lanes.handle_ack_on(new, &store, b, 1), Ok(true));
        assert_eq!(pending.await.expect("answered"), Reply::Ok);
        assert_eq!(store.get(b"k"), Some(Bytes::from("v")));
    }

    #[tokio::test]
    async fn writes_become_visible_only_when_acknowledged() {
        let store = Store::new();
        let (lanes, mut rxs) = lanes_with_links();
        let b = BucketId::of(b"k");
        let Ok(first) = lanes.submit(&store, insert("k", "1"), String::new) else {
            panic!("insert must wait for the ack");
        };
        // A second insert of the same key depends on the first: it waits too.
        let Ok(second) = lanes.submit(&store, insert("k", "2"), String::new) else {
            panic!("dependent refusal must wait");
        };
        assert_eq!(store.get(b"k"), None, "not visible before the ack");
        let frame = rxs[b.index()].try_recv().expect("sent to the lane");
        let mut buf = BytesMut::from(&frame[..]);
        let msg = PeerMsg::decode(&mut buf, &Default::default())
            .expect("valid")
            .expect("whole");
        assert!(matches!(msg, PeerMsg::Put { offset: 1, .. }), "{msg:?}");
        lanes.handle_ack(&store, b, 1).expect("ack");
        assert_eq!(first.await.expect("answered"), Reply::Ok);
        assert_eq!(second.await.expect("answered"), Reply::Exists);
        assert_eq!(store.get(b"k"), Some(Bytes::from("1")));
        // With nothing in flight, a refusal is immediate.
        assert_eq!(
            reply_now(lanes.submit(&store, insert("k", "3"), String::new)),
            Reply::Exists
        );
    }

    #[tokio::test]
    async fn a_retried_stamped_write_is_sent_once_and_answered_like_the_original() {
        let store = Store::new();
        let (lanes, mut rxs) = lanes_with_links();
        let b = BucketId::of(b"k");
        let stamped = |seq, age_ms| {
            Some(SessionWrite {
                stamp: WriteStamp::new(7, seq),
                age_ms,
            })
        };
        let submit = |op, session| lanes.submit_stamped(&store, op, session, String::new);
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
        lanes.handle_ack(&store, b, 1).expect("ack");
        assert_eq!(first.await.expect("answered"), Reply::Ok);
        assert_eq!(retry.await.expect("answered"), Reply::Ok, "not Exists");
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
        lanes.handle_ack(&store, b, 2).expect("ack");
        assert_eq!(del.await.expect("answered"), Reply::Value(Bytes::from("1")));
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

    impl crate::replication::reply::StreamAnswers for Sink {
        fn answer(&self, ticket: crate::replication::reply::Ticket, reply: Reply, _now: Instant) {
            self.0
                .lock()
                .expect("not poisoned")
                .push((ticket.id, reply));
        }
    }

    fn to_stream(sink: &std::sync::Arc<Sink>, id: u64) -> impl FnOnce() -> ReplyTo {
        let sink = sink.clone();
        move || {
            ReplyTo::Stream(
                sink,
                crate::replication::reply::Ticket {
                    id,
                    kind: quickv_proto::OpKind::Insert,
                    started: Instant::now(),
                },
            )
        }
    }

    #[tokio::test]
    async fn an_ack_answers_a_stream_sink_and_a_oneshot_alike_each_once() {
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
        let queued = lanes.submit_to(
            &store,
            insert("k", "1"),
            stamp(1),
            String::new,
            to_stream(&sink, 10),
        );
        assert_eq!(queued, None, "the write waits for its ack");
        let Ok(retry) = lanes.submit_stamped(&store, insert("k", "1"), stamp(1), String::new)
        else {
            panic!("the retry waits behind the original");
        };
        let dependent = lanes.submit_to(
            &store,
            insert("k", "2"),
            None,
            String::new,
            to_stream(&sink, 11),
        );
        assert_eq!(
            dependent, None,
            "the refusal waits for the write it rests on"
        );
        assert!(
            sink.0.lock().expect("not poisoned").is_empty(),
            "nothing answered before the ack"
        );
        lanes.handle_ack(&store, b, 1).expect("ack");
        assert_eq!(retry.await.expect("answered"), Reply::Ok);
        assert_eq!(
            *sink.0.lock().expect("not poisoned"),
            vec![(10, Reply::Ok), (11, Reply::Exists)]
        );
        // Answered once: a later ack of the same offset answers nothing more.
        lanes.handle_ack(&store, b, 1).expect("ack again");
        assert_eq!(sink.0.lock().expect("not poisoned").len(), 2);
        // An answer decided now is returned, and the sink is not touched.
        let now = lanes.submit_to(
            &store,
            insert("k", "3"),
            None,
            String::new,
            to_stream(&sink, 12),
        );
        assert_eq!(now, Some(Reply::Exists));
        assert_eq!(sink.0.lock().expect("not poisoned").len(), 2);
        // A lost link answers a stream's waiting write indeterminate, once.
        let lost = lanes.submit_to(
            &store,
            insert("x", "1"),
            None,
            String::new,
            to_stream(&sink, 13),
        );
        assert_eq!(lost, None);
        lanes.fail_all("test");
        let got = sink.0.lock().expect("not poisoned").clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[2], (13, Reply::Indeterminate(_))), "{got:?}");
        assert_eq!(store.get(b"x"), None);
    }

    #[tokio::test]
    async fn a_lost_link_makes_waiting_writes_indeterminate_and_applies_nothing() {
        let store = Store::new();
        let (lanes, _rxs) = lanes_with_links();
        let Ok(w) = lanes.submit(&store, insert("a", "1"), String::new) else {
            panic!("must wait");
        };
        lanes.fail_all("test");
        assert!(matches!(
            w.await.expect("answered"),
            Reply::Indeterminate(_)
        ));
        assert_eq!(store.get(b"a"), None);
        let refused = reply_now(lanes.submit(&store, insert("a", "1"), || "not in sync".into()));
        assert_eq!(refused, Reply::Unavailable("not in sync".into()));
        assert!(lanes.handle_ack(&store, BucketId::of(b"a"), 5).is_err());
    }

    #[test]
    fn a_busy_lane_is_checked_and_repaired_without_waiting_for_a_pause() {
        // Finding 7: under steady load a lane's queue is never empty; it must still be checked.
        use crate::replication::backup::StreamApplier;
        let store = Store::new();
        let (lanes, mut rxs) = lanes_with_links();
        let backup = crate::replication::Replication::new(
            std::sync::Arc::new(Store::new()),
            crate::config::ServerConfig::new(
                crate::config::Role::Backup,
                "127.0.0.1:1".parse().expect("addr"),
            ),
            7,
        );
        let b = BucketId::of(b"k");
        let mut applier = StreamApplier::default();
        let feed = |rx: &mut mpsc::UnboundedReceiver<Bytes>, applier: &mut StreamApplier| {
            let mut buf = BytesMut::new();
            while let Ok(frame) = rx.try_recv() {
                buf.extend_from_slice(&frame);
            }
            let mut reports = Vec::new();
            while let Some(msg) = PeerMsg::decode(&mut buf, &Default::default()).expect("valid") {
                reports.extend(applier.handle(msg, &backup).expect("apply"));
            }
            reports
        };
        let _w1 = lanes.submit(&store, insert("k", "1"), String::new);
        assert!(feed(&mut rxs[b.index()], &mut applier).is_empty());
        lanes.handle_ack(&store, b, 1).expect("ack");
        // A second write in flight: the lane is busy when the check is due.
        let _w2 = lanes.submit(
            &store,
            Op::Update {
                key: Bytes::from("k"),
                value: Bytes::from("2"),
            },
            String::new,
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
        backup.store.put(Bytes::from("k"), Bytes::from("rot"));
        assert!(matches!(lanes.check(&store, b), CheckOutcome::Sent));
        let reports = feed(&mut rxs[b.index()], &mut applier);
        assert!(
            matches!(reports.as_slice(), [PeerMsg::Mismatch { .. }]),
            "{reports:?}"
        );
        lanes.handle_mismatch(&store, b);
        assert!(feed(&mut rxs[b.index()], &mut applier).is_empty());
        assert_eq!(
            backup.store.get(b"k"),
            Some(Bytes::from("2")),
            "repaired to the state after the write in flight"
        );
        lanes
            .handle_ack(&store, b, applier.applied[b.index()])
            .expect("ack everything");
        assert_eq!(store.digest(b), backup.store.digest(b));
    }
}
