//! [`PeerMsg::encode`]: a frame per message, its length prefix filled in last.

use bytes::{BufMut, BytesMut};

use super::{PeerMsg, RecordedAnswer};
use crate::codec::{put_bytes, wire_len};
use crate::{WriteStamp, LEN_PREFIX};

impl PeerMsg {
    /// The message's tag byte, the first byte after the length prefix.
    pub(super) fn tag(&self) -> u8 {
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
            PeerMsg::Applied(_) => 0x4B,
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
            PeerMsg::Applied(marks) => {
                for m in marks.iter() {
                    dst.put_u64(m.primary_run);
                    dst.put_u64(m.epoch);
                    dst.put_u64(m.offset);
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
                dst.put_u64(a.stamp.owner);
                dst.put_u64(a.floor);
                dst.put_u64(a.idle_ms);
                match &a.answer {
                    RecordedAnswer::Ok => dst.put_u8(0),
                    RecordedAnswer::RemovedNotKept => dst.put_u8(2),
                    RecordedAnswer::Removed(v) => {
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
}

/// A replicated write's optional stamp: a flag byte, then session, sequence and owner if set.
fn put_stamp(dst: &mut BytesMut, stamp: &Option<WriteStamp>) {
    match stamp {
        None => dst.put_u8(0),
        Some(s) => {
            dst.put_u8(1);
            dst.put_u64(s.session);
            dst.put_u64(s.seq);
            dst.put_u64(s.owner);
        }
    }
}
