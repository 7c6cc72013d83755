//! One client connection: accept its bidirectional streams and serve each as a pipeline.
//!
//! Each stream gets a reader (decode → route → answer) and a writer (batch answers → send). They
//! are split so that a client which writes a lot before reading cannot deadlock us, and a semaphore
//! bounds the answers owed per stream: when a client stops reading, we stop reading it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use quickv_client::net::BatchWriter;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

use crate::pki::Access;
use crate::protocol::{
    decode_request, encode_response, DecodeError, ErrorCode, Reply, Response, DUMP_CHUNK_HEADER,
};
use crate::server::auth;
use crate::server::metrics::{OpKind, Outcome};
use crate::server::node::{Node, Stats};
use crate::server::router::{self, Handled};

/// Bytes asked of the QUIC stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
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

/// Serves one pipelined request stream.
async fn serve_stream(
    node: Arc<Node>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    access: Access,
) {
    let credit = Arc::new(Semaphore::new(node.config.max_inflight_per_stream));
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(write_responses(send, rx, credit.clone()));
    let limits = node.config.limits;
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut pending = FuturesUnordered::new();
    let mut eof = false;
    let mut stop_reading = false;
    // When the buffered bytes started an unfinished frame (slowloris guard).
    let mut partial_since: Option<tokio::time::Instant> = None;

    loop {
        let mut completed_frame = false;
        // Answer everything already buffered, one credit per request.
        while !stop_reading {
            let Ok(permit) = credit.clone().try_acquire_owned() else {
                break;
            };
            match decode_request(&mut inbuf, &limits) {
                Ok(Some(req)) => {
                    completed_frame = true;
                    permit.forget();
                    Stats::bump(&node.stats.requests);
                    // Metrics: recorded when the answer is known, with the time since routing.
                    let kind = OpKind::of(&req.op);
                    let started = Instant::now();
                    if let Some(refused) = auth::refusal(access, &req.op) {
                        node.security.count_forbidden();
                        node.metrics.record(kind, &refused, started.elapsed());
                        send_reply(&tx, req.id, refused);
                        continue;
                    }
                    let id = req.id;
                    match router::handle_request(&node, req) {
                        Handled::Now(reply) => {
                            node.metrics.record(kind, &reply, started.elapsed());
                            send_reply(&tx, id, reply);
                        }
                        Handled::Later(rx) => {
                            pending.push(async move { (id, kind, started, rx.await) });
                        }
                        Handled::Dump(entries) => {
                            node.metrics
                                .record_outcome(kind, Outcome::OK, started.elapsed());
                            send_dump(&tx, id, entries, &node.config.limits);
                        }
                        Handled::Shutdown => {
                            node.metrics
                                .record_outcome(kind, Outcome::OK, started.elapsed());
                            send_reply(&tx, id, Reply::Ok);
                            node.shutdown.cancel();
                        }
                    }
                }
                Ok(None) => break,
                Err(DecodeError::Rejected { id, code, message }) => {
                    permit.forget();
                    Stats::bump(&node.stats.bad_frames);
                    debug!(%message, "request rejected");
                    send_reply(&tx, id, Reply::Error { code, message });
                }
                Err(DecodeError::Invalid(message)) => {
                    permit.forget();
                    Stats::bump(&node.stats.bad_frames);
                    warn!(%message, "invalid frame; closing stream");
                    send_reply(
                        &tx,
                        0,
                        Reply::Error {
                            code: ErrorCode::BadFrame,
                            message,
                        },
                    );
                    let _ = recv.stop(STREAM_BAD_FRAME.into());
                    stop_reading = true;
                }
            }
        }
        if (eof || stop_reading) && pending.is_empty() {
            if eof && !stop_reading && !inbuf.is_empty() {
                Stats::bump(&node.stats.bad_frames);
                send_reply(
                    &tx,
                    0,
                    Reply::Error {
                        code: ErrorCode::BadFrame,
                        message: format!(
                            "stream ended inside a frame ({} bytes left over)",
                            inbuf.len()
                        ),
                    },
                );
            }
            break;
        }
        // The clock runs from the moment the buffer holds only an unfinished frame; every
        // completed frame restarts it, so a busy pipelined stream never trips it.
        partial_since = match (inbuf.is_empty(), completed_frame, partial_since) {
            (true, _, _) => None,
            (false, true, _) | (false, false, None) => Some(tokio::time::Instant::now()),
            (false, false, since) => since,
        };
        let frame_deadline = async {
            match partial_since {
                Some(t) if !stop_reading => {
                    tokio::time::sleep_until(t + node.config.frame_timeout).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some((id, kind, started, outcome)) = pending.next(), if !pending.is_empty() => {
                let reply = outcome.unwrap_or_else(|_| {
                    Reply::Indeterminate("the server lost track of this write".into())
                });
                node.metrics.record(kind, &reply, started.elapsed());
                send_reply(&tx, id, reply);
            }
            read = recv.read_buf(&mut inbuf), if !eof && !stop_reading && credit.available_permits() > 0 => {
                match read {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        debug!(reason = %e, "stream read ended");
                        stop_reading = true;
                    }
                }
                if inbuf.capacity() - inbuf.len() < READ_CHUNK_BYTES / 4 {
                    inbuf.reserve(READ_CHUNK_BYTES);
                }
            }
            _ = credit.acquire(), if !eof && !stop_reading && credit.available_permits() == 0 => {}
            _ = frame_deadline => {
                Stats::bump(&node.stats.bad_frames);
                let message = format!(
                    "frame not completed within {:?} ({} bytes buffered); closing the stream",
                    node.config.frame_timeout,
                    inbuf.len()
                );
                warn!(%message, "slow or stalled sender");
                send_reply(&tx, 0, Reply::Error { code: ErrorCode::BadFrame, message });
                let _ = recv.stop(STREAM_BAD_FRAME.into());
                stop_reading = true;
                inbuf.clear();
            }
            _ = node.shutdown.cancelled(), if !stop_reading => {
                // Stop taking new requests: those already buffered are refused (they never take
                // effect), answers already owed are still delivered.
                while let Ok(Some(req)) = decode_request(&mut inbuf, &limits) {
                    send_reply(&tx, req.id, Reply::Unavailable("the server is shutting down".into()));
                }
                stop_reading = true;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One frame for the writer, and whether writing it settles a request (returns its credit).
struct Outgoing {
    /// The frame.
    resp: Response,
    /// True for the last (usually only) frame of an answer.
    settles: bool,
}

fn send_reply(tx: &mpsc::UnboundedSender<Outgoing>, id: u64, reply: Reply) {
    // The writer only goes away when the stream is dead; nothing useful to do with the answer then.
    let _ = tx.send(Outgoing {
        resp: Response { id, reply },
        settles: true,
    });
}

/// Sends a dump as chunks of at most `DUMP_CHUNK_BYTES` of entries (less if the frame limit is
/// smaller; an entry at the size limits goes alone); only the last settles the request.
fn send_dump(
    tx: &mpsc::UnboundedSender<Outgoing>,
    id: u64,
    entries: Vec<(Bytes, Bytes)>,
    limits: &crate::protocol::Limits,
) {
    let budget = DUMP_CHUNK_BYTES.min(limits.max_frame.saturating_sub(DUMP_CHUNK_HEADER));
    let mut chunks = crate::protocol::peer::split_entries(entries, budget).peekable();
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            return send_reply(
                tx,
                id,
                Reply::DumpChunk {
                    entries: chunk,
                    last: true,
                },
            );
        }
        let reply = Reply::DumpChunk {
            entries: chunk,
            last: false,
        };
        let _ = tx.send(Outgoing {
            resp: Response { id, reply },
            settles: false,
        });
    }
    send_reply(
        tx,
        id,
        Reply::DumpChunk {
            entries: Vec::new(),
            last: true,
        },
    );
}

/// Writes answers as they come, batching whatever is queued into one write.
async fn write_responses(
    send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    credit: Arc<Semaphore>,
) {
    let mut writer = BatchWriter::new(send);
    while let Some(first) = rx.recv().await {
        let mut n = 0;
        writer.batch(
            first,
            || rx.try_recv().ok(),
            |item, out| {
                encode_response(&item.resp, out);
                n += usize::from(item.settles);
            },
        );
        if let Err(e) = writer.flush().await {
            debug!(reason = %e, "client stopped reading answers");
            return;
        }
        credit.add_permits(n);
    }
    writer.finish();
}
