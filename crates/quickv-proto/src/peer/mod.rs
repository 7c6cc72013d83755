//! The peer protocol: what the primary and the backup say to each other, as a sans-IO codec.
//!
//! Same framing as the client protocol (`u32` big-endian length, then a one-byte tag), without a
//! request id: the peer link is not request/response but two ordered conversations.
//!
//! - The **control stream** (the first bidirectional stream the primary opens) carries the warm-start
//!   handshake ([`PeerMsg::Hello`] both ways), the bucket transfer of a bootstrap
//!   (`BucketBegin`, `BucketChunk`…, `BucketEnd` per bucket, then `TransferDone`, answered by
//!   `TransferAck`), the switch to steady state (`Synced`) and the farewell (`Goodbye`).
//! - A few **data streams**, opened by the primary after the handshake. Each of the 32 lanes
//!   (buckets) is carried by exactly one of them (lane `b` on stream `b mod streams`), so a lane's
//!   messages stay in order while a burst of writes to many lanes travels in one write. A data
//!   stream carries writes with their lane offset (`Put`, `Remove`: the lane is the key's bucket),
//!   integrity checks (`Check`) and single-bucket resyncs (`ReplaceBegin`, `BucketChunk`…,
//!   `ReplaceEnd`). The backup answers on the same stream with cumulative per-lane `Ack`s and
//!   `Mismatch` reports.
//!
//! Tags `0x40..` are used so that a client frame sent to the peer port (or the other way round)
//! never decodes as something else. Every length is checked against
//! [`Limits`](crate::Limits) before allocating.
//!
//! # Layout
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the messages ([`PeerMsg`], [`PeerHello`], [`SessionAnswer`]) |
//! | `encode.rs` | [`PeerMsg::encode`] and the tag of each message |
//! | `decode.rs` | [`PeerMsg::decode`]: the frame, then one function per message that has a body |
//! | `chunk.rs` | the entry chunker of every entry stream ([`split_entries`], [`ChunkWriter`]) |

mod chunk;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::{BucketId, Digest, WriteStamp, BUCKETS};

pub use chunk::{split_entries, ChunkWriter, CHUNK_HEADER_BYTES};

/// Per-lane sequence number of a replicated write; starts at 1 on each new link, 0 means "none yet".
pub type ReplOffset = u64;

/// What one side tells the other in the warm-start handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHello {
    /// True for the primary.
    pub primary: bool,
    /// Random id of the sender's process: a new id means it restarted.
    pub run_id: u64,
    /// The pair's identity (a hash of the pair's server certificate): two servers of different
    /// pairs never link, whatever else they share.
    pub pair: u64,
    /// The epoch of the sender's latest verified link (0: none in this process). Each link takes
    /// `max(primary, backup) + 1`; a primary claiming current data from an older epoch than the
    /// backup's is stale and refused.
    pub epoch: u64,
    /// Whether the sender's store is known current: it holds the pair's data (it received and
    /// verified a transfer, or found both stores identical, in this process's life). A restarted
    /// (empty) server is not; this is what decides who holds the data.
    pub synced: bool,
    /// Keys held, for logs and status.
    pub keys: u64,
    /// The 32 bucket digests, to resend only the buckets that differ.
    pub digests: [Digest; BUCKETS],
}

/// What a backup last applied on one lane: the write at `offset` of the link that the primary
/// process `primary_run` opened at epoch `epoch` (all zero: nothing applied in this process).
/// A lane's offsets restart at 1 on every link, so an offset means something only together with
/// the link it was counted on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneMark {
    /// The run id of the primary that sent the write.
    pub primary_run: u64,
    /// The epoch of the link it came on.
    pub epoch: u64,
    /// Its offset on that link's lane.
    pub offset: ReplOffset,
}

/// One message on the peer link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// Warm start: who I am and what I hold.
    Hello(Box<PeerHello>),
    /// Backup → primary, right after the backup's hello: per lane, the last write it applied
    /// ([`LaneMark`]). The commit point is the backup: a write the primary sent and never heard
    /// acknowledged (its link was lost) took effect exactly if the backup applied it, so the
    /// primary keeps those writes and drops the others (issue 22).
    Applied(Box<[LaneMark; BUCKETS]>),
    /// A bucket's snapshot follows (bootstrap).
    BucketBegin(BucketId),
    /// Some entries of the bucket being sent (bootstrap or lane resync).
    BucketChunk(Vec<(Bytes, Bytes)>),
    /// End of a bucket's snapshot, with what the receiver must end up with.
    BucketEnd {
        /// The bucket.
        bucket: BucketId,
        /// Entries sent.
        count: u64,
        /// Digest of the entries sent.
        digest: Digest,
    },
    /// Every bucket of the transfer was sent.
    TransferDone,
    /// The receiver's verdict on the whole transfer.
    TransferAck {
        /// False if a digest or count did not match.
        ok: bool,
        /// Why not, for the log.
        reason: String,
    },
    /// The primary has opened the lanes: steady state begins.
    Synced,
    /// The sender is shutting down gracefully.
    Goodbye(String),
    /// Set a key (insert or update on the primary).
    Put {
        /// Lane offset.
        offset: ReplOffset,
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// The client write this is, if it was stamped: the backup records it in the key's
        /// bucket's session table (answer `Ok`) when it applies the write.
        stamp: Option<WriteStamp>,
    },
    /// Remove a key.
    Remove {
        /// Lane offset.
        offset: ReplOffset,
        /// The key.
        key: Bytes,
        /// As for `Put`; the recorded answer is the value the removal took away.
        stamp: Option<WriteStamp>,
    },
    /// Bootstrap, inside a bucket (between `BucketBegin` and `BucketEnd`): one remembered answer of
    /// the bucket's session table. The receiver installs the table when the bucket verifies.
    SessionAnswer(SessionAnswer),
    /// Bootstrap, inside a bucket: the sender's table evicted records of this bucket `ms_ago`
    /// milliseconds ago (the latest such eviction), so retries first sent before then must be
    /// refused as expired on the receiver too.
    SessionsEvicted {
        /// Milliseconds since the latest eviction.
        ms_ago: u64,
    },
    /// Bootstrap, inside a bucket: the sender's table of this bucket starts `ms_ago` milliseconds
    /// ago (it knows nothing of writes before), so the receiver refuses retries first sent earlier.
    SessionsBorn {
        /// Milliseconds since the table's start.
        ms_ago: u64,
    },
    /// Integrity check: after applying everything up to `offset`, the bucket's digest should be this.
    Check {
        /// The lane.
        bucket: BucketId,
        /// Lane offset the check follows.
        offset: ReplOffset,
        /// The primary's digest of the bucket at that point.
        digest: Digest,
    },
    /// A single-bucket resync of this lane follows (chunks, then `ReplaceEnd`), contiguous on its
    /// stream.
    ReplaceBegin(BucketId),
    /// End of a lane resync: replace the bucket with the chunks received, acknowledge `offset`.
    ReplaceEnd {
        /// The lane.
        bucket: BucketId,
        /// Lane offset of the resync.
        offset: ReplOffset,
        /// Digest the bucket must have afterwards.
        digest: Digest,
    },
    /// Backup → primary: everything up to `offset` on this lane is applied.
    Ack {
        /// The lane.
        bucket: BucketId,
        /// Highest offset applied.
        offset: ReplOffset,
    },
    /// Backup → primary: a check at `offset` found a different digest.
    Mismatch {
        /// The lane.
        bucket: BucketId,
        /// The check's offset.
        offset: ReplOffset,
        /// The backup's digest.
        digest: Digest,
    },
}

/// One remembered answer of a session table, as a bootstrap carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAnswer {
    /// The write it answers.
    pub stamp: WriteStamp,
    /// Sequences of this session below `floor` were evicted from the bucket's table.
    pub floor: u64,
    /// Milliseconds since the session last wrote to the bucket (for the age limit).
    pub idle_ms: u64,
    /// The original answer.
    pub answer: RecordedAnswer,
}

/// The answer a session table remembers for an applied write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedAnswer {
    /// `Ok` (an insert or an update).
    Ok,
    /// A delete, with the value it removed (small values only: see `RemovedNotKept`).
    Removed(Bytes),
    /// A delete whose removed value was too large to keep: a retry is answered `Ok`, "applied,
    /// value not kept" (docs/protocol.md, "Sessions").
    RemovedNotKept,
}
