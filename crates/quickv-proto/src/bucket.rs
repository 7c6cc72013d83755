//! Bucket identity on the wire: which of the [`BUCKETS`] buckets a key belongs to, and the
//! [`Digest`] the two servers compare per bucket.
//!
//! Both are part of the replication protocol, so they live here, beside the codec that carries
//! them; the server's store (which keeps the maps and maintains the digests) re-exports them.
//!
//! # The bucket hash is fixed
//!
//! `BucketId::of(key) = xxh3_64(key) % 32`, with no seed. Both servers must map every key to the
//! same bucket or their per-bucket digests mean nothing: changing it requires a protocol version
//! bump.
//!
//! # The digest
//!
//! A bucket's digest must be maintainable in O(1) per write and must not depend on the order in
//! which writes arrived, because the primary and the backup apply concurrent writes in different
//! interleavings yet must agree whenever they hold the same entries. So every entry is hashed on
//! its own and the entry hashes are summed: a write adds the hash of what it put and subtracts the
//! hash of what it replaced.
//!
//! The sum is kept as two independent wrapping 64-bit sums, one over the high halves and one over
//! the low halves of the entry hashes. That is just as order-independent as a 128-bit sum, and each
//! half fits one `AtomicU64`, so a running digest can be lock-free (a 128-bit sum split across two
//! atomics would lose carries between them under concurrency).

use std::fmt;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3Default};

/// Number of logical buckets; part of the replication protocol, like the
/// bucket hash.
pub const BUCKETS: usize = 32;

/// A logical bucket, `0..BUCKETS`: the unit of replication ordering, integrity
/// checking and resync.
///
/// Only constructible for valid indices, so holders never need to re-check.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketId(u8);

impl BucketId {
    /// The bucket that holds `key`: `xxh3_64(key) % 32`, unseeded.
    ///
    /// Fixed forever: the primary and the backup must agree on it for digests
    /// and resyncs to line up, so never change it without a protocol version
    /// bump.
    pub fn of(key: &[u8]) -> BucketId {
        // The remainder is below BUCKETS = 32, so it fits a u8.
        BucketId((xxh3_64(key) % BUCKETS as u64) as u8)
    }

    /// The bucket with index `i`, or `None` if `i >= BUCKETS`; parses bucket
    /// numbers that arrive from a peer.
    pub fn new(i: usize) -> Option<BucketId> {
        u8::try_from(i)
            .ok()
            .filter(|&i| usize::from(i) < BUCKETS)
            .map(BucketId)
    }

    /// The bucket's index, `0..BUCKETS`, for indexing per-bucket arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every bucket in index order, for sweeps such as digest exchanges.
    pub fn all() -> impl Iterator<Item = BucketId> {
        // BUCKETS = 32 fits a u8.
        (0..BUCKETS as u8).map(BucketId)
    }
}

impl fmt::Display for BucketId {
    /// The bare index, as used in logs and resync reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Digest of a set of entries: `(Σ hi) << 64 | (Σ lo)`, each sum wrapping
/// modulo 2^64, over the 128-bit entry hashes of [`Digest::of_entry`].
///
/// Two buckets with equal digests hold the same entries (up to hash
/// collisions, which are astronomically unlikely); the replication layer
/// compares digests to decide which buckets need a resync. The empty set has
/// the zero digest, which is also `Default`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct Digest(pub u128);

/// Entries whose hashed bytes (length prefix, key, value) fit this are hashed in one shot.
const ONE_SHOT_BYTES: usize = 512;

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
        let prefix = (key.len() as u32).to_le_bytes();
        let len = prefix.len() + key.len() + value.len();
        if len <= ONE_SHOT_BYTES {
            // Small entries (the common case) are hashed in one shot from a stack copy: the
            // same xxh3_128 of the same bytes, without the streaming hasher's setup, which cost
            // more than the hash itself (docs/benchmarks.md, resync profile).
            let mut buf = [0u8; ONE_SHOT_BYTES];
            buf[..4].copy_from_slice(&prefix);
            buf[4..4 + key.len()].copy_from_slice(key);
            buf[4 + key.len()..len].copy_from_slice(value);
            return Digest(xxh3_128(&buf[..len]));
        }
        let mut hasher = Xxh3Default::new();
        hasher.update(&prefix);
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

    /// The two independently summed halves, high first (what a lock-free running digest keeps in
    /// two atomics).
    pub fn halves(self) -> (u64, u64) {
        ((self.0 >> 64) as u64, self.0 as u64)
    }

    /// The digest whose halves are `hi` and `lo`; the inverse of [`Digest::halves`].
    pub fn from_halves(hi: u64, lo: u64) -> Digest {
        Digest(u128::from(hi) << 64 | u128::from(lo))
    }
}

impl fmt::Display for Digest {
    /// 32 lowercase hex digits, so digests line up in logs and reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written the long way: what both servers of any version compute.
    fn streamed(key: &[u8], value: &[u8]) -> Digest {
        let mut hasher = Xxh3Default::new();
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(key);
        hasher.update(value);
        Digest(hasher.digest128())
    }

    #[test]
    fn the_one_shot_entry_digest_equals_the_streamed_one_at_every_size() {
        let bytes: Vec<u8> = (0..2048u32).map(|i| (i * 31 + 7) as u8).collect();
        for key_len in [0, 1, 3, 16, 17, 64, 200, 255, 508, 600] {
            for value_len in (0..=600).step_by(1).filter(|v| v % 7 == 0 || *v < 20) {
                let (key, value) = (&bytes[..key_len], &bytes[1000..1000 + value_len]);
                assert_eq!(
                    Digest::of_entry(key, value),
                    streamed(key, value),
                    "key {key_len} B, value {value_len} B"
                );
            }
        }
        assert_ne!(Digest::of_entry(b"ab", b"c"), Digest::of_entry(b"a", b"bc"));
    }
}
