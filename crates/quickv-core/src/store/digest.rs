//! The running, lock-free form of a bucket's order-independent [`Digest`].
//!
//! The digest itself (what an entry hashes to, how hashes are summed) is part of the replication
//! protocol and lives in `quickv-proto`; see [`Digest`] for its definition and why it is kept as
//! two 64-bit sums.

use std::sync::atomic::{AtomicU64, Ordering};

pub use quickv_proto::Digest;

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

    /// Sets the digest to `d` (a recount of the bucket's contents); only valid while no writer
    /// touches the bucket.
    pub(super) fn set(&self, d: Digest) {
        let (hi, lo) = d.halves();
        self.hi.store(hi, Ordering::Relaxed);
        self.lo.store(lo, Ordering::Relaxed);
    }

    /// Forgets every entry; only valid while no writer touches the bucket.
    pub(super) fn reset(&self) {
        self.hi.store(0, Ordering::Relaxed);
        self.lo.store(0, Ordering::Relaxed);
    }
}
