//! Peer-link plumbing shared by both roles: framed peer streams and the I/O of a bootstrap's
//! bucket transfer (the frames and their checks are `quickv_core::transfer`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quickv_net::FramedReader;

use crate::config::ServerConfig;
use quickv_core::store::{BucketId, Store};
use quickv_core::transfer::{encode_bucket, CHUNK_BYTES};
pub use quickv_core::LinkError;
use quickv_proto::peer::PeerMsg;
use quickv_proto::Limits;

/// Reading side of a peer stream: the shared framed reader ([`FramedReader`]) with the peer
/// protocol's decoder on top.
pub struct PeerReader {
    /// The QUIC stream and the bytes read but not yet decoded.
    reader: FramedReader,
    /// Frame limits (the pair must agree on them).
    pub limits: Limits,
}

impl PeerReader {
    /// Wraps a stream.
    pub fn new(recv: quinn::RecvStream, limits: Limits) -> PeerReader {
        PeerReader {
            reader: FramedReader::new(recv),
            limits,
        }
    }

    /// The bytes read and not yet decoded (a decoder that takes several frames at once reads
    /// them here).
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.reader.buffer()
    }

    /// A message already buffered, without waiting.
    pub fn buffered(&mut self) -> Result<Option<PeerMsg>, LinkError> {
        PeerMsg::decode(self.reader.buffer(), &self.limits).map_err(LinkError::new)
    }

    /// Reads more bytes; false at the end of the stream.
    pub async fn fill(&mut self) -> Result<bool, LinkError> {
        self.reader
            .fill()
            .await
            .map_err(|e| LinkError(format!("peer stream failed: {e}")))
    }

    /// The next message; an error at the end of the stream.
    pub async fn next(&mut self) -> Result<PeerMsg, LinkError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(msg);
            }
            if !self.fill().await? {
                return Err(LinkError("the peer closed the stream".into()));
            }
        }
    }
}

/// Encodes and writes messages on a peer stream.
pub async fn send_msgs(send: &mut quinn::SendStream, msgs: &[PeerMsg]) -> Result<(), LinkError> {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    send.write_all(&out)
        .await
        .map_err(|e| LinkError(format!("cannot write to the peer: {e}")))
}

/// How long one step of the link (opening a stream, a hello, one message of a transfer, a write
/// the peer must read) may take before the link is declared failed: the longer of the ack timeout
/// and the frame timeout. A live peer does each step in far less; a peer that stops reading or
/// answering must not stall the link (nor the server's shutdown) for ever.
pub fn step_timeout(config: &ServerConfig) -> Duration {
    config.ack_timeout.max(config.frame_timeout)
}

/// Runs one step of the link within `limit`, or fails the link saying what was waited for.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| LinkError(format!("peer link stalled: {what} took over {limit:?}")))?
}

/// Writes a snapshot of `buckets`, `TransferDone` last; each write bounded by `step`. Returns the
/// keys and bytes sent.
///
/// Buckets are encoded one at a time on a blocking thread, the next while the current one is
/// being sent: the runtime (QUIC, keep-alives) never waits for a walk of the store, and the two
/// cores each get one half of the work.
pub async fn send_snapshot(
    send: &mut quinn::SendStream,
    store: &Arc<Store>,
    buckets: &[BucketId],
    limits: Limits,
    step: Duration,
) -> Result<(u64, u64), LinkError> {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let encode = |bucket: BucketId| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || encode_bucket(&store, bucket, &limits, Instant::now()))
    };
    let mut next = buckets.first().map(|&b| encode(b));
    let sent = async {
        for i in 0..buckets.len() {
            let Some(job) = next.take() else { break };
            let (frames, k, b) = job
                .await
                .map_err(|e| LinkError(format!("encoding a snapshot failed: {e}")))?;
            next = buckets.get(i + 1).map(|&b| encode(b));
            keys += k;
            bytes += b;
            // Handed to quinn without a copy, a chunk's worth per bounded step.
            let mut offset = 0;
            while offset < frames.len() {
                let piece = frames.slice(offset..frames.len().min(offset + CHUNK_BYTES));
                offset += piece.len();
                bounded(step, "sending a snapshot", async {
                    send.write_chunk(piece)
                        .await
                        .map_err(|e| LinkError(format!("cannot write to the peer: {e}")))
                })
                .await?;
            }
        }
        Ok::<(), LinkError>(())
    }
    .await;
    // The encoding job of the next bucket belongs to this call: it ends before we return.
    if let Some(job) = next.take() {
        let _ = job.await;
    }
    sent?;
    bounded(
        step,
        "sending a snapshot",
        send_msgs(send, &[PeerMsg::TransferDone]),
    )
    .await?;
    Ok((keys, bytes))
}
