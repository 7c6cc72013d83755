//! Session tables: the remembered answers of recent session-stamped writes, so that a retried
//! write gets its original answer instead of being applied twice.
//!
//! # The rule: a write's record lives in its key's bucket
//!
//! A client session spans buckets, but each of its writes addresses one key, and a retry resends
//! the same key with the same stamp. So the table is partitioned like the store: bucket `b` holds
//! the records of the writes to keys of `b`, keyed by session. A record is therefore created,
//! replicated, transferred and replaced exactly like the bucket's data: it is written when the
//! write is applied (on the primary when the backup's ack arrives, on the backup when it applies
//! the lane's `Put`/`Remove`, which carry the stamp), travels in the bucket's lane order, and a
//! bootstrap of bucket `b` carries `b`'s records with its entries. No cross-lane ordering is needed.
//!
//! Only writes that changed the store leave a record (insert, update → `Ok`; delete → the removed
//! value). A write that was refused (`Exists`, `NotFound`) changed nothing, so deciding its retry
//! afresh is as correct as replaying the refusal.
//!
//! # Bounds and eviction
//!
//! Per bucket and session at most [`SessionLimits::window`] answers are kept, the newest sequences;
//! evicting the oldest raises the session's *floor*, and a retry below the floor whose answer is
//! gone is refused with `SessionExpired`.
//!
//! Everything else is bounded in **bytes**. Every record is charged what it costs (fixed
//! bookkeeping per identity, session and answer, plus a kept value's length), and each bucket has
//! a budget ([`SessionLimits::max_bytes`] / 32). A delete's removed value is kept only up to
//! [`SessionLimits::keep_removed_max`] bytes; above that the record says "applied, value not
//! kept" and a retry of that delete is answered `Ok` instead of the value (docs/protocol.md). So
//! a delete costs the tables at most a small, fixed amount, whatever the value's size.
//!
//! # Per client identity
//!
//! Records belong to the client identity that wrote them ([`WriteStamp::owner`], a hash of the
//! certificate the server saw; the backup gets it with the replicated write). Each identity has
//! its own share of each bucket's budget ([`SessionLimits::max_bytes_per_identity`] / 32) and at
//! most [`SessionLimits::max_sessions`] sessions per bucket; past either, *its own* least recently
//! used sessions go. Past the bucket's budget, the identity holding the most bytes gives up its
//! least recently used sessions. Whole-session evictions raise that identity's *horizon* (the
//! latest last-use time evicted): a retry whose session is unknown and whose first attempt was
//! sent before `horizon + RETRY_MARGIN` might have been applied and forgotten, so it is refused
//! with `SessionExpired` rather than risk a second application. Another identity's horizon does
//! not move: a flood of session ids from one certificate cannot expire another's retries. The
//! client tells the age of its first attempt in every stamped write, so no clocks need agree.
//!
//! Sessions idle longer than [`SessionLimits::max_idle`] are swept by [`Sessions::sweep`], which
//! the server calls on a timer (and a write to a bucket also sweeps it now and then), so the
//! records of a bucket that gets no more writes still go. An identity left without sessions keeps
//! its horizon (a few bytes) until that too is older than `max_idle`; then it moves to the bucket's
//! horizon, which is judged for every identity.

mod table;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use self::table::BucketTable;
use crate::store::{BucketId, BUCKETS};
use quickv_proto::peer::{RecordedAnswer, SessionAnswer};
use quickv_proto::status::SessionUsage;
use quickv_proto::{ErrorCode, Reply, SessionWrite, WriteStamp};

/// Slack allowed for the trip of a retry from the client to the server when deciding whether its
/// first attempt could predate an eviction, in time. Generous: a too-large margin only turns a
/// rare retry into a clear `SessionExpired`, a too-small one could apply a write twice.
pub const RETRY_MARGIN: Duration = Duration::from_secs(5);

/// Bounds on the session tables; defaults in [`SessionLimits::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Answers kept per session and bucket (the newest sequences). A client with more writes of one
    /// session to one bucket in flight than this may see `SessionExpired` on a retry. Default 64.
    pub window: usize,
    /// Sessions kept per client identity and bucket. Default 4096.
    pub max_sessions: usize,
    /// A session that has not written to a bucket for this long is forgotten there. Default 10 min.
    pub max_idle: Duration,
    /// Bytes the tables may hold in all, split evenly over the 32 buckets. Default 64 MiB; a
    /// server with `max_memory` uses at most half of it ([`SessionLimits::within_memory`]).
    pub max_bytes: usize,
    /// Bytes one client identity's records may hold in all (split over the buckets likewise).
    /// Default 16 MiB, a quarter of `max_bytes`.
    pub max_bytes_per_identity: usize,
    /// A delete's removed value is kept for its retry only up to this many bytes; a larger one is
    /// remembered as "applied, value not kept". Default 1 KiB.
    pub keep_removed_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            window: 64,
            max_sessions: 4096,
            max_idle: Duration::from_secs(600),
            max_bytes: 64 << 20,
            max_bytes_per_identity: 16 << 20,
            keep_removed_max: 1024,
        }
    }
}

impl SessionLimits {
    /// These limits for a server refusing writes past `max_memory` bytes: the tables then hold at
    /// most half of it, so that deletes (which `max_memory` never refuses) cannot grow memory past
    /// it either.
    pub fn within_memory(self, max_memory: Option<u64>) -> SessionLimits {
        let Some(max) = max_memory else {
            return self;
        };
        let half = usize::try_from(max / 2).unwrap_or(usize::MAX);
        let max_bytes = self.max_bytes.min(half);
        SessionLimits {
            max_bytes,
            max_bytes_per_identity: self.max_bytes_per_identity.min(max_bytes),
            ..self
        }
    }

    /// One bucket's budget, in bytes.
    fn bucket_bytes(&self) -> usize {
        (self.max_bytes / BUCKETS).max(1)
    }

    /// One identity's share of one bucket, in bytes.
    fn identity_bucket_bytes(&self) -> usize {
        (self.max_bytes_per_identity.min(self.max_bytes) / BUCKETS).max(1)
    }

    /// The same limits with every count at least 1 (a zero would evict everything at once).
    fn sane(self) -> SessionLimits {
        SessionLimits {
            window: self.window.max(1),
            max_sessions: self.max_sessions.max(1),
            ..self
        }
    }
}

/// What to do with a stamped write, according to the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never applied here (as far as anything remembered can tell): decide and apply it.
    Fresh,
    /// Applied before: answer this, apply nothing.
    Answered(Reply),
    /// Its record may have been evicted: refuse it, apply nothing.
    Expired(Reply),
}

/// The 32 per-bucket session tables.
#[derive(Debug)]
pub struct Sessions {
    /// Indexed by [`BucketId::index`].
    buckets: Vec<Mutex<BucketTable>>,
    /// The bounds.
    limits: SessionLimits,
    /// Sessions evicted to stay inside a limit, since start.
    evicted: AtomicU64,
    /// Sessions dropped as idle, since start.
    swept: AtomicU64,
    /// Deletes whose removed value was too large to keep, since start.
    not_kept: AtomicU64,
    /// Bytes charged to all buckets (the sum of their `bytes`), kept apart so that the memory
    /// check on every write reads one atomic instead of 32 locks.
    bytes: AtomicU64,
}

impl Sessions {
    /// Empty tables with these bounds.
    ///
    /// A new table knows nothing of the writes made before it existed: its records start at its
    /// creation, so a retry first sent before then is refused as expired — unless a bootstrap
    /// installs the peer's table (and its start) first, which is how a restarted server taking its
    /// peer's data keeps the records. A pair that lost both servers therefore answers such
    /// retries `SessionExpired` instead of deciding them against an empty store.
    ///
    /// The tables start at `now` (the caller's clock: a server passes its start, a simulator
    /// virtual time).
    pub fn new(limits: SessionLimits, now: Instant) -> Sessions {
        Sessions::born(limits, Some(now))
    }

    /// Empty tables without a birth mark: a retry is never refused for predating them (for
    /// tests, benches and tools, which have no clock to give; a server uses [`Sessions::new`]).
    pub fn unborn(limits: SessionLimits) -> Sessions {
        Sessions::born(limits, None)
    }

    fn born(limits: SessionLimits, now: Option<Instant>) -> Sessions {
        Sessions {
            buckets: (0..BUCKETS)
                .map(|_| Mutex::new(BucketTable::new(now, now)))
                .collect(),
            limits: limits.sane(),
            evicted: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            not_kept: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn bucket(&self, b: BucketId) -> std::sync::MutexGuard<'_, BucketTable> {
        // Every section under this lock leaves the table consistent; a panic elsewhere must not
        // stop the server from deduplicating.
        self.buckets[b.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` on bucket `b`'s table and carries its change in bytes to the total.
    fn change<R>(&self, b: BucketId, change: impl FnOnce(&mut BucketTable) -> R) -> R {
        let mut t = self.bucket(b);
        let before = t.bytes as u64;
        let result = change(&mut t);
        let after = t.bytes as u64;
        if after >= before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
        result
    }

    /// Looks a stamped write to bucket `b` up at time `now`.
    pub fn lookup(&self, b: BucketId, write: &SessionWrite, now: Instant) -> Lookup {
        let t = self.bucket(b);
        let stamp = write.stamp;
        let entry = t
            .owners
            .get(&stamp.owner)
            .and_then(|o| o.sessions.get(&stamp.session));
        if let Some(answer) = entry.and_then(|e| e.answers.get(stamp.seq)) {
            return Lookup::Answered(reply_of(answer));
        }
        if let Some(e) = entry.filter(|e| stamp.seq < e.floor) {
            return Lookup::Expired(expired(format!(
                "write {} of session {:016x} is older than the {} answers this server keeps per \
                 session and bucket (oldest kept: {}); its fate is unknown and it was not applied \
                 again",
                stamp.seq, stamp.session, self.limits.window, e.floor
            )));
        }
        if write.age_ms > 0 {
            let age = Duration::from_millis(u64::from(write.age_ms));
            let predates = |mark: Option<Instant>, margin: Duration| match mark {
                None => false,
                Some(m) => now.checked_sub(age + margin).is_none_or(|sent| sent <= m),
            };
            let predates = predates(t.horizon_of(stamp.owner), RETRY_MARGIN)
                || predates(t.born, Duration::ZERO);
            if predates {
                return Lookup::Expired(expired(format!(
                    "write {} of session {:016x} was first sent {} ms ago, before this server \
                     evicted records of this client (limits: {} sessions per client and bucket, \
                     {} bytes per client, {} s idle); its fate is unknown and it was not applied \
                     again",
                    stamp.seq,
                    stamp.session,
                    write.age_ms,
                    self.limits.max_sessions,
                    self.limits.max_bytes_per_identity,
                    self.limits.max_idle.as_secs()
                )));
            }
        }
        Lookup::Fresh
    }

    /// Remembers that write `stamp` to bucket `b` was applied with this answer (`None` = `Ok`,
    /// `Some(v)` = a delete that removed `v`), at time `now`; evicts what the bounds demand.
    pub fn record(&self, b: BucketId, stamp: WriteStamp, removed: Option<Bytes>, now: Instant) {
        let limits = self.limits;
        let answer = self.answer_of(removed);
        let (swept, evicted) = self.change(b, |t| {
            t.insert(stamp, 0, answer, now, limits.window);
            let due = t
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= limits.max_idle / 4);
            let swept = match due {
                true => t.sweep(now, limits.max_idle),
                false => 0,
            };
            (swept, t.enforce(stamp.owner, &limits))
        });
        self.swept.fetch_add(swept as u64, Ordering::Relaxed);
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// Drops the sessions idle for longer than [`SessionLimits::max_idle`] at `now`, in every
    /// bucket, written to or not. The server calls this on a timer ([`Sessions::sweep_period`]).
    /// Returns the sessions dropped.
    pub fn sweep(&self, now: Instant) -> usize {
        let n: usize = BucketId::all()
            .map(|b| self.change(b, |t| t.sweep(now, self.limits.max_idle)))
            .sum();
        self.swept.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// How often the timer should call [`Sessions::sweep`]: a quarter of the idle limit, between
    /// 100 ms and a minute, so a record outlives its idle limit by at most that.
    pub fn sweep_period(&self) -> Duration {
        (self.limits.max_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Bucket `b`'s table as a bootstrap carries it: the ages of its start and of its latest
    /// eviction (the latest of any identity's: the receiver judges every identity against it,
    /// which can only refuse more), and every remembered answer.
    pub fn image(&self, b: BucketId, now: Instant) -> (TableMarks, Vec<SessionAnswer>) {
        let t = self.bucket(b);
        let ms = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let mut answers = Vec::with_capacity(t.records);
        let mut evicted = t.horizon;
        for (&owner, o) in &t.owners {
            evicted = evicted.max(o.horizon);
            for (&session, e) in &o.sessions {
                answers.extend(e.answers.list.iter().map(|(seq, answer)| SessionAnswer {
                    stamp: WriteStamp {
                        owner,
                        session,
                        seq: *seq,
                    },
                    floor: e.floor,
                    idle_ms: ms(e.last_used),
                    answer: answer.clone(),
                }));
            }
        }
        let marks = TableMarks {
            born_ms_ago: t.born.map(ms),
            evicted_ms_ago: evicted.map(ms),
        };
        (marks, answers)
    }

    /// Replaces bucket `b`'s table with one received in a bootstrap (see [`Sessions::image`]),
    /// within this server's limits.
    pub fn install(
        &self,
        b: BucketId,
        marks: TableMarks,
        answers: Vec<SessionAnswer>,
        now: Instant,
    ) {
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms));
        let limits = self.limits;
        let evicted = self.change(b, |t| {
            // A mark older than this process's clock can express is "long ago": anything is later.
            *t = BucketTable::new(
                marks.born_ms_ago.map(|ms| ago(ms).unwrap_or(now)),
                Some(now),
            );
            t.horizon = marks.evicted_ms_ago.map(|ms| ago(ms).unwrap_or(now));
            let mut owners = Vec::new();
            for a in answers {
                let last_used = ago(a.idle_ms).unwrap_or(now);
                let answer = match a.answer {
                    RecordedAnswer::Removed(v) => self.answer_of(Some(v)),
                    other => other,
                };
                owners.push(a.stamp.owner);
                t.insert(a.stamp, a.floor, answer, last_used, limits.window);
            }
            owners.sort_unstable();
            owners.dedup();
            owners
                .into_iter()
                .map(|o| t.enforce(o, &limits))
                .sum::<usize>()
        });
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// Forgets every record (the store was emptied with them); as for a new table, retries of
    /// writes sent before now are refused until a bootstrap installs a table.
    pub fn clear(&self, now: Instant) {
        for b in BucketId::all() {
            self.change(b, |t| *t = BucketTable::new(Some(now), Some(now)));
        }
    }

    /// Sessions with records in any bucket, counted per bucket (a session writing to 3 buckets
    /// counts 3), for `status`.
    pub fn len(&self) -> usize {
        BucketId::all().map(|b| self.bucket(b).sessions).sum()
    }

    /// True when no bucket holds a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged to the tables (what `max_memory` counts besides the store).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records, sessions, identities and bytes, and the eviction counters.
    pub fn usage(&self) -> SessionUsage {
        let mut u = SessionUsage::default();
        u.budget_bytes = (self.limits.bucket_bytes() * BUCKETS) as u64;
        u.evicted = self.evicted.load(Ordering::Relaxed);
        u.swept = self.swept.load(Ordering::Relaxed);
        u.values_not_kept = self.not_kept.load(Ordering::Relaxed);
        for b in BucketId::all() {
            let t = self.bucket(b);
            u.records += t.records as u64;
            u.sessions += t.sessions as u64;
            u.identities += t.owners.len() as u64;
            u.bytes += t.bytes as u64;
        }
        u
    }

    /// The answer a delete that removed `removed` leaves in the table (`None`: not a delete): the
    /// value itself if small (a copy, so it pins no larger buffer), else "not kept".
    fn answer_of(&self, removed: Option<Bytes>) -> RecordedAnswer {
        match removed {
            None => RecordedAnswer::Ok,
            Some(v) if v.len() <= self.limits.keep_removed_max => {
                RecordedAnswer::Removed(Bytes::copy_from_slice(&v))
            }
            Some(_) => {
                self.not_kept.fetch_add(1, Ordering::Relaxed);
                RecordedAnswer::RemovedNotKept
            }
        }
    }
}

/// The reply a remembered answer gives a retry. A delete whose value was not kept is answered
/// `Ok`: applied, value not kept (docs/protocol.md, "Sessions").
fn reply_of(answer: &RecordedAnswer) -> Reply {
    match answer {
        RecordedAnswer::Ok | RecordedAnswer::RemovedNotKept => Reply::Ok,
        RecordedAnswer::Removed(v) => Reply::Value(v.clone()),
    }
}

/// When a bucket's table started and last evicted, as ages in milliseconds (what a bootstrap
/// carries, since the two servers' clocks are not comparable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMarks {
    /// Milliseconds since the table's records start (`None`: since ever).
    pub born_ms_ago: Option<u64>,
    /// Milliseconds since its latest eviction (`None`: never evicted).
    pub evicted_ms_ago: Option<u64>,
}

/// The refusal of a write whose record may be gone.
fn expired(message: String) -> Reply {
    Reply::Error {
        code: ErrorCode::SessionExpired,
        message,
    }
}
