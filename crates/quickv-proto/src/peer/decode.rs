//! [`PeerMsg::decode`]: the frame (incomplete, or over the limit before anything is allocated),
//! then one function per message with a body. Every error is [`DecodeError::Invalid`].

use bytes::{Buf, BytesMut};

use super::{LaneMark, PeerHello, PeerMsg, RecordedAnswer, SessionAnswer};
use crate::codec::Reader;
use crate::{BucketId, DecodeError, Digest, Limits, WriteStamp, BUCKETS, LEN_PREFIX};

/// Smallest encoding of one snapshot entry: two empty byte strings.
const MIN_ENTRY_BYTES: usize = 8;

impl PeerMsg {
    /// Decodes one frame from `src`: `Ok(None)` if incomplete (nothing consumed). Any error is
    /// [`DecodeError::Invalid`]: a peer that breaks the protocol loses the link, never the process.
    pub fn decode(src: &mut BytesMut, limits: &Limits) -> Result<Option<PeerMsg>, DecodeError> {
        let Some(len) = frame_len(src, limits)? else {
            return Ok(None);
        };
        src.advance(LEN_PREFIX);
        let mut r = Reader::new(src.split_to(len).freeze());
        let msg = match r.u8("tag")? {
            0x40 => hello(&mut r)?,
            0x41 => PeerMsg::BucketBegin(bucket(&mut r)?),
            0x42 => bucket_chunk(&mut r, limits)?,
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
            0x48 => session_answer(&mut r, limits)?,
            0x49 => PeerMsg::SessionsEvicted {
                ms_ago: r.u64("eviction age")?,
            },
            0x4A => PeerMsg::SessionsBorn {
                ms_ago: r.u64("table age")?,
            },
            0x4B => {
                let mut marks = Box::new([LaneMark::default(); BUCKETS]);
                for m in marks.iter_mut() {
                    *m = LaneMark {
                        primary_run: r.u64("primary run id")?,
                        epoch: r.u64("link epoch")?,
                        offset: r.u64("offset")?,
                    };
                }
                PeerMsg::Applied(marks)
            }
            0x51 => put(&mut r, limits)?,
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

/// The length of the frame at the front of `src` once it is all there (`None` before), checked
/// against `limits` from its first four bytes.
fn frame_len(src: &BytesMut, limits: &Limits) -> Result<Option<usize>, DecodeError> {
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
    Ok(Some(len))
}

/// `0x40`: [`PeerMsg::Hello`].
fn hello(r: &mut Reader) -> Result<PeerMsg, DecodeError> {
    let primary = flag(r.u8("role")?)?;
    let run_id = r.u64("run id")?;
    let pair = r.u64("pair")?;
    let epoch = r.u64("epoch")?;
    let synced = flag(r.u8("synced")?)?;
    let keys = r.u64("keys")?;
    let mut digests = [Digest::default(); BUCKETS];
    for d in digests.iter_mut() {
        *d = digest(r)?;
    }
    Ok(PeerMsg::Hello(Box::new(PeerHello {
        primary,
        run_id,
        pair,
        epoch,
        synced,
        keys,
        digests,
    })))
}

/// `0x42`: [`PeerMsg::BucketChunk`]; the entry count is checked against the bytes present before
/// anything is allocated.
fn bucket_chunk(r: &mut Reader, limits: &Limits) -> Result<PeerMsg, DecodeError> {
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
    Ok(PeerMsg::BucketChunk(entries))
}

/// `0x48`: [`PeerMsg::SessionAnswer`].
fn session_answer(r: &mut Reader, limits: &Limits) -> Result<PeerMsg, DecodeError> {
    let stamp = WriteStamp {
        session: r.u64("session")?,
        seq: r.u64("sequence")?,
        owner: r.u64("owner")?,
    };
    let floor = r.u64("floor")?;
    let idle_ms = r.u64("idle")?;
    let answer = match r.u8("answer kind")? {
        0 => RecordedAnswer::Ok,
        1 => {
            let v = r.bytes("removed value")?;
            if v.len() > limits.max_value {
                return Err(invalid("session answer over the size limits".into()));
            }
            RecordedAnswer::Removed(v)
        }
        2 => RecordedAnswer::RemovedNotKept,
        other => {
            return Err(invalid(format!(
                "session answer kind is {other}, not 0, 1 or 2"
            )))
        }
    };
    Ok(PeerMsg::SessionAnswer(SessionAnswer {
        stamp,
        floor,
        idle_ms,
        answer,
    }))
}

/// `0x51`: [`PeerMsg::Put`].
fn put(r: &mut Reader, limits: &Limits) -> Result<PeerMsg, DecodeError> {
    let offset = r.u64("offset")?;
    let stamp = stamp(r)?;
    let key = r.bytes("key")?;
    let value = r.bytes("value")?;
    if key.len() > limits.max_key || value.len() > limits.max_value {
        return Err(invalid("replicated write over the size limits".into()));
    }
    Ok(PeerMsg::Put {
        offset,
        key,
        value,
        stamp,
    })
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

fn stamp(r: &mut Reader) -> Result<Option<WriteStamp>, DecodeError> {
    Ok(match flag(r.u8("stamp flag")?)? {
        false => None,
        true => Some(WriteStamp {
            session: r.u64("session")?,
            seq: r.u64("sequence")?,
            owner: r.u64("owner")?,
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
