//! Peer-link plumbing shared by both roles: framed peer streams and the bucket transfer of a
//! bootstrap.

use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::info;

use crate::protocol::peer::PeerMsg;
use crate::protocol::{encoded_len_entry, Limits};
use crate::store::{BucketId, Digest, Store};

/// Target size of one snapshot chunk frame, in bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes asked of a stream per read.
const READ_BYTES: usize = 64 * 1024;

/// Why the link failed, in words for the log and for the state transition.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

impl LinkError {
    /// A link error from anything displayable.
    pub fn new(e: impl std::fmt::Display) -> LinkError {
        LinkError(e.to_string())
    }
}

/// Reading side of a peer stream: buffers bytes and yields decoded messages.
pub struct PeerReader {
    /// The QUIC stream.
    recv: quinn::RecvStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// Frame limits (the pair must agree on them).
    limits: Limits,
}

impl PeerReader {
    /// Wraps a stream.
    pub fn new(recv: quinn::RecvStream, limits: Limits) -> PeerReader {
        PeerReader {
            recv,
            buf: BytesMut::with_capacity(READ_BYTES),
            limits,
        }
    }

    /// A message already buffered, without waiting.
    pub fn buffered(&mut self) -> Result<Option<PeerMsg>, LinkError> {
        PeerMsg::decode(&mut self.buf, &self.limits).map_err(LinkError::new)
    }

    /// Reads more bytes; false at the end of the stream.
    pub async fn fill(&mut self) -> Result<bool, LinkError> {
        if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
            self.buf.reserve(READ_BYTES);
        }
        match self.recv.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(LinkError(format!("peer stream failed: {e}"))),
        }
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

/// Splits a bucket's entries into `BucketChunk` messages of about [`CHUNK_BYTES`].
pub fn chunks(entries: Vec<(bytes::Bytes, bytes::Bytes)>) -> Vec<PeerMsg> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for (k, v) in entries {
        size += encoded_len_entry(&k, &v);
        chunk.push((k, v));
        if size >= CHUNK_BYTES {
            out.push(PeerMsg::BucketChunk(std::mem::take(&mut chunk)));
            size = 0;
        }
    }
    if !chunk.is_empty() {
        out.push(PeerMsg::BucketChunk(chunk));
    }
    out
}

/// Sends a snapshot of `buckets` and waits for the receiver's verdict.
pub async fn send_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Store,
    buckets: &[BucketId],
) -> Result<(), LinkError> {
    let started = Instant::now();
    let (mut keys, mut bytes) = (0u64, 0u64);
    for &bucket in buckets {
        let entries = store.bucket_snapshot(bucket);
        let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
        let count = entries.len() as u64;
        keys += count;
        bytes += entries
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        let mut msgs = vec![PeerMsg::BucketBegin(bucket)];
        msgs.extend(chunks(entries));
        msgs.push(PeerMsg::BucketEnd {
            bucket,
            count,
            digest,
        });
        send_msgs(send, &msgs).await?;
    }
    send_msgs(send, &[PeerMsg::TransferDone]).await?;
    match reader.next().await? {
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

/// Receives a snapshot, replacing each bucket it carries after checking its count and digest, and
/// answers the sender. Callers guarantee nobody else writes to the store meanwhile.
pub async fn receive_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Store,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let mut current: Option<(BucketId, Vec<_>)> = None;
    let mut keys = 0u64;
    let verdict = loop {
        match reader.next().await? {
            PeerMsg::BucketBegin(b) => current = Some((b, Vec::new())),
            PeerMsg::BucketChunk(entries) => match current.as_mut() {
                Some((b, gathered)) if entries.iter().all(|(k, _)| BucketId::of(k) == *b) => {
                    gathered.extend(entries)
                }
                _ => break Err("chunk outside its bucket".to_string()),
            },
            PeerMsg::BucketEnd {
                bucket,
                count,
                digest,
            } => {
                let Some((b, entries)) = current.take().filter(|(b, _)| *b == bucket) else {
                    break Err(format!("end of bucket {bucket} without its beginning"));
                };
                let got = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
                if got != digest || entries.len() as u64 != count {
                    break Err(format!(
                        "bucket {b}: {} entries with digest {got}, expected {count} with {digest}",
                        entries.len()
                    ));
                }
                keys += count;
                store.replace_bucket(b, entries);
            }
            PeerMsg::TransferDone => break Ok(()),
            other => break Err(format!("unexpected {other:?} during a transfer")),
        }
    };
    let ack = PeerMsg::TransferAck {
        ok: verdict.is_ok(),
        reason: verdict.clone().err().unwrap_or_default(),
    };
    send_msgs(send, &[ack]).await?;
    verdict.map_err(LinkError)?;
    info!(
        keys,
        secs = started.elapsed().as_secs_f64(),
        "bootstrap: snapshot received and verified"
    );
    Ok(())
}
