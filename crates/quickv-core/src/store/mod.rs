//! The in-memory key space: 32 logical buckets of lock-free hash maps.
//!
//! # Buckets
//!
//! Every key belongs to exactly one of [`BUCKETS`] logical buckets, chosen by
//! [`BucketId::of`]. The bucket, not the key and not the whole store, is the
//! unit the replication layer reasons about:
//!
//! - **Ordering.** Writes to one bucket are replicated in order; writes to
//!   different buckets are independent, so they can travel on separate lanes
//!   without head-of-line blocking.
//! - **Integrity.** Each bucket carries a [`Digest`] of its contents that the
//!   primary and the backup compare to detect divergence without shipping data.
//! - **Resync.** A bucket whose digests disagree is repaired on its own
//!   ([`Store::bucket_snapshot`] on one side, [`Store::replace_bucket`] on the
//!   other), so a partial resync costs ~1/32 of a full one.
//!
//! Thirty-two is enough lanes to keep two cores busy and to make a resync
//! small, and few enough that a full digest exchange is 512 bytes.
//!
//! # The bucket hash is fixed
//!
//! `BucketId::of(key) = xxh3_64(key) % 32`, with no seed. Both servers must map
//! every key to the same bucket or their per-bucket digests mean nothing, so
//! this function is part of the replication protocol: changing it requires a
//! protocol version bump. (Inside a bucket, flurry uses its own randomly seeded
//! hash, which never leaves the process.)
//!
//! # The digest
//!
//! A bucket's digest is an order-independent sum of per-entry hashes (see
//! [`Digest`] for the exact definition). Each write adds the hash
//! of the entry it stored and subtracts the hash of the entry it replaced or
//! removed, using the old value flurry hands back atomically, so the digest
//! costs O(1) per write, needs no lock, and is exact once writers are
//! quiescent, whatever the interleaving of concurrent writes.
//! [`Store::recompute_digest`] recomputes it from scratch to check that claim.
//!
//! # Consistency
//!
//! Single-key operations are atomic. Counts, sizes and digests are updated
//! just after the map itself, so a reader racing writers may see them lag by
//! the writes in flight; they are exact whenever no write is in progress.

mod digest;
pub mod entry;
pub mod sessions;

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

pub use self::digest::Digest;
use self::digest::DigestCell;
use self::entry::{Key, Value};
use self::sessions::{SessionLimits, Sessions};
use crate::write::{decide, Effect};
use quickv_proto::{Op, Reply};

/// Bucket identity is part of the wire protocol; it lives in `quickv-proto`.
pub use quickv_proto::{BucketId, BUCKETS};

/// The whole key space: [`BUCKETS`] flurry maps, each with a running entry
/// count, payload size and [`Digest`].
///
/// All operations take `&self` and are safe from any number of threads; share
/// it with an `Arc`.
pub struct Store {
    /// Indexed by [`BucketId::index`]; a fixed array, as the bucket count is
    /// part of the protocol.
    buckets: [Bucket; BUCKETS],
    /// The answers of recent session-stamped writes, partitioned by bucket like the entries, so
    /// that whoever applies, replicates or transfers a bucket has its records at hand.
    sessions: Sessions,
}

impl Store {
    /// An empty store, with default session limits and session tables without a birth mark
    /// (see [`Sessions::unborn`]): for tests, benches and tools. A server creates its store with
    /// [`Store::with_session_limits`] and the time of its start.
    pub fn new() -> Store {
        Store {
            buckets: std::array::from_fn(|_| Bucket::default()),
            sessions: Sessions::unborn(SessionLimits::default()),
        }
    }

    /// An empty store whose session tables keep to `limits` and start at `now` (a retry of a
    /// write first sent before then is refused as expired: see [`Sessions::new`]).
    pub fn with_session_limits(limits: SessionLimits, now: std::time::Instant) -> Store {
        Store {
            buckets: std::array::from_fn(|_| Bucket::default()),
            sessions: Sessions::new(limits, now),
        }
    }

    /// The session tables (see [`sessions`]).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// An empty store whose maps are sized up front for about `keys` entries in all.
    ///
    /// flurry grows a map by copying its whole table into one twice the size; inserting into a
    /// growing map pays for that copy, which is what the rare multi-millisecond fresh-key inserts
    /// are (docs/benchmarks.md). Presizing moves those copies out of the request path until the
    /// store holds more than `keys` entries. It costs 8 bytes per table slot at once (about
    /// 16 bytes per expected key).
    pub fn with_capacity(keys: usize) -> Store {
        let store = Store::new();
        store.presize(keys);
        store
    }

    /// Sizes the maps for about `keys` entries in all (see [`Store::with_capacity`]); a no-op
    /// for 0 or a store already that large. The server calls it at start (`--expected-keys`).
    pub fn presize(&self, keys: usize) {
        let per_bucket = keys.div_ceil(BUCKETS);
        if per_bucket == 0 {
            return;
        }
        for bucket in &self.buckets {
            let map = bucket.map.pin();
            reserve(&map, per_bucket.saturating_sub(map.len()));
        }
    }

    /// Applies a client write at once (a standalone server): its effect and answer are those of
    /// [`decide`], decided against the key's value at the moment it is
    /// applied. Atomic per key: a present key is decided and changed under flurry's bin lock; a
    /// write that stores into an absent key is an insert-if-absent, retried if the key appeared.
    pub fn apply(&self, op: Op) -> Reply {
        let Some(key) = op.key().cloned() else {
            return decide(op, None).1;
        };
        let bucket = self.bucket(&key);
        loop {
            // As if absent: an effect that stores is tried as an insert-if-absent.
            let (absent, absent_reply) = decide(op.clone(), None);
            if let Effect::Put(k, v) = &absent {
                let footprint = Footprint::of(k, v);
                if bucket
                    .map
                    .pin()
                    .try_insert(Key::new(k), Value::new(v))
                    .is_ok()
                {
                    bucket.add(footprint);
                    return absent_reply;
                }
            }
            // Present: decided and applied under the key's bin lock.
            let mut done = None;
            let guard = bucket.map.guard();
            let changed = |_: &Key, old: &Value| {
                let (effect, reply) = decide(op.clone(), Some(&old.to_bytes()));
                let next = match &effect {
                    Effect::Put(_, v) => Some(Value::new(v)),
                    Effect::Remove(_) => None,
                    // Unchanged (flurry's closure cannot say "leave it": the same bytes again).
                    Effect::Nothing => Some(old.clone()),
                };
                done = Some((old.clone(), effect, reply));
                next
            };
            bucket.map.compute_if_present(&key[..], changed, &guard);
            match done {
                Some((old, effect, reply)) => {
                    match effect {
                        Effect::Put(_, v) => {
                            bucket.sub(Footprint::of(&key, old.as_slice()));
                            bucket.add(Footprint::of(&key, &v));
                            reclaim_soon(&guard, old.as_slice());
                        }
                        Effect::Remove(_) => {
                            bucket.sub(Footprint::of(&key, old.as_slice()));
                            reclaim_soon(&guard, old.as_slice());
                        }
                        Effect::Nothing => {}
                    }
                    return reply;
                }
                // Absent now: the answer for an absent key holds, unless it had to store
                // (the key appeared, then went: try again).
                None if !matches!(absent, Effect::Put(..)) => return absent_reply,
                None => {}
            }
        }
    }

    /// Stores `key → value` only if `key` is absent (the client's INSERT);
    /// returns whether it was stored.
    pub fn insert(&self, key: Bytes, value: Bytes) -> bool {
        let bucket = self.bucket(&key);
        let footprint = Footprint::of(&key, &value);
        let inserted = bucket
            .map
            .pin()
            .try_insert(Key::new(&key), Value::new(&value))
            .is_ok();
        if inserted {
            bucket.add(footprint);
        }
        inserted
    }

    /// Replaces the value of `key` only if it is present (the client's
    /// UPDATE); returns the old value, or `None` and changes nothing if absent.
    ///
    /// Atomic per key: the check and the replacement happen under flurry's
    /// bin lock, so a concurrent delete cannot slip in between.
    pub fn update(&self, key: Bytes, value: Bytes) -> Option<Bytes> {
        let bucket = self.bucket(&key);
        let new = Footprint::of(&key, &value);
        let mut replaced = None;
        let value = Value::new(&value);
        bucket.map.pin().compute_if_present(&key[..], |_, old| {
            replaced = Some(old.clone());
            Some(value)
        });
        let old = replaced?;
        bucket.sub(Footprint::of(&key, old.as_slice()));
        bucket.add(new);
        Some(old.into_bytes())
    }

    /// Removes `key` (the client's DELETE); returns the old value.
    pub fn delete(&self, key: &[u8]) -> Option<Bytes> {
        let bucket = self.bucket(key);
        let guard = bucket.map.guard();
        let old = bucket.map.remove(key, &guard).cloned()?;
        bucket.sub(Footprint::of(key, old.as_slice()));
        reclaim_soon(&guard, old.as_slice());
        Some(old.into_bytes())
    }

    /// The value of `key`, if present: a `Bytes` sharing the stored value (no copy; see
    /// [`Value::to_bytes`]).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.get_with(key, |value| value.map(Value::to_bytes))
    }

    /// Calls `f` with the value of `key` (`None` if absent), borrowed from the map while the
    /// map's epoch guard is held, and returns what `f` returns: a read that touches no reference
    /// count and allocates nothing (the server copies the bytes straight into the answer it
    /// encodes). Values are immutable once stored and a replaced one is freed only after every
    /// guard that could see it is gone, so a concurrent overwrite never shows `f` torn bytes.
    /// `f` runs under the guard: keep it short.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(Option<&Value>) -> R) -> R {
        let map = &self.bucket(key).map;
        let guard = map.guard();
        f(map.get(key, &guard))
    }

    /// Sets `key → value` whether or not `key` exists; returns the old value.
    /// The backup applies replicated writes with this, since the primary has
    /// already decided their outcome.
    pub fn put(&self, key: Bytes, value: Bytes) -> Option<Bytes> {
        let new = Footprint::of(&key, &value);
        self.put_accounted(key, value, new)
    }

    /// [`Store::put`] of an entry whose footprint is already computed.
    fn put_accounted(&self, key: Bytes, value: Bytes, new: Footprint) -> Option<Bytes> {
        let bucket = self.bucket(&key);
        // The map takes its own copies (see `entry`); the caller's `key` stays ours to hash
        // the replaced entry with.
        let guard = bucket.map.guard();
        let old = bucket
            .map
            .insert(Key::new(&key), Value::new(&value), &guard)
            .cloned();
        if let Some(old) = &old {
            bucket.sub(Footprint::of(&key, old.as_slice()));
            reclaim_soon(&guard, old.as_slice());
        }
        bucket.add(new);
        old.map(Value::into_bytes)
    }

    /// Removes `key` whether or not it exists; returns the old value. Same
    /// semantics as [`Store::delete`], named for the replication stream's
    /// put/remove vocabulary.
    pub fn remove(&self, key: &[u8]) -> Option<Bytes> {
        self.delete(key)
    }

    /// Number of entries in the whole store.
    pub fn count(&self) -> u64 {
        BucketId::all().map(|b| self.bucket_len(b)).sum()
    }

    /// Sum of key and value lengths in bucket `b` (see [`Store::approx_bytes`]).
    pub fn bucket_bytes(&self, b: BucketId) -> u64 {
        non_negative(&self.buckets[b.index()].bytes)
    }

    /// Number of entries in bucket `b`.
    pub fn bucket_len(&self, b: BucketId) -> u64 {
        non_negative(&self.buckets[b.index()].len)
    }

    /// The running digest of bucket `b`.
    pub fn digest(&self, b: BucketId) -> Digest {
        self.buckets[b.index()].digest.load()
    }

    /// The running digests of all buckets, indexed by [`BucketId::index`];
    /// what the servers exchange to find diverged buckets.
    pub fn digests(&self) -> [Digest; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].digest.load())
    }

    /// Bucket `b`'s digest computed from scratch by a full scan, to verify
    /// the running one in tests and integrity checks.
    pub fn recompute_digest(&self, b: BucketId) -> Digest {
        Digest::of_entries(self.buckets[b.index()].map.pin().iter())
    }

    /// A copy of bucket `b`'s entries, in no particular order; the resync
    /// source.
    ///
    /// Weakly consistent, like flurry iteration: under concurrent writes it
    /// reflects each key at some moment during the scan, not one instant for
    /// the whole bucket. Quiesce writers (or replay the writes made during the
    /// scan) if an exact image is needed.
    pub fn bucket_snapshot(&self, b: BucketId) -> Vec<(Bytes, Bytes)> {
        let map = self.buckets[b.index()].map.pin();
        map.iter()
            .map(|(k, v)| (k.to_bytes(), v.to_bytes()))
            .collect()
    }

    /// Calls `f` on every entry of bucket `b`, borrowed from the map: a snapshot that copies
    /// and allocates nothing. Weakly consistent like [`Store::bucket_snapshot`]; `f` runs under
    /// the map's epoch guard, so keep it short.
    pub fn visit_bucket(&self, b: BucketId, mut f: impl FnMut(&[u8], &[u8])) {
        let map = self.buckets[b.index()].map.pin();
        for (k, v) in map.iter() {
            f(k.as_slice(), v.as_slice());
        }
    }

    /// Every entry, sorted by key; for tests, debugging and comparing
    /// servers. Weakly consistent like [`Store::bucket_snapshot`].
    pub fn dump(&self) -> Vec<(Bytes, Bytes)> {
        let mut entries: Vec<_> = BucketId::all()
            .flat_map(|b| self.bucket_snapshot(b))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Makes bucket `b` hold exactly `entries` (a later duplicate key wins),
    /// keeping its count, size and digest exact; the resync sink.
    ///
    /// Never empties the bucket on the way: every key of `entries` goes
    /// straight from its old value to its new one, and only then are the
    /// keys that `entries` lacks removed. A concurrent reader therefore never
    /// sees `not found` for a key both the old and the new contents hold.
    ///
    /// Callers must ensure no concurrent writes to bucket `b` while this
    /// runs, or the running totals may miss them. Every key should belong to
    /// `b`; a key that does not is stored in its own bucket, so lookups still
    /// find it and every digest still describes its bucket's contents.
    pub fn replace_bucket(&self, b: BucketId, entries: Vec<(Bytes, Bytes)>) {
        let prints = entries.iter().map(|(k, v)| Footprint::of(k, v)).collect();
        self.replace_accounted(b, entries, prints);
    }

    /// [`Store::replace_bucket`] for a transfer that says what the bucket must end up with: checks
    /// first that `entries` are `count` entries whose digest is `digest`, and changes nothing if
    /// not (the error gives the count and digest received). Each entry is hashed once, for both
    /// the check and the bucket's running digest.
    pub fn replace_bucket_verified(
        &self,
        b: BucketId,
        entries: Vec<(Bytes, Bytes)>,
        count: u64,
        digest: Digest,
    ) -> Result<(), (u64, Digest)> {
        let prints: Vec<Footprint> = entries.iter().map(|(k, v)| Footprint::of(k, v)).collect();
        let got = prints
            .iter()
            .fold(Digest::default(), |sum, p| sum.plus(p.digest));
        if got != digest || entries.len() as u64 != count {
            return Err((entries.len() as u64, got));
        }
        self.replace_accounted(b, entries, prints);
        Ok(())
    }

    fn replace_accounted(&self, b: BucketId, entries: Vec<(Bytes, Bytes)>, prints: Vec<Footprint>) {
        let map = self.buckets[b.index()].map.pin();
        // A restarted server's buckets are empty: nothing to keep or remove, and the map is
        // sized once instead of growing (and copying itself) on the way.
        let stale: Vec<Key> = if map.is_empty() {
            reserve(&map, entries.len());
            Vec::new()
        } else {
            let keep: std::collections::HashSet<&[u8]> =
                entries.iter().map(|(k, _)| &k[..]).collect();
            map.keys()
                .filter(|k| !keep.contains(k.as_slice()))
                .cloned()
                .collect()
        };
        drop(map);
        for ((key, value), print) in entries.into_iter().zip(prints) {
            self.put_accounted(key, value, print);
        }
        for key in stale {
            self.remove(key.as_slice());
        }
        // Defence in depth: whatever the totals were before (a clear that raced a writer, a bug),
        // a bucket replaced whole leaves with totals counted from what it holds.
        self.recount_bucket(b);
    }

    /// Recounts bucket `b`'s running totals (digest, entries, bytes) from its contents; returns
    /// whether they were wrong. Exact only while no write to `b` runs (callers hold what orders
    /// the bucket's writes: the replace path, the lane's lock).
    pub fn recount_bucket(&self, b: BucketId) -> bool {
        let bucket = &self.buckets[b.index()];
        let (mut digest, mut len, mut bytes) = (Digest::default(), 0i64, 0i64);
        for (k, v) in bucket.map.pin().iter() {
            let print = Footprint::of(k.as_slice(), v.as_slice());
            digest = digest.plus(print.digest);
            len += 1;
            bytes += print.bytes;
        }
        let wrong = bucket.digest.load() != digest
            || bucket.len.load(Ordering::Relaxed) != len
            || bucket.bytes.load(Ordering::Relaxed) != bytes;
        bucket.digest.set(digest);
        bucket.len.store(len, Ordering::Relaxed);
        bucket.bytes.store(bytes, Ordering::Relaxed);
        wrong
    }

    /// Removes every entry, and the session records with them (the tables restart at `now`). Like
    /// [`Store::replace_bucket`], exact only if no writes run concurrently.
    pub fn clear(&self, now: std::time::Instant) {
        for bucket in &self.buckets {
            bucket.clear();
        }
        self.sessions.clear(now);
    }

    /// Sum of key and value lengths over all entries; the basis of the
    /// memory limit. Excludes map overhead, hence approximate.
    pub fn approx_bytes(&self) -> u64 {
        self.buckets.iter().map(|b| non_negative(&b.bytes)).sum()
    }

    fn bucket(&self, key: &[u8]) -> &Bucket {
        &self.buckets[BucketId::of(key).index()]
    }
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl fmt::Debug for Store {
    /// Totals only: the contents may be gigabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("count", &self.count())
            .field("approx_bytes", &self.approx_bytes())
            .finish()
    }
}

/// A removed or replaced value at least this large (bytes) is handed to flurry's reclamation at
/// once instead of waiting in the thread's batch of retired entries (up to 120 of them: 2 GiB of
/// 16 MiB values), so deletes of large values give their memory back (security review M4).
const RECLAIM_AT_BYTES: usize = 64 * 1024;

/// Starts reclaiming what this thread retired if `old` is large (see [`RECLAIM_AT_BYTES`]).
fn reclaim_soon(guard: &flurry::Guard<'_>, old: &[u8]) {
    if old.len() >= RECLAIM_AT_BYTES {
        guard.flush();
    }
}

/// Sizes `map` for `more` entries beyond those it holds, the table flurry would have grown to.
///
/// flurry's `reserve(n)` leaves a table twice that size: it sizes the table for `n` (the next
/// power of two above 1.5 n) and then keeps doubling until three quarters of the table, its
/// load threshold, cover that *table size*, not `n`. So ask it for half (`cargo bench --bench
/// entry` prints the table's bytes per entry both ways; for a 1M-key store, 33 B per key
/// against 17).
fn reserve(map: &flurry::HashMapRef<'_, Key, Value>, more: usize) {
    if more > 0 {
        map.reserve(more.div_ceil(2));
    }
}

/// One logical bucket: its entries and the running totals over them.
#[derive(Default)]
struct Bucket {
    /// The entries, laid out as `entry` explains.
    map: flurry::HashMap<Key, Value>,
    /// Running digest of `map`.
    digest: DigestCell,
    /// Number of entries. Signed because a remove may be accounted before
    /// the put of the entry it removed; readers clamp at zero.
    len: AtomicI64,
    /// Sum of key and value lengths; signed for the same reason as `len`.
    bytes: AtomicI64,
}

impl Bucket {
    /// Accounts for an entry that was stored; hands the old table to reclamation at once if the
    /// store just made flurry grow its table (see [`grew_at`]).
    fn add(&self, entry: Footprint) {
        self.digest.add(entry.digest);
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        self.bytes.fetch_add(entry.bytes, Ordering::Relaxed);
        if grew_at(len) {
            self.map.guard().flush();
        }
    }

    /// Accounts for an entry that was replaced or removed.
    fn sub(&self, entry: Footprint) {
        self.digest.sub(entry.digest);
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(entry.bytes, Ordering::Relaxed);
    }

    /// Empties the bucket and zeroes its totals; exact only without
    /// concurrent writers.
    fn clear(&self) {
        self.map.pin().clear();
        self.digest.reset();
        self.len.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
    }
}

/// Whether a map that reaches `len` entries by an insert has just doubled its table: flurry
/// grows a table of `n` slots (a power of two, 16 at first) when an insert brings it to three
/// quarters of `n`, so at 12, 24, 48, … entries.
///
/// The old table (8 bytes a slot) and the nodes the move copied are retired into the thread's
/// batch of garbage, which is freed only once 120 more things are retired: after the last growth
/// of a fill without updates, never. For a 1M-key store that is the 32 half-size tables, 8 MiB,
/// held for good (docs/benchmarks.md, "What one entry costs"). At these entry counts the store
/// flushes the batch. Under concurrent writers the count may step past a threshold on another
/// thread than the one that moved the table; the old table then waits for the batch as before.
fn grew_at(len: i64) -> bool {
    len >= 12 && len % 12 == 0 && (len / 12).count_ones() == 1
}

/// What one entry contributes to its bucket's running totals, computed
/// outside the map so no hashing happens under flurry's bin lock.
#[derive(Copy, Clone)]
struct Footprint {
    /// The entry's [`Digest::of_entry`].
    digest: Digest,
    /// Key plus value length in bytes.
    bytes: i64,
}

impl Footprint {
    fn of(key: &[u8], value: &[u8]) -> Footprint {
        Footprint {
            digest: Digest::of_entry(key, value),
            // Allocations never exceed isize::MAX bytes, so this is lossless.
            bytes: (key.len() + value.len()) as i64,
        }
    }
}

/// Reads a running total that may dip below zero while writes race.
fn non_negative(total: &AtomicI64) -> u64 {
    u64::try_from(total.load(Ordering::Relaxed)).unwrap_or(0)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "apply_tests.rs"]
mod apply_tests;
