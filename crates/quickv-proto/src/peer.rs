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
//! never decodes as something else. Every length is checked against [`Limits`] before allocating.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{encoded_len_entry, put_bytes, wire_len, Reader};
use super::{BucketId, DecodeError, Digest, Limits, WriteStamp, BUCKETS, LEN_PREFIX};

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

/// One message on the peer link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// Warm start: who I am and what I hold.
    Hello(Box<PeerHello>),
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
    /// The original answer: `None` for `Ok` (insert, update), `Some(old value)` for a delete.
    pub removed: Option<Bytes>,
}

/// Smallest encoding of one snapshot entry: two empty byte strings.
const MIN_ENTRY_BYTES: usize = 8;

/// Bytes of a `BucketChunk` frame after its length prefix and before its entries: tag and count.
pub const CHUNK_HEADER_BYTES: usize = 1 + 4;

/// Cuts `entries` into chunks whose encoded entries ([`encoded_len_entry`]) add up to at most
/// `max_bytes` each: a chunk is closed *before* an entry that would take it over, so no mix of
/// value sizes can overflow, and an entry larger than `max_bytes` on its own travels alone (the
/// caller's `max_bytes` leaves room for the largest entry the limits accept). Used by every
/// entry stream: bootstrap snapshots, lane resyncs and client dumps.
pub fn split_entries(
    entries: Vec<(Bytes, Bytes)>,
    max_bytes: usize,
) -> impl Iterator<Item = Vec<(Bytes, Bytes)>> {
    let mut entries = entries.into_iter().peekable();
    std::iter::from_fn(move || {
        let mut chunk = Vec::new();
        let mut fill = ChunkFill::new(max_bytes);
        while let Some((k, v)) = entries.peek() {
            let len = encoded_len_entry(k, v);
            if fill.closes_before(len) {
                break;
            }
            fill.add(len);
            chunk.extend(entries.next());
        }
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// The cut rule of every entry stream, written once for [`split_entries`] and [`ChunkWriter`]: a
/// chunk takes entries until the next one would take its encoded size over `max_bytes`, and always
/// takes its first entry (so an entry larger than `max_bytes` travels alone).
#[derive(Debug, Clone, Copy)]
struct ChunkFill {
    max_bytes: usize,
    size: usize,
    entries: u32,
}

impl ChunkFill {
    fn new(max_bytes: usize) -> ChunkFill {
        ChunkFill {
            max_bytes,
            size: 0,
            entries: 0,
        }
    }

    /// Whether an entry of encoded length `len` must go to a new chunk.
    fn closes_before(&self, len: usize) -> bool {
        self.entries > 0 && self.size.saturating_add(len) > self.max_bytes
    }

    /// Counts an entry of encoded length `len` into the chunk.
    fn add(&mut self, len: usize) {
        self.size = self.size.saturating_add(len);
        self.entries += 1;
    }
}

/// Encodes `BucketChunk` frames entry by entry straight into an output buffer, cut exactly as
/// [`split_entries`] cuts them: the bytes are those of encoding its chunks, without first cloning
/// every entry into a `Vec` (a bootstrap sender walks the store and writes the wire directly).
///
/// An open chunk's length and count are filled in when it closes: call [`ChunkWriter::close`]
/// before appending any other frame, and take bytes off the buffer only through
/// [`ChunkWriter::take_sealed`].
#[derive(Debug)]
pub struct ChunkWriter {
    max_bytes: usize,
    /// Where the open chunk's frame starts in the buffer, and how full it is.
    open: Option<(usize, ChunkFill)>,
}

impl ChunkWriter {
    /// A writer whose chunks hold at most `max_bytes` of encoded entries (one larger entry alone).
    pub fn new(max_bytes: usize) -> ChunkWriter {
        ChunkWriter {
            max_bytes,
            open: None,
        }
    }

    /// Appends one entry, closing the open chunk first if the entry would take it over.
    pub fn push(&mut self, dst: &mut BytesMut, key: &[u8], value: &[u8]) {
        let len = encoded_len_entry(key, value);
        if self.open.is_some_and(|(_, fill)| fill.closes_before(len)) {
            self.close(dst);
        }
        let max_bytes = self.max_bytes;
        let (_, fill) = self.open.get_or_insert_with(|| {
            let start = dst.len();
            dst.put_u32(0);
            dst.put_u8(PeerMsg::BucketChunk(Vec::new()).tag());
            dst.put_u32(0);
            (start, ChunkFill::new(max_bytes))
        });
        put_bytes(dst, key);
        put_bytes(dst, value);
        fill.add(len);
    }

    /// Finishes the open chunk, if any: fills in its length prefix and entry count.
    pub fn close(&mut self, dst: &mut BytesMut) {
        if let Some((start, fill)) = self.open.take() {
            let len = wire_len(dst.len() - start - LEN_PREFIX);
            dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
            let at = start + LEN_PREFIX + 1;
            dst[at..at + 4].copy_from_slice(&fill.entries.to_be_bytes());
        }
    }

    /// Splits off the front of `dst` holding whole frames only (everything before the open
    /// chunk), to be sent while the writer goes on.
    pub fn take_sealed(&mut self, dst: &mut BytesMut) -> Bytes {
        let sealed = self.open.map_or(dst.len(), |(start, _)| start);
        if let Some((start, _)) = self.open.as_mut() {
            *start -= sealed;
        }
        dst.split_to(sealed).freeze()
    }
}

impl PeerMsg {
    fn tag(&self) -> u8 {
        match self {
            PeerMsg::Hello(_) => 0x40,
            PeerMsg::BucketBegin(_) => 0x41,
            PeerMsg::BucketChunk(_) => 0x42,
            PeerMsg::BucketEnd { .. } => 0x43,
            PeerMsg::TransferDone => 0x44,
            PeerMsg::TransferAck { .. } => 0x45,
            PeerMsg::Synced => 0x46,
            PeerMsg::Goodbye(_) => 0x47,
            PeerMsg::Put { .. } => 0x51,
            PeerMsg::Remove { .. } => 0x52,
            PeerMsg::Check { .. } => 0x53,
            PeerMsg::ReplaceBegin(_) => 0x54,
            PeerMsg::ReplaceEnd { .. } => 0x55,
            PeerMsg::SessionAnswer(_) => 0x48,
            PeerMsg::SessionsEvicted { .. } => 0x49,
            PeerMsg::SessionsBorn { .. } => 0x4A,
            PeerMsg::Ack { .. } => 0x60,
            PeerMsg::Mismatch { .. } => 0x61,
        }
    }

    /// Appends the frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(self.tag());
        match self {
            PeerMsg::Hello(h) => {
                dst.put_u8(u8::from(h.primary));
                dst.put_u64(h.run_id);
                dst.put_u64(h.pair);
                dst.put_u64(h.epoch);
                dst.put_u8(u8::from(h.synced));
                dst.put_u64(h.keys);
                for d in &h.digests {
                    dst.put_u128(d.0);
                }
            }
            PeerMsg::BucketBegin(b) | PeerMsg::ReplaceBegin(b) => dst.put_u8(b.index() as u8),
            PeerMsg::BucketChunk(entries) => {
                dst.put_u32(wire_len(entries.len()));
                for (k, v) in entries {
                    put_bytes(dst, k);
                    put_bytes(dst, v);
                }
            }
            PeerMsg::BucketEnd {
                bucket,
                count,
                digest,
            } => {
                dst.put_u8(bucket.index() as u8);
                dst.put_u64(*count);
                dst.put_u128(digest.0);
            }
            PeerMsg::TransferDone | PeerMsg::Synced => {}
            PeerMsg::TransferAck { ok, reason } => {
                dst.put_u8(u8::from(*ok));
                put_bytes(dst, reason.as_bytes());
            }
            PeerMsg::Goodbye(reason) => put_bytes(dst, reason.as_bytes()),
            PeerMsg::Put {
                offset,
                key,
                value,
                stamp,
            } => {
                dst.put_u64(*offset);
                put_stamp(dst, stamp);
                put_bytes(dst, key);
                put_bytes(dst, value);
            }
            PeerMsg::Remove { offset, key, stamp } => {
                dst.put_u64(*offset);
                put_stamp(dst, stamp);
                put_bytes(dst, key);
            }
            PeerMsg::SessionAnswer(a) => {
                dst.put_u64(a.stamp.session);
                dst.put_u64(a.stamp.seq);
                dst.put_u64(a.floor);
                dst.put_u64(a.idle_ms);
                match &a.removed {
                    None => dst.put_u8(0),
                    Some(v) => {
                        dst.put_u8(1);
                        put_bytes(dst, v);
                    }
                }
            }
            PeerMsg::SessionsEvicted { ms_ago } | PeerMsg::SessionsBorn { ms_ago } => {
                dst.put_u64(*ms_ago)
            }
            PeerMsg::Check {
                bucket,
                offset,
                digest,
            }
            | PeerMsg::ReplaceEnd {
                bucket,
                offset,
                digest,
            }
            | PeerMsg::Mismatch {
                bucket,
                offset,
                digest,
            } => {
                dst.put_u8(bucket.index() as u8);
                dst.put_u64(*offset);
                dst.put_u128(digest.0);
            }
            PeerMsg::Ack { bucket, offset } => {
                dst.put_u8(bucket.index() as u8);
                dst.put_u64(*offset);
            }
        }
        let len = wire_len(dst.len() - start - LEN_PREFIX);
        dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one frame from `src`: `Ok(None)` if incomplete (nothing consumed). Any error is
    /// [`DecodeError::Invalid`]: a peer that breaks the protocol loses the link, never the process.
    pub fn decode(src: &mut BytesMut, limits: &Limits) -> Result<Option<PeerMsg>, DecodeError> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut be = [0u8; LEN_PREFIX];
        be.copy_from_slice(prefix);
        let len = usize::try_from(u32::from_be_bytes(be)).unwrap_or(usize::MAX);
        if len > limits.max_frame {
            return Err(invalid(format!(
                "peer frame of {len} bytes exceeds the limit of {} bytes",
                limits.max_frame
            )));
        }
        if len == 0 {
            return Err(invalid("empty peer frame".into()));
        }
        if src.len() - LEN_PREFIX < len {
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let mut r = Reader::new(src.split_to(len).freeze());
        let tag = r.u8("tag")?;
        let msg = match tag {
            0x40 => {
                let primary = flag(r.u8("role")?)?;
                let run_id = r.u64("run id")?;
                let pair = r.u64("pair")?;
                let epoch = r.u64("epoch")?;
                let synced = flag(r.u8("synced")?)?;
                let keys = r.u64("keys")?;
                let mut digests = [Digest::default(); BUCKETS];
                for d in digests.iter_mut() {
                    *d = digest(&mut r)?;
                }
                PeerMsg::Hello(Box::new(PeerHello {
                    primary,
                    run_id,
                    pair,
                    epoch,
                    synced,
                    keys,
                    digests,
                }))
            }
            0x41 => PeerMsg::BucketBegin(bucket(&mut r)?),
            0x42 => {
                let n = usize::try_from(r.u32("entry count")?).unwrap_or(usize::MAX);
                if n > r.remaining() / MIN_ENTRY_BYTES {
                    return Err(invalid(format!(
                        "bucket chunk claims {n} entries in {} bytes",
                        r.remaining()
                    )));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.bytes("key")?;
                    let v = r.bytes("value")?;
                    if k.len() > limits.max_key || v.len() > limits.max_value {
                        return Err(invalid("snapshot entry over the size limits".into()));
                    }
                    entries.push((k, v));
                }
                PeerMsg::BucketChunk(entries)
            }
            0x43 => PeerMsg::BucketEnd {
                bucket: bucket(&mut r)?,
                count: r.u64("count")?,
                digest: digest(&mut r)?,
            },
            0x44 => PeerMsg::TransferDone,
            0x45 => PeerMsg::TransferAck {
                ok: flag(r.u8("ok")?)?,
                reason: r.string("reason")?,
            },
            0x46 => PeerMsg::Synced,
            0x47 => PeerMsg::Goodbye(r.string("reason")?),
            0x48 => {
                let stamp = WriteStamp {
                    session: r.u64("session")?,
                    seq: r.u64("sequence")?,
                };
                let floor = r.u64("floor")?;
                let idle_ms = r.u64("idle")?;
                let removed = match flag(r.u8("answer kind")?)? {
                    false => None,
                    true => {
                        let v = r.bytes("removed value")?;
                        if v.len() > limits.max_value {
                            return Err(invalid("session answer over the size limits".into()));
                        }
                        Some(v)
                    }
                };
                PeerMsg::SessionAnswer(SessionAnswer {
                    stamp,
                    floor,
                    idle_ms,
                    removed,
                })
            }
            0x49 => PeerMsg::SessionsEvicted {
                ms_ago: r.u64("eviction age")?,
            },
            0x4A => PeerMsg::SessionsBorn {
                ms_ago: r.u64("table age")?,
            },
            0x51 => {
                let offset = r.u64("offset")?;
                let stamp = stamp(&mut r)?;
                let key = r.bytes("key")?;
                let value = r.bytes("value")?;
                if key.len() > limits.max_key || value.len() > limits.max_value {
                    return Err(invalid("replicated write over the size limits".into()));
                }
                PeerMsg::Put {
                    offset,
                    key,
                    value,
                    stamp,
                }
            }
            0x52 => {
                let (offset, stamp, key) = (r.u64("offset")?, stamp(&mut r)?, r.bytes("key")?);
                if key.len() > limits.max_key {
                    return Err(invalid(
                        "replicated remove of a key over the size limit".into(),
                    ));
                }
                PeerMsg::Remove { offset, key, stamp }
            }
            0x53 => PeerMsg::Check {
                bucket: bucket(&mut r)?,
                offset: r.u64("offset")?,
                digest: digest(&mut r)?,
            },
            0x54 => PeerMsg::ReplaceBegin(bucket(&mut r)?),
            0x55 => PeerMsg::ReplaceEnd {
                bucket: bucket(&mut r)?,
                offset: r.u64("offset")?,
                digest: digest(&mut r)?,
            },
            0x60 => PeerMsg::Ack {
                bucket: bucket(&mut r)?,
                offset: r.u64("offset")?,
            },
            0x61 => PeerMsg::Mismatch {
                bucket: bucket(&mut r)?,
                offset: r.u64("offset")?,
                digest: digest(&mut r)?,
            },
            other => return Err(invalid(format!("unknown peer message tag {other:#04x}"))),
        };
        r.finish()?;
        Ok(Some(msg))
    }
}

fn invalid(message: String) -> DecodeError {
    DecodeError::Invalid(message)
}

fn flag(b: u8) -> Result<bool, DecodeError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(invalid(format!("flag byte is {other}, not 0 or 1"))),
    }
}

/// A replicated write's optional stamp: a flag byte, then session and sequence if set.
fn put_stamp(dst: &mut BytesMut, stamp: &Option<WriteStamp>) {
    match stamp {
        None => dst.put_u8(0),
        Some(s) => {
            dst.put_u8(1);
            dst.put_u64(s.session);
            dst.put_u64(s.seq);
        }
    }
}

fn stamp(r: &mut Reader) -> Result<Option<WriteStamp>, DecodeError> {
    Ok(match flag(r.u8("stamp flag")?)? {
        false => None,
        true => Some(WriteStamp {
            session: r.u64("session")?,
            seq: r.u64("sequence")?,
        }),
    })
}

fn bucket(r: &mut Reader) -> Result<BucketId, DecodeError> {
    let b = r.u8("bucket")?;
    BucketId::new(usize::from(b))
        .ok_or_else(|| invalid(format!("bucket {b} is not below {BUCKETS}")))
}

fn digest(r: &mut Reader) -> Result<Digest, DecodeError> {
    let hi = r.u64("digest")?;
    let lo = r.u64("digest")?;
    Ok(Digest((u128::from(hi) << 64) | u128::from(lo)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_replicated_remove_of_a_key_over_the_limit_is_invalid() {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        PeerMsg::Remove {
            offset: 1,
            key: Bytes::from(vec![b'k'; limits.max_key + 1]),
            stamp: None,
        }
        .encode(&mut buf);
        assert!(PeerMsg::decode(&mut buf, &limits).is_err());
    }

    #[test]
    fn the_chunk_writer_writes_the_bytes_of_split_entries_whatever_is_taken_meanwhile() {
        let entries: Vec<(Bytes, Bytes)> = (0..300usize)
            .map(|i| {
                let key = Bytes::from(format!("key-{i}"));
                let value = Bytes::from(vec![i as u8; (i * 37) % 700]);
                (key, value)
            })
            .collect();
        for budget in [1, 64, 500, 4096, 1 << 20] {
            let mut expected = BytesMut::new();
            for chunk in split_entries(entries.clone(), budget) {
                PeerMsg::BucketChunk(chunk).encode(&mut expected);
            }
            let mut writer = ChunkWriter::new(budget);
            let (mut buf, mut sent) = (BytesMut::new(), BytesMut::new());
            for (i, (k, v)) in entries.iter().enumerate() {
                writer.push(&mut buf, k, v);
                if i % 7 == 0 {
                    sent.extend_from_slice(&writer.take_sealed(&mut buf));
                }
            }
            writer.close(&mut buf);
            sent.extend_from_slice(&writer.take_sealed(&mut buf));
            assert!(buf.is_empty());
            assert_eq!(sent, expected, "budget {budget}");
            let mut decoded = Vec::new();
            while let Some(PeerMsg::BucketChunk(chunk)) =
                PeerMsg::decode(&mut sent, &Limits::default()).expect("valid frames")
            {
                decoded.extend(chunk);
            }
            assert_eq!(decoded, entries, "budget {budget}");
        }
    }

    fn any_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
    }

    fn any_stamp() -> impl Strategy<Value = Option<WriteStamp>> {
        proptest::option::of(
            (any::<u64>(), any::<u64>()).prop_map(|(session, seq)| WriteStamp { session, seq }),
        )
    }

    fn any_msg() -> impl Strategy<Value = PeerMsg> {
        let bucket = (0..BUCKETS).prop_map(|i| BucketId::new(i).expect("in range"));
        let digest = any::<u128>().prop_map(Digest);
        prop_oneof![
            (
                any::<bool>(),
                any::<u64>(),
                (any::<u64>(), any::<u64>()),
                any::<bool>(),
                any::<u64>(),
                any::<u128>()
            )
                .prop_map(|(primary, run_id, (pair, epoch), synced, keys, d)| {
                    PeerMsg::Hello(Box::new(PeerHello {
                        primary,
                        run_id,
                        pair,
                        epoch,
                        synced,
                        keys,
                        digests: std::array::from_fn(|i| Digest(d.wrapping_add(i as u128))),
                    }))
                }),
            bucket.clone().prop_map(PeerMsg::BucketBegin),
            proptest::collection::vec((any_bytes(), any_bytes()), 0..5)
                .prop_map(PeerMsg::BucketChunk),
            (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, count, digest)| {
                PeerMsg::BucketEnd {
                    bucket,
                    count,
                    digest,
                }
            }),
            Just(PeerMsg::TransferDone),
            (any::<bool>(), "[a-z ]{0,20}")
                .prop_map(|(ok, reason)| PeerMsg::TransferAck { ok, reason }),
            Just(PeerMsg::Synced),
            "[a-z ]{0,20}".prop_map(PeerMsg::Goodbye),
            (any::<u64>(), any_bytes(), any_bytes(), any_stamp()).prop_map(
                |(offset, key, value, stamp)| PeerMsg::Put {
                    offset,
                    key,
                    value,
                    stamp
                }
            ),
            (any::<u64>(), any_bytes(), any_stamp())
                .prop_map(|(offset, key, stamp)| PeerMsg::Remove { offset, key, stamp }),
            (
                any::<(u64, u64, u64, u64)>(),
                proptest::option::of(any_bytes())
            )
                .prop_map(|((session, seq, floor, idle_ms), removed)| {
                    PeerMsg::SessionAnswer(SessionAnswer {
                        stamp: WriteStamp { session, seq },
                        floor,
                        idle_ms,
                        removed,
                    })
                }),
            any::<u64>().prop_map(|ms_ago| PeerMsg::SessionsEvicted { ms_ago }),
            any::<u64>().prop_map(|ms_ago| PeerMsg::SessionsBorn { ms_ago }),
            (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, offset, digest)| {
                PeerMsg::Check {
                    bucket,
                    offset,
                    digest,
                }
            }),
            bucket.clone().prop_map(PeerMsg::ReplaceBegin),
            (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, offset, digest)| {
                PeerMsg::ReplaceEnd {
                    bucket,
                    offset,
                    digest,
                }
            }),
            (bucket.clone(), any::<u64>())
                .prop_map(|(bucket, offset)| PeerMsg::Ack { bucket, offset }),
            (bucket, any::<u64>(), digest).prop_map(|(bucket, offset, digest)| {
                PeerMsg::Mismatch {
                    bucket,
                    offset,
                    digest,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_and_prefixes_are_incomplete(msgs in proptest::collection::vec(any_msg(), 1..6)) {
            let limits = Limits::default();
            let mut buf = BytesMut::new();
            for m in &msgs {
                m.encode(&mut buf);
            }
            for cut in 0..buf.len().min(64) {
                let mut prefix = BytesMut::from(&buf[..cut]);
                let mut n = 0;
                while PeerMsg::decode(&mut prefix, &limits).expect("valid prefix").is_some() {
                    n += 1;
                }
                prop_assert!(n < msgs.len());
            }
            for m in &msgs {
                prop_assert_eq!(PeerMsg::decode(&mut buf, &limits).expect("valid"), Some(m.clone()));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = PeerMsg::decode(&mut buf, &Limits::default()) {}
        }
    }

    #[test]
    fn oversized_and_lying_frames_are_invalid_without_allocation() {
        let limits = Limits::new(16, 16);
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(PeerMsg::decode(&mut huge, &limits).is_err());
        // A chunk claiming a billion entries in a 9-byte frame.
        let mut lying = BytesMut::new();
        lying.put_u32(5);
        lying.put_u8(0x42);
        lying.put_u32(1_000_000_000);
        assert!(PeerMsg::decode(&mut lying, &limits).is_err());
        let mut big_put = BytesMut::new();
        PeerMsg::Put {
            offset: 1,
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; 17]),
            stamp: None,
        }
        .encode(&mut big_put);
        assert!(PeerMsg::decode(&mut big_put, &limits).is_err());
    }
}
