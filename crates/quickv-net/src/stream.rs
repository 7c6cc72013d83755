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
//! - [`Outbox`] is for a stream whose frames are produced by one task and written by another (the
//!   server session: the request reader knows most answers at once, the writer owns the stream):
//!   the producer encodes each frame straight into the outbox's buffer, and the writer takes the
//!   whole buffer per wake-up ([`BatchWriter::take_from`]) — no per-frame channel message, no
//!   second copy, one wake-up per burst.
//!
//! - [`ByteBudget`] caps the bytes an [`Outbox`] (or several: a stream's and its connection's)
//!   holds encoded but not yet written, so a peer that stops reading pins at most the cap plus one
//!   frame; the producer waits for [`ByteBudget::room`] before producing more.
//!
//! Every framed stream in the workspace is built from these: the client's streams, the server's
//! client sessions, and the peer link's control and data streams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

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

    /// Moves everything `pending` holds into the batch (when the batch is empty the buffers are
    /// swapped, so nothing is copied; the buffers are refilled by one allocation per ~48 KiB
    /// written, see [`BatchWriter::flush`]).
    pub fn take_from(&mut self, pending: &mut BytesMut) {
        if self.out.is_empty() {
            std::mem::swap(&mut self.out, pending);
        } else {
            self.out.extend_from_slice(pending);
            pending.clear();
        }
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Writes the batch and starts a new one. The batch's bytes are handed to quinn as they are
    /// (a `Bytes` split off the buffer), not copied into its send buffer; the next batch is built
    /// in the rest of the same allocation until less than a quarter of [`READ_CHUNK_BYTES`] is
    /// left, then in a fresh one (quinn frees the old one once the peer acknowledged it).
    ///
    /// Not cancel-safe: dropped before it completes, the batch is lost — every caller treats
    /// that as the end of the stream.
    pub async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        let batch = self.out.split().freeze();
        self.send.write_chunk(batch).await?;
        if self.out.capacity() < READ_CHUNK_BYTES / 4 {
            self.out.reserve(READ_CHUNK_BYTES);
        }
        Ok(())
    }

    /// Ends the stream gracefully once everything written has been sent.
    pub fn finish(&mut self) {
        // Fails only if the stream is already finished or reset: nothing left to end then.
        let _ = self.send.finish();
    }

    /// Waits until the peer has acknowledged everything written and the end of the stream (after
    /// [`BatchWriter::finish`]), or stopped the stream, or the connection is gone: closing the
    /// connection before that could lose the last frames.
    pub async fn delivered(&mut self) {
        let _ = self.send.stopped().await;
    }
}

/// A cap on bytes encoded but not yet written, shared by the [`Outbox`]es it covers (e.g. one per
/// stream and one per connection). Bytes are charged when a frame is pushed and released once the
/// writer has handed them to the stream; producers check [`ByteBudget::is_full`] *before*
/// producing, so the bytes held never exceed the cap by more than one frame per producer.
#[derive(Debug)]
pub struct ByteBudget {
    /// Bytes charged and not yet released.
    queued: AtomicUsize,
    /// The cap, in bytes.
    cap: usize,
    /// Wakes producers waiting for room.
    drained: Notify,
}

impl ByteBudget {
    /// A budget of `cap` bytes, nothing queued.
    pub fn new(cap: usize) -> ByteBudget {
        ByteBudget {
            queued: AtomicUsize::new(0),
            cap,
            drained: Notify::new(),
        }
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// True when the queued bytes have reached the cap: produce nothing more until there is room.
    pub fn is_full(&self) -> bool {
        self.queued() >= self.cap
    }

    /// Waits until the queued bytes are under the cap.
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a release between the check and the wait wakes us.
            drained.as_mut().enable();
            if !self.is_full() {
                return;
            }
            drained.await;
        }
    }

    fn charge(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.queued.fetch_sub(bytes, Ordering::AcqRel);
        if before.saturating_sub(bytes) < self.cap {
            self.drained.notify_waiters();
        }
    }
}

/// Frames encoded by one task for another task's [`BatchWriter`] to write: a shared buffer plus a
/// wake-up, with a count of what the frames settle (e.g. requests answered, to return credit).
#[derive(Debug, Default)]
pub struct Outbox {
    /// The frames not yet taken by the writer, and what they settle.
    pending: Mutex<OutboxState>,
    /// Wakes the writer when the buffer goes from empty to not empty, or on close.
    ready: Notify,
    /// The byte caps this outbox's unwritten frames count against (none: unbounded, for a
    /// producer bounded otherwise, e.g. by the peer link's window).
    budgets: Vec<Arc<ByteBudget>>,
}

/// The shared part of an [`Outbox`].
#[derive(Debug, Default)]
struct OutboxState {
    /// Encoded frames, in the order they were pushed.
    frames: BytesMut,
    /// How many settling frames `frames` holds.
    settles: usize,
    /// No more frames will come: the writer ends once it has written what is left.
    closed: bool,
    /// Bytes the writer has taken and not yet reported written ([`Outbox::written`]).
    unwritten: usize,
    /// The writer is gone: every push is dropped (nobody will write it).
    abandoned: bool,
}

/// What a writer took from an [`Outbox`] in one go.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Frames are in the writer's batch; this many of them settle something.
    Frames(usize),
    /// Nothing pending and the producer closed the outbox: finish the stream.
    Closed,
}

impl Outbox {
    /// An empty, open outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// An empty, open outbox whose unwritten bytes count against `budgets`.
    pub fn with_budgets(budgets: Vec<Arc<ByteBudget>>) -> Outbox {
        Outbox {
            budgets,
            ..Outbox::default()
        }
    }

    /// True when any of this outbox's budgets is full: produce nothing more for now.
    pub fn is_full(&self) -> bool {
        self.budgets.iter().any(|b| b.is_full())
    }

    /// Waits until every budget of this outbox has room.
    pub async fn room(&self) {
        for budget in &self.budgets {
            budget.room().await;
        }
    }

    /// The writer has handed everything it took to the stream: releases those bytes.
    pub fn written(&self) {
        let bytes = std::mem::take(&mut self.lock().unwritten);
        self.release(bytes);
    }

    /// The writer is gone (the peer stopped reading, the connection died): drops what is pending,
    /// releases its bytes, and refuses further [`Outbox::try_push`]es.
    pub fn abandon(&self) {
        let bytes = {
            let mut state = self.lock();
            state.closed = true;
            state.abandoned = true;
            let bytes = state.frames.len() + state.unwritten;
            state.frames = BytesMut::new();
            state.unwritten = 0;
            state.settles = 0;
            bytes
        };
        self.release(bytes);
        self.ready.notify_one();
    }

    fn release(&self, bytes: usize) {
        for budget in &self.budgets {
            budget.release(bytes);
        }
    }

    /// Encodes one frame (`encode` appends it) and wakes the writer if it may be asleep.
    /// `settles` says whether the frame counts in [`Taken::Frames`].
    pub fn push(&self, settles: bool, encode: impl FnOnce(&mut BytesMut)) {
        self.append(settles, encode, false);
    }

    /// [`Outbox::push`] unless the outbox is closed (its writer is gone): then nothing is
    /// encoded and the answer is false.
    pub fn try_push(&self, settles: bool, encode: impl FnOnce(&mut BytesMut)) -> bool {
        self.append(settles, encode, true)
    }

    /// Appends one frame and wakes the writer if the outbox was empty; with `unless_closed`,
    /// appends nothing to a closed outbox and answers false.
    fn append(
        &self,
        settles: bool,
        encode: impl FnOnce(&mut BytesMut),
        unless_closed: bool,
    ) -> bool {
        let mut state = self.lock();
        if (unless_closed && state.closed) || state.abandoned {
            return false;
        }
        let was_empty = state.frames.is_empty();
        let before = state.frames.len();
        encode(&mut state.frames);
        state.settles += usize::from(settles);
        let added = state.frames.len() - before;
        for budget in &self.budgets {
            budget.charge(added);
        }
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Hands over a batch of frames the producer encoded into its own buffer (e.g. every answer
    /// of one wake-up): one lock, one charge per budget and at most one wake-up for the whole
    /// batch instead of one per frame. `settles` frames of it count in [`Taken::Frames`].
    /// `frames` is left empty (when the outbox held nothing the buffers are swapped, so neither
    /// side allocates in steady state). Dropped, like [`Outbox::push`], once abandoned.
    pub fn push_batch(&self, frames: &mut BytesMut, settles: usize) {
        if frames.is_empty() && settles == 0 {
            return;
        }
        let added = frames.len();
        let mut state = self.lock();
        if state.abandoned {
            frames.clear();
            return;
        }
        let was_empty = state.frames.is_empty();
        if was_empty {
            std::mem::swap(&mut state.frames, frames);
        } else {
            state.frames.extend_from_slice(frames);
        }
        frames.clear();
        state.settles += settles;
        for budget in &self.budgets {
            budget.charge(added);
        }
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// True when any budget would be full with `extra` more bytes charged: a producer that
    /// encodes a batch of its own before [`Outbox::push_batch`] checks this before each frame.
    pub fn is_full_with(&self, extra: usize) -> bool {
        self.budgets.iter().any(|b| b.queued() + extra >= b.cap)
    }

    /// No more frames: the writer writes what is pending, then sees [`Taken::Closed`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits until there is something to write, hands it to `sink` (which must take the bytes out
    /// of the buffer it is given, e.g. `|frames| writer.take_from(frames)`), or returns
    /// [`Taken::Closed`] once the outbox is closed and drained.
    pub async fn take(&self, mut sink: impl FnMut(&mut BytesMut)) -> Taken {
        loop {
            // A push between this check and the wait below leaves a stored permit in `ready`,
            // so the wait returns at once: no wake-up is lost.
            {
                let mut state = self.lock();
                if !state.frames.is_empty() {
                    state.unwritten += state.frames.len();
                    sink(&mut state.frames);
                    state.frames.clear();
                    return Taken::Frames(std::mem::take(&mut state.settles));
                }
                if state.closed {
                    return Taken::Closed;
                }
            }
            self.ready.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        // The state is a buffer and two counters, consistent after every statement: a panic
        // elsewhere while it was held leaves nothing half-done, so the poison can be ignored.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{BufMut, BytesMut};

    use super::{ByteBudget, Outbox, Taken};

    /// Takes once into a fresh buffer; returns what was taken and the bytes.
    async fn take(outbox: &Outbox) -> (Taken, Vec<u8>) {
        let mut got = Vec::new();
        let taken = outbox
            .take(|frames: &mut BytesMut| got.extend_from_slice(frames))
            .await;
        (taken, got)
    }

    #[tokio::test]
    async fn frames_come_out_in_push_order_with_what_they_settle() {
        let outbox = Outbox::new();
        outbox.push(true, |out| out.put_slice(b"one "));
        outbox.push(false, |out| out.put_slice(b"chunk "));
        outbox.push(true, |out| out.put_slice(b"two"));
        assert_eq!(
            take(&outbox).await,
            (Taken::Frames(2), b"one chunk two".to_vec())
        );
        outbox.push(true, |out| out.put_slice(b"three"));
        assert_eq!(take(&outbox).await, (Taken::Frames(1), b"three".to_vec()));
    }

    #[tokio::test]
    async fn budgets_count_bytes_until_written_and_wake_producers() {
        let stream = Arc::new(ByteBudget::new(4));
        let conn = Arc::new(ByteBudget::new(100));
        let outbox = Outbox::with_budgets(vec![stream.clone(), conn.clone()]);
        outbox.push(true, |out| out.put_slice(b"abc"));
        assert!(!outbox.is_full());
        outbox.push(true, |out| out.put_slice(b"de"));
        assert!(outbox.is_full(), "5 bytes of a 4-byte budget");
        assert_eq!(conn.queued(), 5);
        // Taken by the writer but not yet written: still counted.
        assert_eq!(take(&outbox).await.0, Taken::Frames(2));
        assert!(outbox.is_full());
        let room = outbox.room();
        tokio::pin!(room);
        assert!(futures_poll(room.as_mut()).is_pending());
        outbox.written();
        assert!(futures_poll(room.as_mut()).is_ready());
        assert_eq!((stream.queued(), conn.queued()), (0, 0));
        // Abandoned: pending bytes released, further pushes dropped.
        outbox.push(false, |out| out.put_slice(b"xyz"));
        outbox.abandon();
        outbox.push(false, |out| out.put_slice(b"more"));
        assert_eq!((stream.queued(), conn.queued()), (0, 0));
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future>(
        f: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }

    #[tokio::test]
    async fn a_batch_is_one_push_charged_once_and_dropped_once_abandoned() {
        let budget = Arc::new(ByteBudget::new(100));
        let outbox = Outbox::with_budgets(vec![budget.clone()]);
        let mut batch = BytesMut::new();
        batch.put_slice(b"one two");
        assert!(!outbox.is_full_with(batch.len()));
        assert!(
            !outbox.is_full_with(99),
            "nothing is charged before the push"
        );
        assert!(
            outbox.is_full_with(100),
            "100 uncharged bytes reach the 100-byte cap"
        );
        outbox.push_batch(&mut batch, 2);
        assert!(batch.is_empty(), "the batch is handed over whole");
        assert_eq!(budget.queued(), 7);
        outbox.push(true, |out| out.put_slice(b" three"));
        batch.put_slice(b" four");
        outbox.push_batch(&mut batch, 1);
        assert_eq!(
            take(&outbox).await,
            (Taken::Frames(4), b"one two three four".to_vec())
        );
        outbox.written();
        assert_eq!(budget.queued(), 0);
        outbox.abandon();
        batch.put_slice(b"late");
        outbox.push_batch(&mut batch, 1);
        assert!(batch.is_empty());
        assert_eq!(budget.queued(), 0, "nothing is charged once abandoned");
    }

    #[tokio::test]
    async fn try_push_refuses_once_closed() {
        let outbox = Outbox::new();
        assert!(outbox.try_push(false, |out| out.put_slice(b"a")));
        outbox.close();
        assert!(!outbox.try_push(false, |out| out.put_slice(b"b")));
        assert_eq!(take(&outbox).await, (Taken::Frames(0), b"a".to_vec()));
        assert_eq!(take(&outbox).await, (Taken::Closed, Vec::new()));
    }

    #[tokio::test]
    async fn close_delivers_what_is_pending_before_reporting_closed() {
        let outbox = Outbox::new();
        outbox.push(true, |out| out.put_slice(b"last"));
        outbox.close();
        assert_eq!(take(&outbox).await, (Taken::Frames(1), b"last".to_vec()));
        assert_eq!(take(&outbox).await, (Taken::Closed, Vec::new()));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push_and_on_close() {
        let outbox = Arc::new(Outbox::new());
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let (taken, bytes) = take(&outbox).await;
                    seen.extend(bytes);
                    if taken == Taken::Closed {
                        return seen;
                    }
                }
            })
        };
        // Let the writer reach its wait first, so the pushes below must wake it.
        tokio::task::yield_now().await;
        for i in 0..100u8 {
            outbox.push(true, |out| out.put_u8(i));
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        outbox.close();
        // A lost wake-up would hang here; the bound turns that into a failure.
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .expect("the writer was not woken")
            .expect("the writer panicked");
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
    }
}
