//! One long-lived stream of a client connection ("pipe"): the queue its callers fill, and its
//! writer, reader and deadline-sweeper tasks, which pipeline requests and hand answers back by
//! request id through the stream's slab of pending calls (`owed.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::time::Instant;

use quickv_net::{tls, BatchWriter, FramedReader};

use crate::error::{unexpected, ClientError};
use crate::owed::{Deadline, Outcome, Owed};
use quickv_proto::{
    decode_response, encode_request, Limits, Op, Reply, Request, SessionWrite, WriteStamp,
};

/// Calls queued per pipe before callers wait (backpressure).
pub(crate) const PIPE_QUEUE: usize = 1024;

/// One long-lived stream of a session: what its callers, writer, reader and deadline sweeper
/// share. Dropping it (with its connection) lets the writer finish the stream.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) shared: Arc<PipeShared>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.ready.notify_one();
    }
}

/// What a stream's callers, writer, reader and deadline sweeper share.
#[derive(Debug)]
pub(crate) struct PipeShared {
    /// The calls in flight and the requests waiting to be written, under one lock: a caller
    /// takes it once to register and queue its call.
    pub(crate) state: Mutex<PipeState>,
    /// Wakes the writer: the queue went from empty to not empty, the pipe closed or died.
    pub(crate) ready: Notify,
    /// Wakes callers waiting for room in a full queue (backpressure), or for the pipe's death.
    pub(crate) room: Notify,
    /// Wakes the sweeper: a call came with an earlier deadline than it sleeps until, or the
    /// stream died.
    pub(crate) sweep: Notify,
}

/// The locked part of a [`PipeShared`].
#[derive(Debug)]
pub(crate) struct PipeState {
    /// The calls queued or written and not yet answered, by request id.
    pub(crate) owed: Owed,
    /// Requests waiting for the writer, in call order (at most [`PIPE_QUEUE`]).
    pub(crate) queue: Vec<QueuedCall>,
    /// Set when the connection let go of the pipe: the writer finishes the stream once the queue
    /// is written.
    pub(crate) closed: bool,
}

impl PipeShared {
    /// Fails every call in flight or queued, and stops the writer and the sweeper.
    pub(crate) fn fail_all(&self, err: ClientError) {
        let mut wake = Vec::new();
        if let Ok(mut state) = self.state.lock() {
            state.owed.fail_all(err, &mut wake);
            state.queue.clear();
        }
        wake.into_iter().for_each(Waker::wake);
        self.ready.notify_one();
        self.room.notify_waiters();
        self.sweep.notify_one();
    }

    /// Registers and queues a call if there is room; gives it back if the queue is full or the
    /// pipe is gone. With `waker` (the caller's, put in the call's slot) the `Pending` is primed: see
    /// its `primed` field.
    pub(crate) fn try_queue(
        self: &Arc<Self>,
        call: Call,
        due: Option<Deadline>,
        waker: Option<Waker>,
    ) -> Queued {
        let Ok(mut state) = self.state.lock() else {
            return Queued::Gone(call);
        };
        if state.closed {
            return Queued::Gone(call);
        }
        if state.queue.len() >= PIPE_QUEUE && state.owed.broken.is_none() {
            return Queued::Full(call);
        }
        let primed = waker.is_some();
        let Some((id, wake_sweeper)) = state.owed.register(call.op.is_write(), due, waker) else {
            return Queued::Gone(call);
        };
        let wake_writer = state.queue.is_empty();
        state.queue.push(QueuedCall { id, call });
        drop(state);
        if wake_writer {
            self.ready.notify_one();
        }
        if wake_sweeper {
            self.sweep.notify_one();
        }
        Queued::Yes(Pending {
            slot: Some((self.clone(), id)),
            settled: None,
            primed,
        })
    }
}

/// A request to be written.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) op: Op,
    /// The write's session stamp, if it carries one, and when a retried write was first sent
    /// (`None` on a first attempt): its age is taken when the frame is written, so time spent
    /// waiting for a connection counts (the server must never think a retry younger than it is).
    pub(crate) session: Option<(WriteStamp, Option<Instant>)>,
}

/// A call in a pipe's queue: its slot's request id and the request.
#[derive(Debug)]
pub(crate) struct QueuedCall {
    pub(crate) id: u64,
    pub(crate) call: Call,
}

/// What [`PipeShared::try_queue`] did.
pub(crate) enum Queued {
    /// The call is in flight.
    Yes(Pending),
    /// The queue is full: the call, to wait for room on this same pipe.
    Full(Call),
    /// The pipe is gone: the call can go to a new connection.
    Gone(Call),
}

/// What waiting to queue a call did: the call in flight, or why not.
pub(crate) type Sent = Result<Pending, Unsent>;

/// Why a call was not queued.
pub(crate) enum Unsent {
    /// The pipe is gone: the call can go to a new connection.
    Gone(Call),
    /// The deadline passed while waiting for room in the pipe's queue.
    Late,
}

/// Awaits `work`, giving up (`None`) at the deadline. Used only where a call may wait (for a
/// connection, for room in a queue); the answer itself is bounded by the pipe's sweeper.
pub(crate) async fn within<F: std::future::Future>(
    due: Option<Deadline>,
    work: F,
) -> Option<F::Output> {
    match due {
        None => Some(work.await),
        Some(d) => tokio::time::timeout_at(d.at, work).await.ok(),
    }
}

/// A call that was queued, as a future of its outcome: polling it looks in the call's slot of
/// the pipe's slab (`owed.rs`), where the pipe's reader leaves the answer and wakes the caller —
/// no channel per call. Dropping it before the outcome came cancels the call.
pub(crate) struct Pending {
    /// The pipe and request id whose slot holds the outcome; `None` once it was taken, or for a
    /// call settled without being queued.
    slot: Option<(Arc<PipeShared>, u64)>,
    /// The outcome of a call that was never queued (its deadline passed while it waited).
    settled: Option<Outcome>,
    /// The call was queued with its caller's waker already in its slot ([`PipeShared::try_queue`]
    /// given a waker). Such a `Pending` must be polled first by the task whose waker that is, in
    /// the same poll in which it was queued (as `Client::call` does: it takes the waker, queues,
    /// and awaits at once): its first poll returns `Pending` without taking the lock, because no
    /// wake-up can have been missed — an answer that came meanwhile woke that very task already.
    primed: bool,
}

impl Pending {
    /// A call settled without being queued.
    pub(crate) fn settled(outcome: Outcome) -> Pending {
        Pending {
            slot: None,
            settled: Some(outcome),
            primed: false,
        }
    }
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(outcome) = self.settled.take() {
            return Poll::Ready(outcome);
        }
        if std::mem::take(&mut self.primed) {
            return Poll::Pending;
        }
        let Some((pipe, id)) = self.slot.as_ref() else {
            return Poll::Ready(Err(ClientError::Protocol("answer awaited twice".into())));
        };
        let polled = match pipe.state.lock() {
            Ok(mut state) => state.owed.poll_outcome(*id, cx.waker()),
            Err(_) => Poll::Ready(Err(ClientError::Protocol("pipe state poisoned".into()))),
        };
        if polled.is_ready() {
            self.slot = None;
        }
        polled
    }
}

impl Drop for Pending {
    /// A caller that stops waiting (future dropped) cancels its call: a call not written yet is
    /// freed (the writer skips it); a call already written keeps only a tombstone so its late
    /// answer is recognised and discarded.
    fn drop(&mut self) {
        if let Some((pipe, id)) = self.slot.take() {
            if let Ok(mut state) = pipe.state.lock() {
                state.owed.cancel(id);
            }
        }
    }
}

/// Opens stream number `index` and starts its writer, reader and deadline sweeper tasks.
pub(crate) async fn open_pipe(
    conn: &quinn::Connection,
    limits: Limits,
    index: u16,
) -> Result<Pipe, ClientError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
    let shared = Arc::new(PipeShared {
        state: Mutex::new(PipeState {
            owed: Owed::new(index),
            queue: Vec::new(),
            closed: false,
        }),
        ready: Notify::new(),
        room: Notify::new(),
        sweep: Notify::new(),
    });
    tokio::spawn(write_pipe(send, shared.clone(), conn.clone()));
    tokio::spawn(read_pipe(recv, shared.clone(), limits, conn.clone()));
    tokio::spawn(sweep_pipe(shared.clone()));
    Ok(Pipe { shared })
}

/// Writes queued calls in batches: takes the whole queue per wake-up, marks each call written
/// (skipping those whose callers stopped waiting), encodes and writes them.
pub(crate) async fn write_pipe(
    send: quinn::SendStream,
    shared: Arc<PipeShared>,
    conn: quinn::Connection,
) {
    let mut writer = BatchWriter::new(send);
    let mut taken: Vec<QueuedCall> = Vec::new();
    loop {
        let (was_full, closed) = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            if state.owed.broken.is_some() {
                // Every queued call was failed with the pipe; later calls see it broken and go
                // to a new connection.
                return;
            }
            std::mem::swap(&mut state.queue, &mut taken);
            let was_full = taken.len() >= PIPE_QUEUE;
            let owed = &mut state.owed;
            taken.retain(|q| owed.writing(q.id));
            (was_full, state.closed)
        };
        if was_full {
            shared.room.notify_waiters();
        }
        if taken.is_empty() {
            if closed {
                writer.finish();
                return;
            }
            shared.ready.notified().await;
            continue;
        }
        let mut items = taken.drain(..);
        while let Some(first) = items.next() {
            writer.batch(first, || items.next(), encode_queued);
            if let Err(e) = writer.flush().await {
                let err = match conn.close_reason() {
                    Some(reason) => ClientError::Connection(tls::explain_connection_error(&reason)),
                    None => ClientError::Connection(format!("cannot send: {e}")),
                };
                drop(items);
                shared.fail_all(err);
                return;
            }
        }
    }
}

/// Encodes one queued request; a retried write's age is taken now, as it is written.
fn encode_queued(QueuedCall { id, call }: QueuedCall, out: &mut BytesMut) {
    let request = Request {
        id,
        op: call.op,
        session: call.session.map(|(stamp, since)| SessionWrite {
            stamp,
            age_ms: since.map_or(0, |t| {
                u32::try_from(t.elapsed().as_millis()).unwrap_or(u32::MAX)
            }),
        }),
    };
    encode_request(&request, out);
}

/// Reads answers and hands each to its caller.
pub(crate) async fn read_pipe(
    recv: quinn::RecvStream,
    shared: Arc<PipeShared>,
    limits: Limits,
    conn: quinn::Connection,
) {
    let mut reader = FramedReader::new(recv);
    // The callers answered by one read, woken together once the slab's lock is released.
    let mut wake = Vec::new();
    let err = loop {
        match reader.fill().await {
            Ok(false) => {
                break ClientError::Connection(
                    "the server ended the stream (it may be shutting down)".into(),
                )
            }
            Ok(true) => {}
            Err(e) => {
                break match conn.close_reason() {
                    Some(reason) => ClientError::Connection(tls::explain_connection_error(&reason)),
                    None => ClientError::Connection(format!("connection lost: {e}")),
                }
            }
        }
        let decoded = deliver(reader.buffer(), &shared.state, &limits, &mut wake);
        wake.drain(..).for_each(Waker::wake);
        if let Err(e) = decoded {
            break e;
        }
    };
    shared.fail_all(err);
}

/// Completes the calls of a pipe that are past their deadline: sleeps until the earliest
/// deadline in flight (one timer per pipe, not one per call), and ends when the pipe dies.
pub(crate) async fn sweep_pipe(shared: Arc<PipeShared>) {
    let mut wake = Vec::new();
    loop {
        let next = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            if state.owed.broken.is_some() {
                return;
            }
            state.owed.expire(Instant::now(), &mut wake)
        };
        wake.drain(..).for_each(Waker::wake);
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.sweep.notified() => {}
                }
            }
            None => shared.sweep.notified().await,
        }
    }
}

/// Decodes every complete answer in `inbuf` and settles its call, pushing the callers to wake
/// onto `wake` (the caller of this wakes them, after the lock is released).
pub(crate) fn deliver(
    inbuf: &mut BytesMut,
    state: &Mutex<PipeState>,
    limits: &Limits,
    wake: &mut Vec<Waker>,
) -> Result<(), ClientError> {
    let Ok(mut state) = state.lock() else {
        return Err(ClientError::Protocol("pipe state poisoned".into()));
    };
    let owed = &mut state.owed;
    loop {
        let resp = match decode_response(inbuf, limits) {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(()),
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        if resp.id == 0 {
            // A stream-level complaint from the server (our bytes were unreadable).
            return Err(match resp.reply {
                Reply::Error { code, message } => ClientError::Server { code, message },
                other => unexpected(other),
            });
        }
        match resp.reply {
            Reply::DumpChunk {
                entries,
                last: false,
            } => owed.gather(resp.id, entries)?,
            reply => wake.extend(owed.complete(resp.id, reply)?),
        }
    }
}
