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
pub mod sessions;

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

pub use self::digest::Digest;
use self::digest::DigestCell;
use self::sessions::{SessionLimits, Sessions};

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
    /// An empty store, with default session limits.
    pub fn new() -> Store {
        Store::with_session_limits(SessionLimits::default())
    }

    /// An empty store whose session tables keep to `limits`.
    pub fn with_session_limits(limits: SessionLimits) -> Store {
        Store {
            buckets: std::array::from_fn(|_| Bucket::default()),
            sessions: Sessions::new(limits),
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
            let more = per_bucket.saturating_sub(map.len());
            if more > 0 {
                map.reserve(more);
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
            .try_insert(compact(&key), compact(&value))
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
        let value = compact(&value);
        bucket.map.pin().compute_if_present(&key, |_, old| {
            replaced = Some(old.clone());
            Some(value)
        });
        let old = replaced?;
        bucket.sub(Footprint::of(&key, &old));
        bucket.add(new);
        Some(old)
    }

    /// Removes `key` (the client's DELETE); returns the old value.
    pub fn delete(&self, key: &[u8]) -> Option<Bytes> {
        let bucket = self.bucket(key);
        let guard = bucket.map.guard();
        let old = bucket.map.remove(key, &guard).cloned()?;
        bucket.sub(Footprint::of(key, &old));
        reclaim_soon(&guard, &old);
        Some(old)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.bucket(key).map.pin().get(key).cloned()
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
        // The map takes compact copies; the caller's `key` stays ours to hash
        // the replaced entry with.
        let guard = bucket.map.guard();
        let old = bucket
            .map
            .insert(compact(&key), compact(&value), &guard)
            .cloned();
        if let Some(old) = &old {
            bucket.sub(Footprint::of(&key, old));
            reclaim_soon(&guard, old);
        }
        bucket.add(new);
        old
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
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Calls `f` on every entry of bucket `b`, borrowed from the map: a snapshot that copies
    /// nothing (cloning a stored `Bytes` allocates its shared header for good). Weakly consistent
    /// like [`Store::bucket_snapshot`]; `f` runs under the map's epoch guard, so keep it short.
    pub fn visit_bucket(&self, b: BucketId, mut f: impl FnMut(&Bytes, &Bytes)) {
        let map = self.buckets[b.index()].map.pin();
        for (k, v) in map.iter() {
            f(k, v);
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
        let stale: Vec<Bytes> = if map.is_empty() {
            map.reserve(entries.len());
            Vec::new()
        } else {
            let keep: std::collections::HashSet<&Bytes> = entries.iter().map(|(k, _)| k).collect();
            map.keys().filter(|k| !keep.contains(k)).cloned().collect()
        };
        drop(map);
        for ((key, value), print) in entries.into_iter().zip(prints) {
            self.put_accounted(key, value, print);
        }
        for key in stale {
            self.remove(&key);
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
            let print = Footprint::of(k, v);
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

    /// Removes every entry. Like [`Store::replace_bucket`], exact only if no
    /// writes run concurrently.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.clear();
        }
        self.sessions.clear();
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
fn reclaim_soon(guard: &flurry::Guard<'_>, old: &Bytes) {
    if old.len() >= RECLAIM_AT_BYTES {
        guard.flush();
    }
}

/// One logical bucket: its entries and the running totals over them.
#[derive(Default)]
struct Bucket {
    /// The entries.
    map: flurry::HashMap<Bytes, Bytes>,
    /// Running digest of `map`.
    digest: DigestCell,
    /// Number of entries. Signed because a remove may be accounted before
    /// the put of the entry it removed; readers clamp at zero.
    len: AtomicI64,
    /// Sum of key and value lengths; signed for the same reason as `len`.
    bytes: AtomicI64,
}

impl Bucket {
    /// Accounts for an entry that was stored.
    fn add(&self, entry: Footprint) {
        self.digest.add(entry.digest);
        self.len.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(entry.bytes, Ordering::Relaxed);
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

/// A copy of `bytes` in an allocation of its own, for the map to keep.
///
/// Keys and values arrive as slices of a connection's 64 KiB receive buffer
/// (`FramedReader`, the peer link, resync transfers); stored as they are, one
/// surviving 100-byte value would pin its whole buffer. Copying on the way in
/// makes the store's memory proportional to what it holds (docs/benchmarks.md,
/// "compact copies").
fn compact(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// Reads a running total that may dip below zero while writes race.
fn non_negative(total: &AtomicI64) -> u64 {
    u64::try_from(total.load(Ordering::Relaxed)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

    use super::*;

    /// One client or replication operation, over a small key space so that
    /// histories revisit keys.
    #[derive(Clone, Debug)]
    enum Op {
        Insert(Vec<u8>, Vec<u8>),
        Update(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
        Put(Vec<u8>, Vec<u8>),
        Remove(Vec<u8>),
        Get(Vec<u8>),
    }

    /// 21 keys: every byte string of length 0..=2 over a 4-letter alphabet.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(b'a'..=b'd', 0..=2)
    }

    /// 3 values (`""`, `"x"`, `"y"`), so two histories often agree.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(b'x'..=b'y', 0..=1)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
            (key(), value()).prop_map(|(k, v)| Op::Update(k, v)),
            key().prop_map(Op::Delete),
            (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
            key().prop_map(Op::Remove),
            key().prop_map(Op::Get),
        ]
    }

    fn history() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(op(), 0..200)
    }

    type Model = HashMap<Vec<u8>, Vec<u8>>;

    /// Applies `op` to both, asserting that the store returns what the model
    /// says it should.
    fn apply(store: &Store, model: &mut Model, op: Op) {
        let bytes = |v: Option<Vec<u8>>| v.map(Bytes::from);
        match op {
            Op::Insert(k, v) => {
                let inserted = !model.contains_key(&k);
                if inserted {
                    model.insert(k.clone(), v.clone());
                }
                assert_eq!(store.insert(k.into(), v.into()), inserted);
            }
            Op::Update(k, v) => {
                let old = model
                    .get_mut(&k)
                    .map(|slot| std::mem::replace(slot, v.clone()));
                assert_eq!(store.update(k.into(), v.into()), bytes(old));
            }
            Op::Delete(k) => assert_eq!(store.delete(&k), bytes(model.remove(&k))),
            Op::Put(k, v) => {
                let old = model.insert(k.clone(), v.clone());
                assert_eq!(store.put(k.into(), v.into()), bytes(old));
            }
            Op::Remove(k) => assert_eq!(store.remove(&k), bytes(model.remove(&k))),
            Op::Get(k) => assert_eq!(store.get(&k), bytes(model.get(&k).cloned())),
        }
    }

    fn run(ops: Vec<Op>) -> (Store, Model) {
        let store = Store::new();
        let mut model = Model::new();
        for op in ops {
            apply(&store, &mut model, op);
        }
        (store, model)
    }

    /// Checks every running total against a full scan.
    fn assert_totals_exact(store: &Store) {
        let dump = store.dump();
        assert_eq!(store.count(), dump.len() as u64);
        let payload: usize = dump.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(store.approx_bytes(), payload as u64);
        for b in BucketId::all() {
            assert_eq!(store.digest(b), store.recompute_digest(b), "bucket {b}");
            assert_eq!(store.bucket_len(b), store.bucket_snapshot(b).len() as u64);
        }
    }

    fn sorted_snapshot(store: &Store, b: BucketId) -> Vec<(Bytes, Bytes)> {
        let mut entries = store.bucket_snapshot(b);
        entries.sort_unstable();
        entries
    }

    proptest! {
        #[test]
        fn matches_hash_map_model(ops in history()) {
            let (store, model) = run(ops);
            let mut expected: Vec<_> = model
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(store.dump(), expected);
            assert_totals_exact(&store);
        }

        #[test]
        fn digests_equal_iff_contents_equal(a in history(), b in history()) {
            let ((left, _), (right, _)) = (run(a), run(b));
            for bucket in BucketId::all() {
                let same_contents = sorted_snapshot(&left, bucket) == sorted_snapshot(&right, bucket);
                let same_digest = left.digest(bucket) == right.digest(bucket);
                prop_assert_eq!(same_digest, same_contents, "bucket {}", bucket);
            }
        }

        #[test]
        fn replace_bucket_matches_fresh_store(ops in history(), source in history(), b in 0..BUCKETS) {
            let bucket = BucketId::new(b).expect("b < BUCKETS");
            let (store, _) = run(ops);
            let (source, _) = run(source);
            let others: Vec<_> = BucketId::all()
                .filter(|&o| o != bucket)
                .map(|o| (o, store.digest(o)))
                .collect();

            let entries = source.bucket_snapshot(bucket);
            let fresh = Store::new();
            for (k, v) in entries.clone() {
                fresh.put(k, v);
            }
            store.replace_bucket(bucket, entries);

            prop_assert_eq!(store.digest(bucket), fresh.digest(bucket));
            prop_assert_eq!(store.bucket_len(bucket), fresh.bucket_len(bucket));
            prop_assert_eq!(sorted_snapshot(&store, bucket), sorted_snapshot(&fresh, bucket));
            for (o, digest) in others {
                prop_assert_eq!(store.digest(o), digest, "bucket {} untouched", o);
            }
            assert_totals_exact(&store);
        }
    }

    #[test]
    fn a_verified_replace_checks_first_and_fills_an_empty_bucket_like_a_fresh_store() {
        let source = Store::new();
        for i in 0..3_000u32 {
            source.put(
                Bytes::from(format!("key{i}")),
                Bytes::from(vec![i as u8; 40]),
            );
        }
        for b in BucketId::all() {
            let entries = source.bucket_snapshot(b);
            let (count, digest) = (entries.len() as u64, source.digest(b));
            let target = Store::new();
            target.put(Bytes::from_static(b"other"), Bytes::from_static(b"x"));
            let before = (target.count(), target.digest(b));
            let wrong = Digest(digest.0 ^ 1);
            assert_eq!(
                target.replace_bucket_verified(b, entries.clone(), count, wrong),
                Err((count, digest)),
                "a wrong digest is reported with what was received"
            );
            assert_eq!(
                target.replace_bucket_verified(b, entries.clone(), count + 1, digest),
                Err((count, digest))
            );
            assert_eq!(
                (target.count(), target.digest(b)),
                before,
                "nothing changed"
            );
            target.delete(b"other");
            assert_eq!(
                target.replace_bucket_verified(b, entries, count, digest),
                Ok(())
            );
            assert_eq!(target.digest(b), digest);
            assert_eq!(target.bucket_len(b), count);
            assert_eq!(target.bucket_snapshot(b).len() as u64, count);
            for (k, v) in source.bucket_snapshot(b) {
                assert_eq!(target.get(&k), Some(v));
            }
        }
    }

    #[test]
    fn concurrent_writers_keep_totals_exact() {
        const THREADS: u64 = 4;
        const OPS_PER_THREAD: u64 = 50_000;
        const KEYS: u64 = 8;
        let store = Arc::new(Store::new());
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    // xorshift64: cheap, deterministic per thread.
                    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                    for _ in 0..OPS_PER_THREAD {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let key = Bytes::from(format!("k{}", state % KEYS));
                        let value = Bytes::from(format!("v{t}-{}", state % 5));
                        match (state >> 32) % 4 {
                            0 => drop(store.put(key, value)),
                            1 => drop(store.remove(&key)),
                            2 => drop(store.insert(key, value)),
                            _ => drop(store.update(key, value)),
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker panicked");
        }
        assert_totals_exact(&store);
    }

    #[test]
    fn a_presized_store_holds_and_accounts_entries_like_a_default_one() {
        let sized = Store::with_capacity(1000);
        let plain = Store::new();
        // Past the presized capacity too, so the presized maps grow as well.
        for i in 0..3000u32 {
            let (k, v) = (
                Bytes::from(format!("key-{i}")),
                Bytes::from(format!("v{i}")),
            );
            assert!(sized.insert(k.clone(), v.clone()));
            assert!(plain.insert(k, v));
        }
        assert!(!sized.insert(Bytes::from("key-7"), Bytes::from("again")));
        assert_eq!(sized.count(), 3000);
        assert_eq!(sized.get(b"key-2999"), Some(Bytes::from("v2999")));
        assert_eq!(sized.digests(), plain.digests());
        assert_eq!(sized.approx_bytes(), plain.approx_bytes());
    }

    #[test]
    fn stored_entries_do_not_pin_the_callers_buffer() {
        // Keys and values arrive as slices of a 64 KiB receive buffer; the store must keep
        // copies of its own, or one surviving entry holds the whole buffer alive.
        let buffer: Bytes = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let inside = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
        let store = Store::new();
        let (k1, k2) = (buffer.slice(0..16), buffer.slice(16..32));
        assert!(store.insert(k1.clone(), buffer.slice(100..200)));
        assert!(store.update(k1.clone(), buffer.slice(200..300)).is_some());
        assert!(store.put(k2.clone(), buffer.slice(300..400)).is_none());
        store.replace_bucket(
            BucketId::of(&buffer[..8]),
            vec![(buffer.slice(0..8), buffer.slice(400..500))],
        );
        for (key, value) in store.dump() {
            assert!(
                !inside(&key),
                "key {key:?} is a slice of the caller's buffer"
            );
            assert!(
                !inside(&value),
                "value of {key:?} is a slice of the caller's buffer"
            );
        }
        assert_eq!(store.count(), 3);
        assert_eq!(store.get(&k1), Some(buffer.slice(200..300)));
    }

    #[test]
    fn bucket_of_is_the_documented_hash() {
        // Regression guard: these are part of the replication protocol.
        let fixed: [(&[u8], usize); 5] = [
            (b"", 2),
            (b"a", 31),
            (b"hello", 29),
            (b"user:42", 10),
            (b"quickv", 3),
        ];
        for (key, bucket) in fixed {
            assert_eq!(BucketId::of(key).index(), bucket, "{key:?}");
            assert_eq!(bucket as u64, xxh3_64(key) % 32);
        }
    }

    #[test]
    fn bucket_ids_cover_exactly_the_buckets() {
        let all: Vec<_> = BucketId::all().collect();
        assert_eq!(all.len(), BUCKETS);
        for (i, b) in all.into_iter().enumerate() {
            assert_eq!(BucketId::new(i), Some(b));
            assert_eq!(b.index(), i);
            assert_eq!(b.to_string(), i.to_string());
        }
        assert_eq!(BucketId::new(BUCKETS), None);
        assert_eq!(BucketId::new(256), None);
    }

    #[test]
    fn entry_digest_is_length_prefixed_xxh3_128() {
        let mut framed = 2u32.to_le_bytes().to_vec();
        framed.extend_from_slice(b"abc");
        assert_eq!(Digest::of_entry(b"ab", b"c"), Digest(xxh3_128(&framed)));
        assert_ne!(Digest::of_entry(b"ab", b"c"), Digest::of_entry(b"a", b"bc"));
        assert_eq!(Digest::default().to_string(), "0".repeat(32));
    }

    #[test]
    fn clear_empties_every_bucket() {
        let store = Store::new();
        for i in 0..100u32 {
            store.put(Bytes::from(i.to_string()), Bytes::from_static(b"v"));
        }
        store.clear();
        assert_eq!(store.count(), 0);
        assert_eq!(store.approx_bytes(), 0);
        assert_eq!(store.digests(), [Digest::default(); BUCKETS]);
        assert!(store.dump().is_empty());
    }

    #[test]
    fn a_reader_never_misses_a_key_kept_by_a_bucket_replace() {
        // Finding 5: the resync sink must not empty the bucket before refilling it.
        let store = std::sync::Arc::new(Store::new());
        let b = BucketId::of(b"kept");
        let mut entries = vec![(Bytes::from_static(b"kept"), Bytes::from_static(b"v"))];
        entries.extend(
            (0u32..)
                .map(|i| Bytes::from(format!("e{i}")))
                .filter(|k| BucketId::of(k) == b)
                .take(5_000)
                .map(|k| (k, Bytes::from_static(b"x"))),
        );
        store.replace_bucket(b, entries.clone());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut misses = 0u32;
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) || reads < 1_000 {
                    misses += u32::from(store.get(b"kept").is_none());
                    reads += 1;
                    if reads > 50_000_000 {
                        break;
                    }
                }
                misses
            })
        };
        for round in 0..20 {
            let mut next = entries.clone();
            next.truncate(1 + (round * 97) % entries.len());
            store.replace_bucket(b, next);
        }
        done.store(true, Ordering::Relaxed);
        assert_eq!(reader.join().expect("reader"), 0, "`kept` went missing");
        assert_eq!(store.recompute_digest(b), store.digest(b));
    }
}
