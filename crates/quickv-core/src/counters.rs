//! The replication counters `status` shows.

use std::sync::atomic::AtomicU64;

/// Monotonic counters shown in status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Links established since start.
    pub links: AtomicU64,
    /// Bootstraps (transfers of at least one bucket) completed.
    pub bootstraps: AtomicU64,
    /// Buckets copied by bootstraps.
    pub buckets_transferred: AtomicU64,
    /// Single-bucket resyncs sent after a digest mismatch.
    pub resyncs: AtomicU64,
    /// Digest checks that found a difference.
    pub digest_mismatches: AtomicU64,
    /// Digest checks sent (primary) or verified (backup).
    pub digest_checks: AtomicU64,
    /// Buckets whose running totals (digest, count, bytes) were found to disagree with their
    /// contents when a digest check mismatched, and were recounted. Always 0 unless a bug.
    pub totals_repaired: AtomicU64,
}
