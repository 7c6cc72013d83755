//! The sending half of a client stream, shared by the stream's writer task and its callers: a
//! caller that finds the stream idle writes its own frame (no hand-off to the writer task, which
//! at depth 1 would cost a task wake per call); otherwise the writer task sends what callers
//! queued, one batch per wake-up. Who may use it is decided under the pipe's lock
//! (`PipeState::writing`), so frames leave in the order they were queued.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use quickv_net::READ_CHUNK_BYTES;

/// A stream's send half and the bytes waiting to go into it.
#[derive(Debug)]
pub(crate) struct SendSide {
    send: quinn::SendStream,
    /// Frames encoded and not yet handed to quinn.
    pub(crate) out: BytesMut,
    /// The part of the last batch quinn has not taken yet (flow control): it goes before
    /// anything else.
    carry: Bytes,
}

impl SendSide {
    pub(crate) fn new(send: quinn::SendStream) -> SendSide {
        SendSide {
            send,
            out: BytesMut::with_capacity(READ_CHUNK_BYTES),
            carry: Bytes::new(),
        }
    }

    /// Hands everything encoded to quinn: `Ready(Ok)` once it all went, `Pending` if flow control
    /// holds some of it back (kept, in order, for the next call; `cx`'s waker is woken when the
    /// stream can take more). The batch is handed over as a `Bytes` split off the buffer, not
    /// copied into quinn's send buffer.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), quinn::WriteError>> {
        loop {
            if self.carry.is_empty() {
                if self.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                self.carry = self.out.split().freeze();
                if self.out.capacity() < READ_CHUNK_BYTES / 4 {
                    self.out.reserve(READ_CHUNK_BYTES);
                }
            }
            let mut chunks = [std::mem::take(&mut self.carry)];
            // Cancel-safe (quinn: "if this does not resolve, no bytes were written"); what it
            // took is cut off the front of the chunk.
            let polled = pin!(self.send.write_chunks(&mut chunks)).poll(cx);
            let [rest] = chunks;
            self.carry = rest;
            match polled {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Ends the stream gracefully once everything written has been sent.
    pub(crate) fn finish(&mut self) {
        // Fails only if the stream is already finished or reset: nothing left to end then.
        let _ = self.send.finish();
    }
}
