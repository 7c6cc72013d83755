//! One bucket's session table: per client identity (owner), per session, the remembered answers,
//! with their cost in bytes and the eviction that keeps them inside the budgets.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use quickv_proto::peer::RecordedAnswer;
use quickv_proto::WriteStamp;

use super::SessionLimits;

/// Bytes charged for one identity's table in a bucket (map slot, header, its session map).
pub(super) const OWNER_BYTES: usize = 128;
/// Bytes charged for one session in a bucket (map slot, floor, last use, the deque's header).
pub(super) const SESSION_BYTES: usize = 128;
/// Bytes charged for one remembered answer (sequence and answer in the deque, with slack for the
/// deque's spare capacity), besides a kept value's own length.
pub(super) const ANSWER_BYTES: usize = 64;

/// One bucket's table.
#[derive(Debug)]
pub(super) struct BucketTable {
    /// Per client identity ([`WriteStamp::owner`]): its sessions.
    pub(super) owners: HashMap<u64, OwnerTable>,
    /// Latest last use of a session whose identity's table was dropped entirely (its marks
    /// merged here): a retry of an identity without a table here is judged against this.
    pub(super) horizon: Option<Instant>,
    /// When this bucket's records start: the table's creation, or the start of the table a
    /// bootstrap installed. A retry first sent before then may have been applied to a store that
    /// no longer exists (both servers lost): it is refused as expired. No margin is needed here,
    /// unlike the horizons: misjudging it cannot apply a write twice to surviving data.
    pub(super) born: Option<Instant>,
    /// When idle sessions were last swept (by a write or by the timer); `None` before the first
    /// sweep of a table created without a clock.
    pub(super) swept: Option<Instant>,
    /// Bytes charged to this bucket (every owner's `bytes`).
    pub(super) bytes: usize,
    /// Answers remembered in this bucket.
    pub(super) records: usize,
    /// Sessions with records in this bucket.
    pub(super) sessions: usize,
}

/// One identity's sessions in one bucket.
#[derive(Debug)]
pub(super) struct OwnerTable {
    /// Per session id: its remembered answers.
    pub(super) sessions: HashMap<u64, SessionEntry>,
    /// Latest last use of a session of this identity evicted from this bucket: only this
    /// identity's retries are judged against it, so another identity's flood cannot raise it.
    pub(super) horizon: Option<Instant>,
    /// Bytes charged to this identity here ([`OWNER_BYTES`] and its sessions' bytes).
    pub(super) bytes: usize,
}

/// One session's records in one bucket.
#[derive(Debug)]
pub(super) struct SessionEntry {
    /// Sequences below this were evicted from `answers`.
    pub(super) floor: u64,
    /// Sequence → answer, sorted by sequence.
    pub(super) answers: AnswerWindow,
    /// Last write of this session to this bucket.
    pub(super) last_used: Instant,
}

/// What a change did to the totals, to carry up to the owner and the bucket.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Freed {
    pub(super) bytes: usize,
    pub(super) records: usize,
    pub(super) sessions: usize,
}

impl BucketTable {
    /// An empty table whose records start at `born`, last swept at `now`.
    pub(super) fn new(born: Option<Instant>, now: Option<Instant>) -> BucketTable {
        BucketTable {
            owners: HashMap::new(),
            horizon: None,
            born,
            swept: now,
            bytes: 0,
            records: 0,
            sessions: 0,
        }
    }

    /// The horizon a retry of `owner` is judged against: its own evictions, and those of
    /// identities whose tables were dropped (which may have been its own).
    pub(super) fn horizon_of(&self, owner: u64) -> Option<Instant> {
        let own = self.owners.get(&owner).and_then(|o| o.horizon);
        own.max(self.horizon)
    }

    /// Remembers `answer` for `stamp` (without enforcing any budget: see [`BucketTable::enforce`]).
    pub(super) fn insert(
        &mut self,
        stamp: WriteStamp,
        floor: u64,
        answer: RecordedAnswer,
        last_used: Instant,
        window: usize,
    ) {
        let owner = self.owners.entry(stamp.owner).or_insert_with(|| {
            self.bytes += OWNER_BYTES;
            OwnerTable {
                sessions: HashMap::new(),
                horizon: None,
                bytes: OWNER_BYTES,
            }
        });
        let entry = owner.sessions.entry(stamp.session).or_insert_with(|| {
            self.sessions += 1;
            self.bytes += SESSION_BYTES;
            owner.bytes += SESSION_BYTES;
            SessionEntry {
                floor,
                answers: AnswerWindow::default(),
                last_used,
            }
        });
        let (bytes_before, len_before) = (entry.answers.bytes, entry.answers.len());
        entry.floor = entry.floor.max(floor);
        entry.answers.insert(stamp.seq, answer);
        entry.last_used = entry.last_used.max(last_used);
        while entry.answers.len() > window.max(1) {
            let Some(oldest) = entry.answers.pop_first() else {
                break;
            };
            entry.floor = entry.floor.max(oldest + 1);
        }
        let (bytes_after, len_after) = (entry.answers.bytes, entry.answers.len());
        owner.bytes = owner.bytes + bytes_after - bytes_before;
        self.bytes = self.bytes + bytes_after - bytes_before;
        self.records = self.records + len_after - len_before;
    }

    /// Keeps the table inside the limits after `owner` recorded: its own share first (only its
    /// own least recently used sessions go), then the bucket's budget (the identity holding the
    /// most bytes gives up its least recently used sessions, so a flood pays for itself). Returns
    /// the sessions evicted.
    pub(super) fn enforce(&mut self, owner: u64, limits: &SessionLimits) -> usize {
        let mut evicted = 0;
        let share = limits.identity_bucket_bytes();
        if let Some(o) = self.owners.get_mut(&owner) {
            if o.sessions.len() > limits.max_sessions || o.bytes > share {
                // Down to seven eighths of the limits at once, so a full table costs a sort per
                // eighth of its size instead of one per write.
                let bytes = share - share / 8;
                let count = limits.max_sessions - limits.max_sessions / 8;
                let freed = o.evict_lru(bytes, count);
                evicted += self.take(freed);
            }
        }
        let budget = limits.bucket_bytes();
        while self.bytes > budget {
            let largest = self
                .owners
                .iter()
                .filter(|(_, o)| !o.sessions.is_empty())
                .max_by_key(|(_, o)| o.bytes)
                .map(|(id, o)| (*id, o.bytes));
            let Some((id, held)) = largest else {
                // Only identities' marks are left: merge the oldest into the bucket's horizon.
                self.drop_oldest_mark();
                if self.owners.is_empty() {
                    break;
                }
                continue;
            };
            let over = self.bytes - budget + budget / 8;
            let Some(o) = self.owners.get_mut(&id) else {
                break;
            };
            let freed = o.evict_lru(held.saturating_sub(over), usize::MAX);
            if freed.sessions == 0 {
                break;
            }
            evicted += self.take(freed);
        }
        evicted
    }

    /// Drops sessions idle for longer than `max_idle` at `now`, then the tables of identities
    /// left without sessions whose latest eviction is itself older than `max_idle` (their mark
    /// moves to the bucket's horizon). Returns the sessions dropped.
    pub(super) fn sweep(&mut self, now: Instant, max_idle: Duration) -> usize {
        self.swept = Some(now);
        let idle = |at: Instant| now.saturating_duration_since(at) > max_idle;
        let mut dropped = Freed::default();
        for o in self.owners.values_mut() {
            let f = o.evict_where(|e| idle(e.last_used));
            dropped.bytes += f.bytes;
            dropped.records += f.records;
            dropped.sessions += f.sessions;
        }
        let n = self.take(dropped);
        let mut horizon = self.horizon;
        let mut freed = 0;
        self.owners.retain(|_, o| {
            let stale = o.sessions.is_empty() && o.horizon.is_none_or(idle);
            if stale {
                horizon = horizon.max(o.horizon);
                freed += o.bytes;
            }
            !stale
        });
        self.horizon = horizon;
        self.bytes -= freed;
        n
    }

    /// Takes what an owner freed off the bucket's totals; returns the sessions freed.
    fn take(&mut self, freed: Freed) -> usize {
        self.bytes -= freed.bytes;
        self.records -= freed.records;
        self.sessions -= freed.sessions;
        freed.sessions
    }

    /// Forgets the identity (without sessions) evicted longest ago, raising the bucket's horizon.
    fn drop_oldest_mark(&mut self) {
        let oldest = self
            .owners
            .iter()
            .filter(|(_, o)| o.sessions.is_empty())
            .min_by_key(|(_, o)| o.horizon)
            .map(|(id, _)| *id);
        if let Some(o) = oldest.and_then(|id| self.owners.remove(&id)) {
            self.horizon = self.horizon.max(o.horizon);
            self.bytes -= o.bytes;
        }
    }
}

impl OwnerTable {
    /// Evicts least recently used sessions until at most `bytes` are held and at most `count`
    /// sessions are left (at least one session goes if any is over), raising the horizon.
    fn evict_lru(&mut self, bytes: usize, count: usize) -> Freed {
        let mut ages: Vec<(Instant, u64)> = self
            .sessions
            .iter()
            .map(|(id, e)| (e.last_used, *id))
            .collect();
        ages.sort_unstable();
        let mut freed = Freed::default();
        for (_, id) in ages {
            if self.bytes <= bytes && self.sessions.len() <= count && freed.sessions > 0 {
                break;
            }
            if let Some(e) = self.sessions.remove(&id) {
                self.forget(&e, &mut freed);
            }
        }
        freed
    }

    /// Drops the sessions matching `evict`, raising the horizon to the latest last use dropped.
    fn evict_where(&mut self, evict: impl Fn(&SessionEntry) -> bool) -> Freed {
        let doomed: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, e)| evict(e))
            .map(|(id, _)| *id)
            .collect();
        let mut freed = Freed::default();
        for id in doomed {
            if let Some(e) = self.sessions.remove(&id) {
                self.forget(&e, &mut freed);
            }
        }
        freed
    }

    /// Accounts for a session just removed.
    fn forget(&mut self, e: &SessionEntry, freed: &mut Freed) {
        self.horizon = self.horizon.max(Some(e.last_used));
        let bytes = SESSION_BYTES + e.answers.bytes;
        self.bytes -= bytes;
        freed.bytes += bytes;
        freed.records += e.answers.len();
        freed.sessions += 1;
    }
}

/// A session's answers in one bucket, sorted by sequence, with their cost in bytes. A deque, not
/// a tree: a session's writes arrive in nearly increasing order, so recording is a push at the
/// back, evicting a pop at the front, and a fresh write (newer than every answer) is recognised
/// without a search.
#[derive(Debug, Default)]
pub(super) struct AnswerWindow {
    /// The answers.
    pub(super) list: VecDeque<(u64, RecordedAnswer)>,
    /// Their cost: [`ANSWER_BYTES`] each plus kept values' lengths.
    pub(super) bytes: usize,
}

impl AnswerWindow {
    pub(super) fn get(&self, seq: u64) -> Option<&RecordedAnswer> {
        match (self.list.front(), self.list.back()) {
            (Some((lo, _)), Some((hi, _))) if (*lo..=*hi).contains(&seq) => {}
            _ => return None,
        }
        let i = self.list.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.list.get(i).map(|(_, answer)| answer)
    }

    fn insert(&mut self, seq: u64, answer: RecordedAnswer) {
        self.bytes += cost(&answer);
        if self.list.back().is_none_or(|(hi, _)| *hi < seq) {
            return self.list.push_back((seq, answer));
        }
        match self.list.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.list[i].1, answer);
                self.bytes -= cost(&old);
            }
            Err(i) => self.list.insert(i, (seq, answer)),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Removes the oldest answer; returns its sequence.
    fn pop_first(&mut self) -> Option<u64> {
        let (seq, answer) = self.list.pop_front()?;
        self.bytes -= cost(&answer);
        Some(seq)
    }
}

/// What one answer costs in the table.
fn cost(answer: &RecordedAnswer) -> usize {
    ANSWER_BYTES
        + match answer {
            RecordedAnswer::Removed(v) => v.len(),
            RecordedAnswer::Ok | RecordedAnswer::RemovedNotKept => 0,
        }
}
