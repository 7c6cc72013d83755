//! Order-independent digests of bucket contents.
//!
//! A bucket's digest must be maintainable in O(1) per write and must not
//! depend on the order in which writes arrived, because the primary and the
//! backup apply concurrent writes in different interleavings yet must agree
//! whenever they hold the same entries. So every entry is hashed on its own
//! and the entry hashes are summed: a write adds the hash of what it put and
//! subtracts the hash of what it replaced.
//!
//! The sum is kept as two independent wrapping 64-bit sums, one over the high
//! halves and one over the low halves of the entry hashes. That is just as
//! order-independent as a 128-bit sum, and each half fits one `AtomicU64`, so
//! the running digest is lock-free (a 128-bit sum split across two atomics
//! would lose carries between them under concurrency).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::Xxh3Default;

/// Digest of a set of entries: `(Σ hi) << 64 | (Σ lo)`, each sum wrapping
/// modulo 2^64, over the 128-bit entry hashes of [`Digest::of_entry`].
///
/// Two buckets with equal digests hold the same entries (up to hash
/// collisions, which are astronomically unlikely); the replication layer
/// compares digests to decide which buckets need a resync. The empty set has
/// the zero digest, which is also `Default`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct Digest(pub u128);

impl Digest {
    /// The digest of the single entry `key → value`:
    /// `xxh3_128(u32-LE key length ‖ key ‖ value)`.
    ///
    /// The length prefix keeps the split between key and value in the hash,
    /// so `("ab", "c")` and `("a", "bc")` differ. Keys longer than 4 GiB would
    /// have their length truncated in the prefix; the protocol rejects such
    /// keys long before they reach the store, and the hash stays deterministic
    /// on both servers regardless.
    pub fn of_entry(key: &[u8], value: &[u8]) -> Digest {
        let mut hasher = Xxh3Default::new();
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(key);
        hasher.update(value);
        Digest(hasher.digest128())
    }

    /// The digest of a whole set of entries, computed from scratch; used to
    /// verify the incrementally maintained digest and to seed it on resync.
    pub fn of_entries<I, K, V>(entries: I) -> Digest
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        entries.into_iter().fold(Digest::default(), |sum, (k, v)| {
            sum.plus(Digest::of_entry(k.as_ref(), v.as_ref()))
        })
    }

    /// The digest of the union of two disjoint entry sets.
    pub fn plus(self, other: Digest) -> Digest {
        let (hi, lo) = self.halves();
        let (other_hi, other_lo) = other.halves();
        Digest::from_halves(hi.wrapping_add(other_hi), lo.wrapping_add(other_lo))
    }

    /// The digest of `self`'s entries without `other`'s (which must be a
    /// subset of them); the inverse of [`Digest::plus`].
    pub fn minus(self, other: Digest) -> Digest {
        let (hi, lo) = self.halves();
        let (other_hi, other_lo) = other.halves();
        Digest::from_halves(hi.wrapping_sub(other_hi), lo.wrapping_sub(other_lo))
    }

    /// The two independently summed halves, high first.
    fn halves(self) -> (u64, u64) {
        ((self.0 >> 64) as u64, self.0 as u64)
    }

    fn from_halves(hi: u64, lo: u64) -> Digest {
        Digest(u128::from(hi) << 64 | u128::from(lo))
    }
}

impl fmt::Display for Digest {
    /// 32 lowercase hex digits, so digests line up in logs and reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A running [`Digest`] that concurrent writers update without a lock.
///
/// Each half is updated with its own relaxed `fetch_add`/`fetch_sub`; a
/// reader racing a writer may see one half updated and not the other, which
/// is fine because digests are only compared once the bucket is quiescent
/// (or re-checked later).
#[derive(Debug, Default)]
pub(super) struct DigestCell {
    /// Wrapping sum of the entry hashes' high halves.
    hi: AtomicU64,
    /// Wrapping sum of the entry hashes' low halves.
    lo: AtomicU64,
}

impl DigestCell {
    /// Accounts for an entry that was added.
    pub(super) fn add(&self, entry: Digest) {
        let (hi, lo) = entry.halves();
        self.hi.fetch_add(hi, Ordering::Relaxed);
        self.lo.fetch_add(lo, Ordering::Relaxed);
    }

    /// Accounts for an entry that was removed or replaced.
    pub(super) fn sub(&self, entry: Digest) {
        let (hi, lo) = entry.halves();
        self.hi.fetch_sub(hi, Ordering::Relaxed);
        self.lo.fetch_sub(lo, Ordering::Relaxed);
    }

    /// The current digest.
    pub(super) fn load(&self) -> Digest {
        Digest::from_halves(
            self.hi.load(Ordering::Relaxed),
            self.lo.load(Ordering::Relaxed),
        )
    }

    /// Forgets every entry; only valid while no writer touches the bucket.
    pub(super) fn reset(&self) {
        self.hi.store(0, Ordering::Relaxed);
        self.lo.store(0, Ordering::Relaxed);
    }
}
