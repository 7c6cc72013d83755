//! Framed QUIC streams: the reading and writing halves every quickv stream is made of.
//!
//! Both protocols (client ↔ server, primary ↔ backup) are length-prefixed frames pipelined on
//! long-lived streams, so every stream needs the same two pieces of plumbing, written once here:
//!
//! - [`FramedReader`] buffers what the stream delivers, [`READ_CHUNK_BYTES`] at a time, so that a
//!   sans-IO decoder from `quickv-proto` can take whole frames out of [`FramedReader::buffer`] —
//!   zero-copy, since decoded keys and values are slices of that buffer.
//! - [`BatchWriter`] encodes whatever is queued into one buffer and writes it with one call, so a
//!   burst of small frames costs one stream write rather than one each; a batch stops growing at
//!   [`READ_CHUNK_BYTES`], so a steady stream of work never delays the first frame for long.
//!
//! The client's lanes use both, and the server session's answer writer uses [`BatchWriter`]. The
//! session's request reader (`quickv::server::session::serve_stream`) and the peer link
//! (`quickv::replication::link`, `primary`) still carry their own copies of the same loops; they
//! are meant to move onto these types (issue 12, phase 2).

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

/// Bytes asked of a stream per read, and the size at which a write batch stops growing.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The reading half of a framed stream: the QUIC stream and the bytes read but not yet decoded.
#[derive(Debug)]
pub struct FramedReader {
    /// The QUIC stream.
    recv: quinn::RecvStream,
    /// Bytes read and not yet decoded; decoders consume frames from its front.
    buf: BytesMut,
}

impl FramedReader {
    /// Wraps a stream.
    pub fn new(recv: quinn::RecvStream) -> FramedReader {
        FramedReader {
            recv,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// The bytes read and not yet decoded, for a decoder to take frames from.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads more bytes into the buffer; `Ok(false)` at the end of the stream.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no bytes are lost.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES / 4 {
            self.buf.reserve(READ_CHUNK_BYTES);
        }
        Ok(self.recv.read_buf(&mut self.buf).await? > 0)
    }

    /// Asks the sender to stop sending (e.g. after an invalid frame), with an application code.
    pub fn stop(&mut self, code: quinn::VarInt) {
        // Fails only if the stream is already stopped or finished: nothing left to refuse then.
        let _ = self.recv.stop(code);
    }
}

/// The writing half of a framed stream: batches queued frames into single writes.
#[derive(Debug)]
pub struct BatchWriter {
    /// The QUIC stream.
    send: quinn::SendStream,
    /// The batch being built; cleared after each write.
    out: BytesMut,
}

impl BatchWriter {
    /// Wraps a stream.
    pub fn new(send: quinn::SendStream) -> BatchWriter {
        BatchWriter {
            send,
            out: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// Encodes `first`, then whatever `more` yields without waiting (e.g. `|| rx.try_recv().ok()`),
    /// until it yields nothing or the batch reaches [`READ_CHUNK_BYTES`]. `encode` appends an
    /// item's frames to the batch, or nothing if it decides the item is not to be sent.
    pub fn batch<T>(
        &mut self,
        first: T,
        mut more: impl FnMut() -> Option<T>,
        mut encode: impl FnMut(T, &mut BytesMut),
    ) {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            encode(item, &mut self.out);
            if self.out.len() < READ_CHUNK_BYTES {
                next = more();
            }
        }
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Writes the batch and starts a new one.
    pub async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        self.send.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Ends the stream gracefully once everything written has been sent.
    pub fn finish(&mut self) {
        // Fails only if the stream is already finished or reset: nothing left to end then.
        let _ = self.send.finish();
    }
}
