//! One client connection: accept its bidirectional streams and serve each as a pipeline.
//!
//! Each stream gets a reader (decode → route → answer) and a writer (batch answers → send). They
//! are split so that a client which writes a lot before reading cannot deadlock us. What a stream
//! owes is bounded twice: in answers (`max_inflight_per_stream` credits, returned as they are
//! written) and in bytes (a [`ByteBudget`] per stream and one per connection, charged as answers
//! are encoded and released as they are written): when a client stops reading, we stop reading
//! it. Both halves are the workspace's one network layer (`quickv_net`): the reader is a
//! `FramedReader`, and answers are encoded straight into the stream's `Outbox`, which the writer
//! empties into its `BatchWriter` once per wake-up.
//!
//! A connection owns its stream tasks, and a stream owns its writer and its dumps: when the server
//! stops, the connection waits for its streams to deliver what they owe, then closes with
//! [`CLOSE_SHUTDOWN`] and the reason [`SHUTDOWN_REASON`] (docs/protocol.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quickv_net::{BatchWriter, ByteBudget, FramedReader, Outbox, Taken};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info_span, warn, Instrument};

use crate::pki::Access;
use crate::server::auth;
use crate::server::metrics::{OpKind, Outcome};
use crate::server::node::{Node, Stats};
use crate::server::router::{self, Handled};
use quickv_core::lanes::ReadNow;
use quickv_core::reply::{ReplyTo, StreamAnswers, Ticket};
use quickv_core::store::BucketId;
use quickv_proto::{
    decode_request, encode_response, encode_value_response, DecodeError, Op, Reply, Request,
    Response, WriteStamp, DUMP_CHUNK_HEADER,
};

/// Target size of one dump chunk frame, in bytes (a single larger entry gets a chunk of its own).
const DUMP_CHUNK_BYTES: usize = 1024 * 1024;
/// Application close code sent when the server shuts down.
pub const CLOSE_SHUTDOWN: u32 = 1;
/// The reason text that goes with [`CLOSE_SHUTDOWN`].
pub const SHUTDOWN_REASON: &str = "the server is shutting down";
/// Application error code of the `STOP_SENDING` a server sends on a broken stream: a frame it
/// cannot delimit (`len` out of bounds, a field overrunning its frame, bytes left over) or a frame
/// left unfinished for longer than the frame timeout.
pub const STREAM_BAD_FRAME: u32 = 2;

/// Serves one client connection until it closes or the server stops.
/// Every request is authorized against `access`, the role of the client's certificate.
pub async fn serve_connection(node: Arc<Node>, conn: quinn::Connection, access: Access) {
    let span = info_span!("conn", remote = %conn.remote_address(), id = conn.stable_id());
    async move {
        debug!("client connected");
        let shared = Arc::new(ConnShared {
            owner: crate::tls::peer_certificates(&conn)
                .first()
                .map_or(0, |cert| WriteStamp::owner_of(cert.as_ref())),
            budget: Arc::new(ByteBudget::new(node.config.max_queued_bytes_per_connection)),
            dump_turn: Arc::new(Semaphore::new(1)),
        });
        // The connection owns its streams: dropping this set (the connection task ends or is
        // cancelled) ends them.
        let mut streams = JoinSet::new();
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                Some(_) = streams.join_next(), if !streams.is_empty() => continue,
                _ = node.shutdown.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let node = node.clone();
                    let shared = shared.clone();
                    let sid = send.id();
                    Stats::bump(&node.stats.streams_total);
                    streams.spawn(
                        async move {
                            let _open = Stats::open(&node.stats.streams);
                            serve_stream(node.clone(), send, recv, access, shared).await;
                        }
                        .instrument(info_span!("stream", id = %sid)),
                    );
                }
                Err(e) => {
                    debug!(reason = %e, "client connection ended");
                    break;
                }
            }
        }
        // Every stream delivers what it owes (each watches the shutdown itself; the server's
        // drain timeout bounds this), then the client hears why the connection ends.
        while streams.join_next().await.is_some() {}
        if node.shutdown.is_cancelled() {
            conn.close(CLOSE_SHUTDOWN.into(), SHUTDOWN_REASON.as_bytes());
        }
    }
    .instrument(span)
    .await
}

/// What the streams of one connection share.
#[derive(Debug)]
struct ConnShared {
    /// The client identity its stamped writes are recorded under (a hash of its certificate,
    /// [`WriteStamp::owner_of`]): session records are scoped per identity (docs/security.md).
    owner: u64,
    /// Bytes of answers encoded and not yet written, over all the connection's streams.
    budget: Arc<ByteBudget>,
    /// One dump at a time per connection: the next waits for its turn.
    dump_turn: Arc<Semaphore>,
}

/// Serves one pipelined request stream: a reader (this task) that decodes, routes and encodes
/// answers straight into the stream's [`Outbox`], and a writer task that writes whatever the
/// outbox holds per wake-up.
async fn serve_stream(
    node: Arc<Node>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    access: Access,
    conn: Arc<ConnShared>,
) {
    let credit = Arc::new(Semaphore::new(node.config.max_inflight_per_stream));
    let own = Arc::new(ByteBudget::new(node.config.max_queued_bytes_per_stream));
    let outbox = Arc::new(Outbox::with_budgets(vec![own, conn.budget.clone()]));
    let writer_gone = CancellationToken::new();
    // Owned by this task: aborted if the stream task is.
    let writer = AbortOnDropHandle::new(tokio::spawn(write_answers(
        send,
        outbox.clone(),
        credit.clone(),
        writer_gone.clone(),
    )));
    let mut stream = RequestStream {
        answers: Arc::new(AnswerSink {
            node: node.clone(),
            outbox: outbox.clone(),
            waiting: AtomicUsize::new(0),
            none_waiting: Notify::new(),
        }),
        node,
        access,
        reader: FramedReader::new(recv),
        outbox,
        batch: Batch::default(),
        credit,
        conn,
        dumps: JoinSet::new(),
        writer_gone,
        eof: false,
        stop_reading: false,
        paused: false,
        partial_since: None,
    };
    loop {
        let completed_frame = stream.answer_buffered();
        if stream.finished() {
            break;
        }
        stream.note_partial_frame(completed_frame);
        stream.wait().await;
    }
    stream.outbox.close();
    let _ = writer.await;
}

/// The reading side of one request stream and what it owes.
struct RequestStream {
    /// The server.
    node: Arc<Node>,
    /// The role of the client's certificate.
    access: Access,
    /// The stream and the bytes read but not yet decoded.
    reader: FramedReader,
    /// Answers encoded for the writer task; charged to the stream's and the connection's budgets.
    outbox: Arc<Outbox>,
    /// The answers of the current wake-up, handed to `outbox` in one go at its end.
    batch: Batch,
    /// One permit per answer the stream may owe; the writer returns them once written.
    credit: Arc<Semaphore>,
    /// What the connection's streams share (its byte budget, its dump turn).
    conn: Arc<ConnShared>,
    /// The dumps this stream is sending (each counted in `answers.waiting` until its last chunk).
    dumps: JoinSet<()>,
    /// Cancelled by the writer when it can write no more (the client stopped reading, the
    /// connection died): nothing more is read, and dumps end.
    writer_gone: CancellationToken,
    /// Where replicated writes and dumps are answered, and how many are still owed.
    answers: Arc<AnswerSink>,
    /// The client finished its sending side.
    eof: bool,
    /// No more requests are taken (invalid frame, read error, slow sender, shutdown).
    stop_reading: bool,
    /// Reading is paused until the byte budgets have room (counted once per pause).
    paused: bool,
    /// When the buffered bytes started an unfinished frame (slowloris guard).
    partial_since: Option<tokio::time::Instant>,
}

impl RequestStream {
    /// Answers everything already buffered, one credit per request, while the byte budgets have
    /// room; true if a frame completed.
    fn answer_buffered(&mut self) -> bool {
        while self.dumps.try_join_next().is_some() {}
        let limits = self.node.config.limits;
        let mut completed_frame = false;
        while !self.stop_reading && !self.outbox.is_full_with(self.batch.frames.len()) {
            let Ok(permit) = self.credit.try_acquire() else {
                break;
            };
            match decode_request(self.reader.buffer(), &limits) {
                Ok(Some(req)) => {
                    completed_frame = true;
                    permit.forget();
                    self.answer(req);
                }
                Ok(None) => break,
                Err(DecodeError::Rejected { id, code, message }) => {
                    permit.forget();
                    Stats::bump(&self.node.stats.bad_frames);
                    debug!(%message, "request rejected");
                    self.batch.push(id, Reply::Error { code, message });
                }
                Err(DecodeError::Invalid(message)) => {
                    drop(permit);
                    Stats::bump(&self.node.stats.bad_frames);
                    warn!(%message, "invalid frame; closing stream");
                    self.break_stream();
                }
            }
        }
        self.batch.flush(&self.outbox, &self.node);
        completed_frame
    }

    /// Authorizes, routes and answers (or parks) one decoded request.
    fn answer(&mut self, mut req: Request) {
        let node = &self.node;
        if let Some(write) = req.session.as_mut() {
            write.stamp.owner = self.conn.owner;
        }
        Stats::bump(&node.stats.requests);
        // Metrics: counted when the answer is known; the latency runs from the start of the
        // wake-up that read the request (one clock read per batch, see `Batch`).
        let kind = OpKind::of(&req.op);
        let started = self.batch.started();
        if let Some(refused) = auth::refusal(self.access, &req.op) {
            node.security.count_forbidden();
            node.metrics.count_answer(kind, &refused);
            return self.batch.answer(kind, req.id, refused);
        }
        let id = req.id;
        let reply_to = || {
            self.answers.waiting.fetch_add(1, Ordering::AcqRel);
            let ticket = Ticket { id, kind, started };
            ReplyTo::Stream(self.answers.clone(), ticket)
        };
        if let Op::Get { key } = &req.op {
            // Encoded from the store straight into the batch (`None`: it waits for a write).
            let batch = &mut self.batch;
            let _ = router::get(node, key, reply_to, |read| {
                node.metrics
                    .count_outcome(kind, batch.answer_read(kind, id, read))
            });
            return;
        }
        match router::handle(node, req, reply_to) {
            Handled::Now(reply) => {
                node.metrics.count_answer(kind, &reply);
                self.batch.answer(kind, id, reply);
            }
            // Answered by the task that applies the backup's ack, straight into the outbox.
            Handled::Later => {}
            Handled::Dump => {
                node.metrics
                    .record_outcome(kind, Outcome::Ok, started.elapsed());
                self.answers.waiting.fetch_add(1, Ordering::AcqRel);
                let dump = Dump {
                    node: node.clone(),
                    id,
                    outbox: self.outbox.clone(),
                    answers: self.answers.clone(),
                    writer_gone: self.writer_gone.clone(),
                };
                self.dumps.spawn(dump.run(self.conn.dump_turn.clone()));
            }
            Handled::Shutdown => {
                node.metrics
                    .record_outcome(kind, Outcome::Ok, started.elapsed());
                self.batch.push(id, Reply::Ok);
                node.shutdown.cancel();
            }
        }
    }

    /// True once nothing more will be read or answered; counts a frame cut off by the end of the
    /// stream (it was never a request, so it gets no answer).
    fn finished(&mut self) -> bool {
        if !((self.eof || self.stop_reading) && self.answers.waiting.load(Ordering::Acquire) == 0) {
            return false;
        }
        // Requests still buffered, held back only by credit or the byte budgets, are answered
        // once there is room.
        let held_back = self.outbox.is_full() || self.credit.available_permits() == 0;
        if !self.stop_reading && held_back && !self.reader.buffer().is_empty() {
            return false;
        }
        let left = self.reader.buffer().len();
        if self.eof && !self.stop_reading && left > 0 {
            Stats::bump(&self.node.stats.bad_frames);
            debug!(left, "stream ended inside a frame");
        }
        true
    }

    /// Slowloris guard: the clock runs from the moment the buffer holds only an unfinished
    /// frame; every completed frame restarts it, so a busy pipelined stream never trips it.
    fn note_partial_frame(&mut self, completed_frame: bool) {
        let empty = self.reader.buffer().is_empty();
        self.partial_since = match (empty, completed_frame, self.partial_since) {
            (true, _, _) => None,
            (false, true, _) | (false, false, None) => Some(tokio::time::Instant::now()),
            (false, false, since) => since,
        };
    }

    /// Waits for the next thing to do: more bytes, credit, room in the byte budgets, the frame
    /// deadline, shutdown, or (once nothing more is read) the last owed answer.
    async fn wait(&mut self) {
        let node = self.node.clone();
        let frame_deadline = async {
            match self.partial_since {
                Some(t) if !self.stop_reading => {
                    tokio::time::sleep_until(t + node.config.frame_timeout).await
                }
                _ => std::future::pending().await,
            }
        };
        let can_read = !self.eof && !self.stop_reading;
        let has_credit = self.credit.available_permits() > 0;
        let has_room = !self.outbox.is_full();
        if !has_room && !self.paused && !self.stop_reading {
            Stats::bump(&self.node.stats.stream_pauses);
            debug!("answers not read: the stream is paused until the client reads");
        }
        self.paused = !has_room;
        let credit = self.credit.clone();
        let answers = self.answers.clone();
        let outbox = self.outbox.clone();
        let writer_gone = self.writer_gone.clone();
        tokio::select! {
            biased;
            _ = answers.none_waiting.notified(), if !can_read => {}
            _ = writer_gone.cancelled(), if !self.stop_reading => {
                debug!("the client stopped reading answers; no more requests are taken");
                self.stop_reading = true;
            }
            read = self.reader.fill(), if can_read && has_credit && has_room => match read {
                Ok(true) => {}
                Ok(false) => self.eof = true,
                Err(e) => {
                    debug!(reason = %e, "stream read ended");
                    self.stop_reading = true;
                }
            },
            _ = credit.acquire(), if !self.stop_reading && !has_credit => {}
            _ = outbox.room(), if !self.stop_reading && has_credit && !has_room => {}
            _ = frame_deadline => self.stalled(),
            _ = node.shutdown.cancelled(), if !self.stop_reading => self.refuse_buffered(),
        }
    }

    /// The sender left an unfinished frame for longer than the frame timeout.
    fn stalled(&mut self) {
        let node = &self.node;
        Stats::bump(&node.stats.bad_frames);
        warn!(
            timeout = ?node.config.frame_timeout,
            buffered = self.reader.buffer().len(),
            "frame not completed in time; closing the stream"
        );
        self.break_stream();
        self.reader.buffer().clear();
    }

    /// A broken stream (docs/protocol.md §8): asks the client to stop sending (`STOP_SENDING`
    /// with [`STREAM_BAD_FRAME`]) and stops reading; the requests already decoded are still
    /// answered, then the send side finishes. Nothing is sent for the broken frame itself: its id
    /// cannot be trusted, and every answer on the wire belongs to a request.
    fn break_stream(&mut self) {
        self.reader.stop(STREAM_BAD_FRAME.into());
        self.stop_reading = true;
    }

    /// Shutdown: stop taking new requests. Those already buffered are refused (they never take
    /// effect); answers already owed are still delivered.
    fn refuse_buffered(&mut self) {
        let limits = self.node.config.limits;
        while let Ok(Some(req)) = decode_request(self.reader.buffer(), &limits) {
            self.batch.push(
                req.id,
                Reply::Unavailable("the server is shutting down".into()),
            );
        }
        self.batch.flush(&self.outbox, &self.node);
        self.stop_reading = true;
    }
}

/// The answers a stream's reader gives in one wake-up, encoded into a buffer of its own and handed
/// to the outbox once at the end ([`Outbox::push_batch`]): one lock, one budget charge and one
/// wake-up of the writer per batch rather than per answer. Likewise the clock: it is read once
/// when the batch's first request is routed and once when the batch is handed over, and every
/// immediate answer of the batch is observed with that span (its time on the server, including
/// the requests ahead of it in the same read).
#[derive(Debug, Default)]
struct Batch {
    /// Encoded answers not yet handed to the outbox.
    frames: BytesMut,
    /// How many of them settle a request (return a credit once written).
    settles: usize,
    /// When the batch's first request was routed; `None` while the batch is empty.
    started: Option<Instant>,
    /// Immediate answers per [`OpKind`] whose latency is observed when the batch is handed over.
    immediate: [u64; OpKind::ALL.len()],
}

impl Batch {
    /// The start of this batch (read from the clock for its first request only).
    fn started(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// Encodes an answer of a request of `kind` known at once; its latency is observed at
    /// [`Batch::flush`].
    fn answer(&mut self, kind: OpKind, id: u64, reply: Reply) {
        self.immediate[kind.index()] += 1;
        self.push(id, reply);
    }

    /// [`Batch::answer`] of a get answered at once, a stored value copied from the store into
    /// the frame; returns its outcome.
    fn answer_read(&mut self, kind: OpKind, id: u64, read: ReadNow<'_>) -> Outcome {
        let outcome = match read {
            ReadNow::Stored(Some(value)) => {
                encode_value_response(id, value.as_slice(), &mut self.frames);
                self.settles += 1;
                Outcome::Ok
            }
            ReadNow::Stored(None) => self.encode(id, Reply::NotFound),
            ReadNow::Refused(reply) => self.encode(id, reply),
        };
        self.immediate[kind.index()] += 1;
        outcome
    }

    /// [`Batch::push`], returning the answer's outcome.
    fn encode(&mut self, id: u64, reply: Reply) -> Outcome {
        let outcome = Outcome::of(&reply);
        self.push(id, reply);
        outcome
    }

    /// Encodes one answer (its metrics, if any, are the caller's).
    fn push(&mut self, id: u64, reply: Reply) {
        encode_response(&Response { id, reply }, &mut self.frames);
        self.settles += 1;
    }

    /// Observes the batch's immediate answers and hands its frames to the writer.
    fn flush(&mut self, outbox: &Outbox, node: &Node) {
        if let Some(started) = self.started.take() {
            let elapsed = started.elapsed();
            for kind in OpKind::ALL {
                let n = std::mem::take(&mut self.immediate[kind.index()]);
                node.metrics.observe_many(kind, n, elapsed);
            }
        }
        outbox.push_batch(&mut self.frames, std::mem::take(&mut self.settles));
    }
}

/// A stream's sink for the answers of its replicated writes, called by the task that applies the
/// backup's acks: it records the metrics and encodes the answer straight into the stream's outbox
/// (which wakes the writer); the reading task is not involved.
struct AnswerSink {
    /// For the metrics.
    node: Arc<Node>,
    /// The stream's answers.
    outbox: Arc<Outbox>,
    /// Replicated writes and dumps of this stream not yet answered: the stream ends only when
    /// none is left.
    waiting: AtomicUsize,
    /// Signalled when `waiting` drops to zero (a stored permit if nobody waits yet).
    none_waiting: Notify,
}

impl AnswerSink {
    /// One owed answer (a replicated write's, a dump's last chunk) has been given.
    fn settled(&self) {
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_waiting.notify_one();
        }
    }
}

impl std::fmt::Debug for AnswerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerSink")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl StreamAnswers for AnswerSink {
    fn answer(&self, ticket: Ticket, reply: Reply, now: Instant) {
        let elapsed = now.saturating_duration_since(ticket.started);
        self.node.metrics.record(ticket.kind, &reply, elapsed);
        send_reply(&self.outbox, ticket.id, reply);
        self.settled();
    }

    fn lost(&self, ticket: Ticket, reply: Reply) {
        self.answer(ticket, reply, Instant::now())
    }
}

fn send_reply(outbox: &Outbox, id: u64, reply: Reply) {
    outbox.push(true, |out| encode_response(&Response { id, reply }, out));
}

/// One dump request being answered: the store is walked a bucket at a time, and the next chunk is
/// encoded only when the stream's and the connection's byte budgets have room, so a dump holds at
/// most one bucket's entry handles and one chunk, however large the store and however slowly the
/// client reads.
struct Dump {
    /// The store, the limits and the server-wide dump slots.
    node: Arc<Node>,
    /// The request's id, carried by every chunk.
    id: u64,
    /// Where the chunks go.
    outbox: Arc<Outbox>,
    /// Settled when the last chunk is queued (or the dump is abandoned).
    answers: Arc<AnswerSink>,
    /// The stream's writer is gone: stop.
    writer_gone: CancellationToken,
}

impl Dump {
    /// Waits for the connection's dump turn and a server-wide slot (refusing with `unavailable`
    /// when every slot is taken), then sends the chunks; only the last settles the request.
    async fn run(self, turn: Arc<Semaphore>) {
        let my_turn = tokio::select! {
            t = turn.acquire_owned() => t.ok(),
            _ = self.writer_gone.cancelled() => None,
        };
        if my_turn.is_some() {
            match self.node.dump_slots.clone().try_acquire_owned() {
                Ok(_slot) => self.send_chunks().await,
                Err(_) => send_reply(
                    &self.outbox,
                    self.id,
                    Reply::Unavailable(format!(
                        "too many dumps in progress (max_dumps {}); retry later",
                        self.node.config.max_dumps
                    )),
                ),
            }
        }
        self.answers.settled();
    }

    /// Chunks of at most `DUMP_CHUNK_BYTES` of entries (less if the frame limit is smaller; an
    /// entry at the size limits goes alone), cut by the one rule of every entry stream
    /// (`split_entries`); a chunk left part-full at the end of a bucket takes the next bucket's
    /// entries first. An empty store answers one empty last chunk.
    async fn send_chunks(&self) {
        let limits = self.node.config.limits;
        let budget = DUMP_CHUNK_BYTES.min(limits.max_frame.saturating_sub(DUMP_CHUNK_HEADER));
        let mut carry: Vec<(Bytes, Bytes)> = Vec::new();
        for bucket in BucketId::all() {
            let mut entries = std::mem::take(&mut carry);
            entries.extend(self.node.store.bucket_snapshot(bucket));
            let mut chunks = quickv_proto::peer::split_entries(entries, budget).peekable();
            while let Some(chunk) = chunks.next() {
                if chunks.peek().is_none() {
                    carry = chunk;
                    break;
                }
                if !self.push(chunk, false).await {
                    return;
                }
            }
        }
        self.push(carry, true).await;
    }

    /// Waits for room, then queues one chunk; false if the writer is gone.
    async fn push(&self, entries: Vec<(Bytes, Bytes)>, last: bool) -> bool {
        if self.outbox.is_full() {
            Stats::bump(&self.node.stats.stream_pauses);
        }
        tokio::select! {
            _ = self.outbox.room() => {}
            _ = self.writer_gone.cancelled() => return false,
        }
        let reply = Reply::DumpChunk { entries, last };
        let id = self.id;
        self.outbox
            .try_push(last, |out| encode_response(&Response { id, reply }, out))
    }
}

/// Writes answers as they come: everything the outbox holds per wake-up, in one write. When it
/// can write no more (the client stopped reading, the connection died) it drops what is queued
/// and says so through `gone`.
async fn write_answers(
    send: quinn::SendStream,
    outbox: Arc<Outbox>,
    credit: Arc<Semaphore>,
    gone: CancellationToken,
) {
    let mut writer = BatchWriter::new(send);
    while let Taken::Frames(settled) = outbox.take(|frames| writer.take_from(frames)).await {
        if let Err(e) = writer.flush().await {
            debug!(reason = %e, "client stopped reading answers");
            outbox.abandon();
            gone.cancel();
            return;
        }
        outbox.written();
        credit.add_permits(settled);
    }
    writer.finish();
    // The connection may be closed right after this stream ends (shutdown): first let the client
    // acknowledge the last answers.
    writer.delivered().await;
}
