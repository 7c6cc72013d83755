//! The entry chunker: cuts a bucket's entries into `BucketChunk` frames, written once for the
//! senders that collect entries first ([`split_entries`]) and those that stream them
//! ([`ChunkWriter`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::PeerMsg;
use crate::codec::{encoded_len_entry, put_bytes, wire_len};
use crate::LEN_PREFIX;

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
