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
//! gone is refused with `SessionExpired`. Per bucket at most [`SessionLimits::max_sessions`]
//! sessions are kept; over that, the least recently used eighth is evicted at once (amortised), and
//! sessions idle longer than [`SessionLimits::max_idle`] are swept. Whole-session evictions raise the
//! bucket's *horizon* (the latest last-use time evicted): a retry whose session is unknown and whose
//! first attempt was sent before `horizon + RETRY_MARGIN` might have been applied and forgotten, so it
//! is refused with `SessionExpired` rather than risk a second application. The client tells the age
//! of its first attempt in every stamped write, so no clocks need agree.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{BucketId, BUCKETS};
use quickv_proto::peer::SessionAnswer;
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
    /// Sessions kept per bucket (so `32 ×` this in all). Default 4096.
    pub max_sessions: usize,
    /// A session that has not written to a bucket for this long is forgotten there. Default 10 min.
    pub max_idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            window: 64,
            max_sessions: 4096,
            max_idle: Duration::from_secs(600),
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
    buckets: Vec<Mutex<BucketSessions>>,
    /// The bounds.
    limits: SessionLimits,
}

/// One bucket's table.
#[derive(Debug)]
struct BucketSessions {
    /// Per session: its remembered answers.
    sessions: HashMap<u64, SessionEntry>,
    /// Latest last-use time of a session evicted from this bucket.
    horizon: Option<Instant>,
    /// When this bucket's records start: the table's creation, or the start of the table a
    /// bootstrap installed. A retry first sent before then may have been applied to a store that
    /// no longer exists (both servers lost): it is refused as expired. No margin is needed here,
    /// unlike `horizon`: misjudging it cannot apply a write twice to surviving data.
    born: Option<Instant>,
    /// When idle sessions were last swept.
    swept: Instant,
}

/// One session's records in one bucket.
#[derive(Debug)]
struct SessionEntry {
    /// Sequences below this were evicted from `answers`.
    floor: u64,
    /// Sequence → answer (`None` = `Ok`, `Some(v)` = the value a delete removed).
    answers: Answers,
    /// Last write of this session to this bucket.
    last_used: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(SessionLimits::default())
    }
}

impl Sessions {
    /// Empty tables with these bounds.
    ///
    /// A new table knows nothing of the writes made before it existed: its records start at its
    /// creation, so a retry first sent before then is refused as expired — unless a bootstrap
    /// installs the peer's table (and its start) first, which is how a restarted server taking its
    /// peer's data keeps the records. A pair that lost both servers therefore answers such
    /// retries `SessionExpired` instead of deciding them against an empty store.
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions::new_at(limits, Instant::now())
    }

    /// [`Sessions::new`] born at `now` (a simulator passes virtual time).
    pub fn new_at(limits: SessionLimits, now: Instant) -> Sessions {
        Sessions {
            buckets: (0..BUCKETS)
                .map(|_| {
                    Mutex::new(BucketSessions {
                        sessions: HashMap::new(),
                        horizon: None,
                        born: Some(now),
                        swept: now,
                    })
                })
                .collect(),
            limits,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn bucket(&self, b: BucketId) -> std::sync::MutexGuard<'_, BucketSessions> {
        // Every section under this lock leaves the table consistent; a panic elsewhere must not
        // stop the server from deduplicating.
        self.buckets[b.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks a stamped write to bucket `b` up at time `now`.
    pub fn lookup(&self, b: BucketId, write: &SessionWrite, now: Instant) -> Lookup {
        let t = self.bucket(b);
        let stamp = write.stamp;
        let entry = t.sessions.get(&stamp.session);
        if let Some(answer) = entry.and_then(|e| e.answers.get(stamp.seq)) {
            return Lookup::Answered(match answer {
                None => Reply::Ok,
                Some(v) => Reply::Value(v.clone()),
            });
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
            let predates = predates(t.horizon, RETRY_MARGIN) || predates(t.born, Duration::ZERO);
            if predates {
                return Lookup::Expired(expired(format!(
                    "write {} of session {:016x} was first sent {} ms ago, before this server \
                     evicted session records (limits: {} sessions per bucket, {} s idle); its fate \
                     is unknown and it was not applied again",
                    stamp.seq,
                    stamp.session,
                    write.age_ms,
                    self.limits.max_sessions,
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
        let mut t = self.bucket(b);
        let entry = t
            .sessions
            .entry(stamp.session)
            .or_insert_with(|| SessionEntry {
                floor: 0,
                answers: Answers::default(),
                last_used: now,
            });
        entry.answers.insert(stamp.seq, removed);
        entry.last_used = entry.last_used.max(now);
        while entry.answers.len() > limits.window.max(1) {
            let Some((oldest, _)) = entry.answers.pop_first() else {
                break;
            };
            entry.floor = entry.floor.max(oldest + 1);
        }
        if now.saturating_duration_since(t.swept) >= limits.max_idle / 4 {
            t.swept = now;
            t.evict_where(|e| now.saturating_duration_since(e.last_used) > limits.max_idle);
        }
        if t.sessions.len() > limits.max_sessions {
            // Evict the least recently used eighth at once, so a full table costs O(log n) per
            // write amortised instead of a scan per write.
            let mut ages: Vec<Instant> = t.sessions.values().map(|e| e.last_used).collect();
            let excess = t.sessions.len() - limits.max_sessions;
            let n = excess.max(limits.max_sessions / 8).min(ages.len());
            let (_, cut, _) = ages.select_nth_unstable(n.saturating_sub(1));
            let cut = *cut;
            t.evict_where(|e| e.last_used <= cut);
        }
    }

    /// Bucket `b`'s table as a bootstrap carries it: the ages of its start and of its latest
    /// eviction, and every remembered answer.
    pub fn image(&self, b: BucketId, now: Instant) -> (TableMarks, Vec<SessionAnswer>) {
        let t = self.bucket(b);
        let ms = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let answers = t
            .sessions
            .iter()
            .flat_map(|(&session, e)| {
                e.answers.0.iter().map(move |(seq, removed)| SessionAnswer {
                    stamp: WriteStamp { session, seq: *seq },
                    floor: e.floor,
                    idle_ms: ms(e.last_used),
                    removed: removed.clone(),
                })
            })
            .collect();
        let marks = TableMarks {
            born_ms_ago: t.born.map(ms),
            evicted_ms_ago: t.horizon.map(ms),
        };
        (marks, answers)
    }

    /// Replaces bucket `b`'s table with one received in a bootstrap (see [`Sessions::image`]).
    pub fn install(
        &self,
        b: BucketId,
        marks: TableMarks,
        answers: Vec<SessionAnswer>,
        now: Instant,
    ) {
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms));
        let mut t = self.bucket(b);
        t.sessions.clear();
        // A horizon older than this process's clock can express is "long ago": anything is later.
        t.horizon = marks.evicted_ms_ago.map(|ms| ago(ms).unwrap_or(now));
        t.born = marks.born_ms_ago.map(|ms| ago(ms).unwrap_or(now));
        for a in answers {
            let last_used = ago(a.idle_ms).unwrap_or(now);
            let e = t
                .sessions
                .entry(a.stamp.session)
                .or_insert_with(|| SessionEntry {
                    floor: a.floor,
                    answers: Answers::default(),
                    last_used,
                });
            e.floor = e.floor.max(a.floor);
            e.last_used = e.last_used.max(last_used);
            e.answers.insert(a.stamp.seq, a.removed);
        }
    }

    /// Forgets every record (the store was emptied with them); as for a new table, retries of
    /// writes sent before now are refused until a bootstrap installs a table.
    pub fn clear(&self) {
        self.clear_at(Instant::now())
    }

    /// [`Sessions::clear`] at `now` (a simulator passes virtual time).
    pub fn clear_at(&self, now: Instant) {
        for b in BucketId::all() {
            let mut t = self.bucket(b);
            t.sessions.clear();
            t.horizon = None;
            t.born = Some(now);
        }
    }

    /// Sessions with records in any bucket, counted per bucket (a session writing to 3 buckets
    /// counts 3), for `status`.
    pub fn len(&self) -> usize {
        BucketId::all().map(|b| self.bucket(b).sessions.len()).sum()
    }

    /// True when no bucket holds a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's answers in one bucket, sorted by sequence. A deque, not a tree: a session's writes
/// arrive in nearly increasing order, so recording is a push at the back, evicting a pop at the
/// front, and a fresh write (newer than every answer) is recognised without a search.
#[derive(Debug, Default)]
struct Answers(VecDeque<(u64, Option<Bytes>)>);

impl Answers {
    fn get(&self, seq: u64) -> Option<&Option<Bytes>> {
        match (self.0.front(), self.0.back()) {
            (Some((lo, _)), Some((hi, _))) if (*lo..=*hi).contains(&seq) => {}
            _ => return None,
        }
        let i = self.0.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.0.get(i).map(|(_, answer)| answer)
    }

    fn insert(&mut self, seq: u64, answer: Option<Bytes>) {
        if self.0.back().is_none_or(|(hi, _)| *hi < seq) {
            return self.0.push_back((seq, answer));
        }
        match self.0.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.0[i].1 = answer,
            Err(i) => self.0.insert(i, (seq, answer)),
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn pop_first(&mut self) -> Option<(u64, Option<Bytes>)> {
        self.0.pop_front()
    }
}

impl BucketSessions {
    /// Drops the sessions matching `evict`, raising the horizon to the latest last use dropped.
    fn evict_where(&mut self, evict: impl Fn(&SessionEntry) -> bool) {
        let mut horizon = self.horizon;
        self.sessions.retain(|_, e| {
            let drop = evict(e);
            if drop {
                horizon = Some(horizon.map_or(e.last_used, |h| h.max(e.last_used)));
            }
            !drop
        });
        self.horizon = horizon;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(session: u64, seq: u64, age_ms: u32) -> SessionWrite {
        SessionWrite {
            stamp: WriteStamp { session, seq },
            age_ms,
        }
    }

    fn b0() -> BucketId {
        BucketId::new(0).expect("bucket 0")
    }

    fn is_expired(l: &Lookup) -> bool {
        matches!(
            l,
            Lookup::Expired(Reply::Error {
                code: ErrorCode::SessionExpired,
                ..
            })
        )
    }

    #[test]
    fn a_duplicate_gets_the_original_answer_and_an_unknown_write_is_fresh() {
        let s = Sessions::default();
        // A minute after the table was made, so the retries below postdate it.
        let now = Instant::now() + Duration::from_secs(60);
        assert_eq!(s.lookup(b0(), &write(1, 1, 0), now), Lookup::Fresh);
        s.record(b0(), write(1, 1, 0).stamp, None, now);
        s.record(b0(), write(1, 2, 0).stamp, Some(Bytes::from("old")), now);
        assert_eq!(
            s.lookup(b0(), &write(1, 1, 300), now),
            Lookup::Answered(Reply::Ok)
        );
        assert_eq!(
            s.lookup(b0(), &write(1, 2, 300), now),
            Lookup::Answered(Reply::Value(Bytes::from("old")))
        );
        // Another sequence, another session, another bucket: all unknown, all fresh.
        assert_eq!(s.lookup(b0(), &write(1, 3, 0), now), Lookup::Fresh);
        assert_eq!(s.lookup(b0(), &write(2, 1, 900), now), Lookup::Fresh);
        let b1 = BucketId::new(1).expect("bucket 1");
        assert_eq!(s.lookup(b1, &write(1, 1, 900), now), Lookup::Fresh);
    }

    #[test]
    fn answers_recorded_out_of_order_are_all_found() {
        // Pipelined writes of one session reach the lane in any order.
        let s = Sessions::default();
        let now = Instant::now() + Duration::from_secs(60);
        for seq in [5, 2, 9, 3] {
            s.record(b0(), WriteStamp { session: 4, seq }, None, now);
        }
        for seq in [2, 3, 5, 9] {
            assert_eq!(
                s.lookup(b0(), &write(4, seq, 1), now),
                Lookup::Answered(Reply::Ok)
            );
        }
        for seq in [1, 4, 10] {
            assert_eq!(s.lookup(b0(), &write(4, seq, 1), now), Lookup::Fresh);
        }
    }

    #[test]
    fn the_window_evicts_the_oldest_sequences_and_their_retries_expire() {
        let s = Sessions::new(SessionLimits {
            window: 3,
            ..SessionLimits::default()
        });
        let now = Instant::now();
        for seq in 1..=5 {
            s.record(b0(), WriteStamp { session: 9, seq }, None, now);
        }
        assert!(is_expired(&s.lookup(b0(), &write(9, 1, 10), now)));
        assert!(is_expired(&s.lookup(b0(), &write(9, 2, 10), now)));
        for seq in 3..=5 {
            assert_eq!(
                s.lookup(b0(), &write(9, seq, 10), now),
                Lookup::Answered(Reply::Ok)
            );
        }
        assert_eq!(s.lookup(b0(), &write(9, 6, 0), now), Lookup::Fresh);
    }

    #[test]
    fn an_evicted_session_refuses_retries_first_sent_before_the_eviction_only() {
        let s = Sessions::new(SessionLimits {
            max_sessions: 8,
            ..SessionLimits::default()
        });
        let t0 = Instant::now();
        s.record(b0(), WriteStamp { session: 1, seq: 1 }, None, t0);
        // Eight younger sessions push session 1 (the least recently used) out.
        let later = t0 + Duration::from_secs(1);
        for session in 2..=9 {
            s.record(b0(), WriteStamp { session, seq: 1 }, None, later);
        }
        let now = t0 + Duration::from_secs(20);
        // The retry of session 1's write, first sent 20 s ago, before the eviction: refused.
        assert!(is_expired(&s.lookup(b0(), &write(1, 1, 20_000), now)));
        // A first attempt of a new write is fresh, whatever was evicted.
        assert_eq!(s.lookup(b0(), &write(1, 2, 0), now), Lookup::Fresh);
        // A retry first sent well after the eviction cannot have been forgotten: fresh.
        assert_eq!(s.lookup(b0(), &write(1, 2, 1_000), now), Lookup::Fresh);
        assert!(s.len() <= 8, "bounded: {}", s.len());
    }

    #[test]
    fn a_new_table_refuses_retries_older_than_itself_until_a_bootstrap_installs_one() {
        let s = Sessions::default();
        let now = Instant::now() + Duration::from_secs(30);
        // First sent 40 s ago, before this table existed: it may have been applied elsewhere.
        assert!(is_expired(&s.lookup(b0(), &write(1, 1, 40_000), now)));
        // Sent 10 s ago (after creation, beyond the margin): never seen here, so fresh.
        assert_eq!(s.lookup(b0(), &write(1, 1, 10_000), now), Lookup::Fresh);
        // A bootstrap from a peer that never evicted: the peer's knowledge replaces ours.
        s.install(b0(), TableMarks::default(), Vec::new(), now);
        assert_eq!(s.lookup(b0(), &write(1, 1, 40_000), now), Lookup::Fresh);
    }

    #[test]
    fn idle_sessions_are_swept_by_age() {
        let s = Sessions::new(SessionLimits {
            max_idle: Duration::from_secs(60),
            ..SessionLimits::default()
        });
        let t0 = Instant::now();
        s.record(b0(), WriteStamp { session: 1, seq: 1 }, None, t0);
        let later = t0 + Duration::from_secs(120);
        s.record(b0(), WriteStamp { session: 2, seq: 1 }, None, later);
        assert_eq!(s.len(), 1, "session 1 was idle for 120 s > 60 s");
        assert!(is_expired(&s.lookup(b0(), &write(1, 1, 119_000), later)));
    }

    #[test]
    fn an_image_installed_elsewhere_answers_the_same() {
        let a = Sessions::new(SessionLimits {
            window: 2,
            max_sessions: 1,
            ..SessionLimits::default()
        });
        let t0 = Instant::now();
        a.record(b0(), WriteStamp { session: 1, seq: 1 }, None, t0);
        let t1 = t0 + Duration::from_secs(10);
        for seq in 1..=3 {
            a.record(
                b0(),
                WriteStamp { session: 2, seq },
                Some(Bytes::from("v")),
                t1,
            );
        }
        let (marks, answers) = a.image(b0(), t1);
        assert!(marks.evicted_ms_ago.is_some(), "session 1 was evicted");
        let b = Sessions::default();
        b.install(b0(), marks, answers, t1);
        let kind = |l: Lookup| match l {
            Lookup::Fresh => "fresh".to_string(),
            Lookup::Answered(r) => format!("{r:?}"),
            Lookup::Expired(_) => "expired".to_string(),
        };
        for w in [
            write(2, 1, 5),
            write(2, 2, 5),
            write(2, 3, 5),
            write(1, 1, 10_000),
        ] {
            let (x, y) = (a.lookup(b0(), &w, t1), b.lookup(b0(), &w, t1));
            assert_eq!(kind(x), kind(y), "{w:?}");
        }
        assert!(is_expired(&b.lookup(b0(), &write(1, 1, 10_000), t1)));
        assert_eq!(
            b.lookup(b0(), &write(2, 3, 5), t1),
            Lookup::Answered(Reply::Value(Bytes::from("v")))
        );
    }
}
