//! Peer-link plumbing shared by both roles: framed peer streams and the I/O of a bootstrap's
//! bucket transfer (the frames and their checks are `quickv_core::transfer`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quickv_net::FramedReader;
use tracing::info;

use crate::config::ServerConfig;
use quickv_core::opening::transfer_ack;
use quickv_core::store::{BucketId, Store};
use quickv_core::transfer::{encode_bucket, Received, TransferReceiver, CHUNK_BYTES};
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

/// Sends a snapshot of `buckets` and waits for the receiver's verdict; each write and the wait
/// are bounded by `step`.
pub async fn send_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Arc<Store>,
    buckets: &[BucketId],
    step: Duration,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let (keys, bytes) = send_snapshot(send, store, buckets, reader.limits, step).await?;
    match bounded(step, "waiting for the transfer ack", reader.next()).await? {
        PeerMsg::TransferAck { ok: true, .. } => {
            let secs = started.elapsed().as_secs_f64();
            info!(
                buckets = buckets.len(),
                keys,
                mb = bytes as f64 / 1e6,
                secs,
                mb_per_s = bytes as f64 / 1e6 / secs.max(1e-9),
                "bootstrap: snapshot sent and verified"
            );
            Ok(())
        }
        PeerMsg::TransferAck { ok: false, reason } => Err(LinkError(format!(
            "the peer rejected the snapshot: {reason}"
        ))),
        other => Err(LinkError(format!("expected a transfer ack, got {other:?}"))),
    }
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

/// Receives a snapshot, replacing each bucket it carries after checking its count and digest, and
/// answers the sender.
///
/// Each bucket received whole is applied on a blocking thread while the next one is read: the
/// stream keeps flowing (its flow-control window would otherwise hold the sender while a bucket
/// is installed). One bucket is applied at a time, in order.
///
/// The apply jobs belong to this call: on every way out (verdict, link error) the job in flight
/// is awaited before returning, and each job also holds `fence` (the store's transfer fence, see
/// [`StoreFence`]) until it ends, so even if this future is dropped mid-transfer, nothing else
/// clears or replaces the store until the job has finished.
pub async fn receive_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Arc<Store>,
    fence: &StoreFence,
    step: Duration,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let held = Arc::new(fence.hold().await);
    let mut applying: Option<ApplyJob> = None;
    let mut keys = 0u64;
    let received = receive_loop(reader, store, &held, &mut applying, &mut keys, step).await;
    // Whatever ended the loop, the job in flight ends before we return.
    let last = finish(applying.take()).await;
    let verdict = match (received?, last) {
        (Ok(()), Ok(k)) => {
            keys += k;
            Ok(())
        }
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
    };
    drop(held);
    let ack = transfer_ack(&verdict);
    bounded(step, "sending the transfer ack", send_msgs(send, &[ack])).await?;
    verdict.map_err(LinkError)?;
    info!(
        keys,
        secs = started.elapsed().as_secs_f64(),
        "bootstrap: snapshot received and verified"
    );
    Ok(())
}

/// A bucket being applied on a blocking thread: the keys it installed, or why it was refused.
type ApplyJob = tokio::task::JoinHandle<Result<u64, String>>;

/// Awaits an apply job, if any.
async fn finish(job: Option<ApplyJob>) -> Result<u64, String> {
    match job {
        None => Ok(0),
        Some(job) => job
            .await
            .map_err(|e| format!("applying a bucket failed: {e}"))?,
    }
}

/// The reading part of [`receive_buckets`]: feeds messages to a [`TransferReceiver`] and starts
/// each bucket's apply job once the previous one has finished. Leaves the last job in `applying`
/// for the caller to await. `Err` for a link failure, `Ok(verdict)` at the end of the transfer.
async fn receive_loop(
    reader: &mut PeerReader,
    store: &Arc<Store>,
    held: &Arc<tokio::sync::OwnedMutexGuard<()>>,
    applying: &mut Option<ApplyJob>,
    keys: &mut u64,
    step: Duration,
) -> Result<Result<(), String>, LinkError> {
    let mut receiver = TransferReceiver::default();
    loop {
        let msg = bounded(step, "receiving a snapshot", reader.next()).await?;
        match receiver.feed(msg) {
            Received::More => {}
            Received::Bucket(job) => {
                match finish(applying.take()).await {
                    Ok(k) => *keys += k,
                    Err(e) => return Ok(Err(e)),
                }
                let (store, held) = (store.clone(), held.clone());
                *applying = Some(tokio::task::spawn_blocking(move || {
                    let applied = job.apply(&store, Instant::now());
                    drop(held);
                    applied
                }));
            }
            Received::Done(verdict) => return Ok(verdict),
        }
    }
}

/// The store's transfer fence: held by whoever replaces or clears the store outside the lanes (a
/// bootstrap's receiver and each of its apply jobs, the warm start's discard of a partial copy).
/// An apply job holds it until it ends, so a newer link cannot clear the store under a job its
/// predecessor left running.
#[derive(Debug, Clone, Default)]
pub struct StoreFence(Arc<tokio::sync::Mutex<()>>);

impl StoreFence {
    /// Waits until no transfer or apply job holds the store, then holds it.
    pub async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }
}
