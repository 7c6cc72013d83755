//! One client connection: accept its bidirectional streams and serve each as a pipeline.
//!
//! Each stream gets a reader (decode → route → answer) and a writer (batch answers → send). They
//! are split so that a client which writes a lot before reading cannot deadlock us, and a semaphore
//! bounds the answers owed per stream: when a client stops reading, we stop reading it. Both halves
//! are the workspace's one network layer (`quickv_net`): the reader is a `FramedReader`,
//! and answers are encoded straight into the stream's `Outbox`, which the writer empties into its
//! `BatchWriter` once per wake-up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quickv_net::{BatchWriter, FramedReader, Outbox, Taken};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

use crate::pki::Access;
use crate::replication::reply::{ReplyTo, StreamAnswers, Ticket};
use crate::server::auth;
use crate::server::metrics::{OpKind, Outcome};
use crate::server::node::{Node, Stats};
use crate::server::router::{self, Handled};
use quickv_proto::{
    decode_request, encode_response, DecodeError, ErrorCode, Reply, Request, Response,
    DUMP_CHUNK_HEADER,
};

/// Target size of one dump chunk frame, in bytes (a single larger entry gets a chunk of its own).
const DUMP_CHUNK_BYTES: usize = 1024 * 1024;
/// Application close code sent when the server shuts down.
pub const CLOSE_SHUTDOWN: u32 = 1;
/// Application stream error code sent when a stream carried an invalid frame.
pub const STREAM_BAD_FRAME: u32 = 2;

/// Serves one client connection until it closes or the server stops.
/// Every request is authorized against `access`, the role of the client's certificate.
pub async fn serve_connection(node: Arc<Node>, conn: quinn::Connection, access: Access) {
    let span = info_span!("conn", remote = %conn.remote_address(), id = conn.stable_id());
    async move {
        debug!("client connected");
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = node.shutdown.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let node = node.clone();
                    let sid = send.id();
                    Stats::bump(&node.stats.streams_total);
                    tokio::spawn(
                        async move {
                            let _open = Stats::open(&node.stats.streams);
                            serve_stream(node.clone(), send, recv, access).await;
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
    }
    .instrument(span)
    .await
}

/// Serves one pipelined request stream: a reader (this task) that decodes, routes and encodes
/// answers straight into the stream's [`Outbox`], and a writer task that writes whatever the
/// outbox holds per wake-up.
async fn serve_stream(
    node: Arc<Node>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    access: Access,
) {
    let credit = Arc::new(Semaphore::new(node.config.max_inflight_per_stream));
    let outbox = Arc::new(Outbox::new());
    let writer = tokio::spawn(write_answers(send, outbox.clone(), credit.clone()));
    let mut stream = RequestStream {
        answers: Arc::new(Answers {
            node: node.clone(),
            outbox: outbox.clone(),
            waiting: AtomicUsize::new(0),
            none_waiting: Notify::new(),
        }),
        node,
        access,
        reader: FramedReader::new(recv),
        outbox,
        credit,
        eof: false,
        stop_reading: false,
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
    /// Answers encoded for the writer task.
    outbox: Arc<Outbox>,
    /// One permit per answer the stream may owe; the writer returns them once written.
    credit: Arc<Semaphore>,
    /// Where replicated writes waiting for the backup's ack are answered, and how many there are.
    answers: Arc<Answers>,
    /// The client finished its sending side.
    eof: bool,
    /// No more requests are taken (invalid frame, read error, slow sender, shutdown).
    stop_reading: bool,
    /// When the buffered bytes started an unfinished frame (slowloris guard).
    partial_since: Option<tokio::time::Instant>,
}

impl RequestStream {
    /// Answers everything already buffered, one credit per request; true if a frame completed.
    fn answer_buffered(&mut self) -> bool {
        let limits = self.node.config.limits;
        let mut completed_frame = false;
        while !self.stop_reading {
            let Ok(permit) = self.credit.clone().try_acquire_owned() else {
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
                    self.reply(id, Reply::Error { code, message });
                }
                Err(DecodeError::Invalid(message)) => {
                    permit.forget();
                    Stats::bump(&self.node.stats.bad_frames);
                    warn!(%message, "invalid frame; closing stream");
                    self.close_bad_stream(message);
                }
            }
        }
        completed_frame
    }

    /// Authorizes, routes and answers (or parks) one decoded request.
    fn answer(&mut self, req: Request) {
        let node = &self.node;
        Stats::bump(&node.stats.requests);
        // Metrics: recorded when the answer is known, with the time since routing.
        let kind = OpKind::of(&req.op);
        let started = Instant::now();
        if let Some(refused) = auth::refusal(self.access, &req.op) {
            node.security.count_forbidden();
            node.metrics.record(kind, &refused, started.elapsed());
            return self.reply(req.id, refused);
        }
        let id = req.id;
        let reply_to = || {
            self.answers.waiting.fetch_add(1, Ordering::AcqRel);
            let ticket = Ticket { id, kind, started };
            ReplyTo::Stream(self.answers.clone(), ticket)
        };
        match router::handle_request_to(node, req, reply_to) {
            Handled::Now(reply) => {
                node.metrics.record(kind, &reply, started.elapsed());
                self.reply(id, reply);
            }
            // Answered by the task that applies the backup's ack, straight into the outbox.
            Handled::Later(()) => {}
            Handled::Dump(entries) => {
                node.metrics
                    .record_outcome(kind, Outcome::Ok, started.elapsed());
                send_dump(&self.outbox, id, entries, &node.config.limits);
            }
            Handled::Shutdown => {
                node.metrics
                    .record_outcome(kind, Outcome::Ok, started.elapsed());
                self.reply(id, Reply::Ok);
                node.shutdown.cancel();
            }
        }
    }

    /// Encodes one answer for the writer.
    fn reply(&self, id: u64, reply: Reply) {
        send_reply(&self.outbox, id, reply);
    }

    /// True once nothing more will be read or answered; reports a frame cut off by the end of
    /// the stream.
    fn finished(&mut self) -> bool {
        if !((self.eof || self.stop_reading) && self.answers.waiting.load(Ordering::Acquire) == 0) {
            return false;
        }
        let left = self.reader.buffer().len();
        if self.eof && !self.stop_reading && left > 0 {
            Stats::bump(&self.node.stats.bad_frames);
            self.reply(
                0,
                Reply::Error {
                    code: ErrorCode::BadFrame,
                    message: format!("stream ended inside a frame ({left} bytes left over)"),
                },
            );
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

    /// Waits for the next thing to do: more bytes, credit, the frame deadline, shutdown, or (once
    /// nothing more is read) the last replicated write answered.
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
        let credit = self.credit.clone();
        let answers = self.answers.clone();
        tokio::select! {
            biased;
            _ = answers.none_waiting.notified(), if !can_read => {}
            read = self.reader.fill(), if can_read && has_credit => match read {
                Ok(true) => {}
                Ok(false) => self.eof = true,
                Err(e) => {
                    debug!(reason = %e, "stream read ended");
                    self.stop_reading = true;
                }
            },
            _ = credit.acquire(), if can_read && !has_credit => {}
            _ = frame_deadline => self.stalled(),
            _ = node.shutdown.cancelled(), if !self.stop_reading => self.refuse_buffered(),
        }
    }

    /// The sender left an unfinished frame for longer than the frame timeout.
    fn stalled(&mut self) {
        let node = &self.node;
        Stats::bump(&node.stats.bad_frames);
        let message = format!(
            "frame not completed within {:?} ({} bytes buffered); closing the stream",
            node.config.frame_timeout,
            self.reader.buffer().len()
        );
        warn!(%message, "slow or stalled sender");
        self.close_bad_stream(message);
        self.reader.buffer().clear();
    }

    /// Answers `bad_frame` (request id 0, as the frame's own id cannot be trusted), asks the
    /// client to stop sending, and stops reading; answers already owed are still delivered.
    fn close_bad_stream(&mut self, message: String) {
        self.reply(
            0,
            Reply::Error {
                code: ErrorCode::BadFrame,
                message,
            },
        );
        self.reader.stop(STREAM_BAD_FRAME.into());
        self.stop_reading = true;
    }

    /// Shutdown: stop taking new requests. Those already buffered are refused (they never take
    /// effect); answers already owed are still delivered.
    fn refuse_buffered(&mut self) {
        let limits = self.node.config.limits;
        while let Ok(Some(req)) = decode_request(self.reader.buffer(), &limits) {
            self.reply(
                req.id,
                Reply::Unavailable("the server is shutting down".into()),
            );
        }
        self.stop_reading = true;
    }
}

/// A stream's sink for the answers of its replicated writes, called by the task that applies the
/// backup's acks: it records the metrics and encodes the answer straight into the stream's outbox
/// (which wakes the writer); the reading task is not involved.
struct Answers {
    /// For the metrics.
    node: Arc<Node>,
    /// The stream's answers.
    outbox: Arc<Outbox>,
    /// Replicated writes of this stream not yet answered: the stream ends only when none is left.
    waiting: AtomicUsize,
    /// Signalled when `waiting` drops to zero (a stored permit if nobody waits yet).
    none_waiting: Notify,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl StreamAnswers for Answers {
    fn answer(&self, ticket: Ticket, reply: Reply, now: Instant) {
        let elapsed = now.saturating_duration_since(ticket.started);
        self.node.metrics.record(ticket.kind, &reply, elapsed);
        send_reply(&self.outbox, ticket.id, reply);
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_waiting.notify_one();
        }
    }
}

fn send_reply(outbox: &Outbox, id: u64, reply: Reply) {
    outbox.push(true, |out| encode_response(&Response { id, reply }, out));
}

/// Sends a dump as chunks of at most `DUMP_CHUNK_BYTES` of entries (less if the frame limit is
/// smaller; an entry at the size limits goes alone); only the last settles the request.
fn send_dump(
    outbox: &Outbox,
    id: u64,
    entries: Vec<(Bytes, Bytes)>,
    limits: &quickv_proto::Limits,
) {
    let budget = DUMP_CHUNK_BYTES.min(limits.max_frame.saturating_sub(DUMP_CHUNK_HEADER));
    let mut chunks = quickv_proto::peer::split_entries(entries, budget).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let reply = Reply::DumpChunk {
            entries: chunk,
            last,
        };
        outbox.push(last, |out| encode_response(&Response { id, reply }, out));
        if last {
            return;
        }
    }
    send_reply(
        outbox,
        id,
        Reply::DumpChunk {
            entries: Vec::new(),
            last: true,
        },
    );
}

/// Writes answers as they come: everything the outbox holds per wake-up, in one write.
async fn write_answers(send: quinn::SendStream, outbox: Arc<Outbox>, credit: Arc<Semaphore>) {
    let mut writer = BatchWriter::new(send);
    while let Taken::Frames(settled) = outbox.take(|frames| writer.take_from(frames)).await {
        if let Err(e) = writer.flush().await {
            debug!(reason = %e, "client stopped reading answers");
            return;
        }
        credit.add_permits(settled);
    }
    writer.finish();
}
