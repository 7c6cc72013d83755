//! Peer-link plumbing shared by both roles: framed peer streams and the bucket transfer of a
//! bootstrap.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quickv_client::net::FramedReader;
use tracing::info;

use crate::config::ServerConfig;
use crate::protocol::peer::{split_entries, PeerMsg, CHUNK_HEADER_BYTES};
use crate::protocol::Limits;
use crate::store::{BucketId, Digest, Store};

/// Target size of one snapshot chunk frame, in bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;

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

/// Largest sum of encoded entries in one `BucketChunk` under `limits`: [`CHUNK_BYTES`], or less
/// when the frame limit is smaller. A single entry the limits accept always fits a frame on its own.
pub fn chunk_budget(limits: &Limits) -> usize {
    CHUNK_BYTES.min(limits.max_frame.saturating_sub(CHUNK_HEADER_BYTES))
}

/// Splits a bucket's entries into `BucketChunk` messages that each fit the frame limit.
pub fn chunks(entries: Vec<(bytes::Bytes, bytes::Bytes)>, limits: &Limits) -> Vec<PeerMsg> {
    split_entries(entries, chunk_budget(limits))
        .map(PeerMsg::BucketChunk)
        .collect()
}

/// The messages of a bootstrap snapshot of `buckets`, `TransferDone` last: the sending half of a
/// transfer without I/O (the simulator drives it too). Returns the messages, keys and bytes.
pub fn snapshot_msgs(
    store: &Store,
    buckets: &[BucketId],
    limits: &Limits,
) -> (Vec<PeerMsg>, u64, u64) {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut msgs = Vec::new();
    for &bucket in buckets {
        let (bucket_msgs, k, b) = bucket_msgs(store, bucket, limits);
        msgs.extend(bucket_msgs);
        keys += k;
        bytes += b;
    }
    msgs.push(PeerMsg::TransferDone);
    (msgs, keys, bytes)
}

/// One bucket of a snapshot: `BucketBegin`, its chunks and session records, `BucketEnd` with the
/// count and digest. Returns the messages, keys and bytes. Senders build one bucket at a time so a
/// large store never holds the runtime (and the link's keep-alives) for the whole snapshot.
pub fn bucket_msgs(store: &Store, bucket: BucketId, limits: &Limits) -> (Vec<PeerMsg>, u64, u64) {
    let entries = store.bucket_snapshot(bucket);
    let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
    let count = entries.len() as u64;
    let bytes = entries
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum::<u64>();
    let mut msgs = vec![PeerMsg::BucketBegin(bucket)];
    msgs.extend(chunks(entries, limits));
    let (marks, answers) = store.sessions().image(bucket, std::time::Instant::now());
    msgs.extend(
        marks
            .born_ms_ago
            .map(|ms_ago| PeerMsg::SessionsBorn { ms_ago }),
    );
    msgs.extend(
        marks
            .evicted_ms_ago
            .map(|ms_ago| PeerMsg::SessionsEvicted { ms_ago }),
    );
    msgs.extend(answers.into_iter().map(PeerMsg::SessionAnswer));
    msgs.push(PeerMsg::BucketEnd {
        bucket,
        count,
        digest,
    });
    (msgs, count, bytes)
}

/// The receiving half of a transfer without I/O: checks each bucket's count and digest and only
/// then replaces it in the store (atomically per key, see [`Store::replace_bucket`]).
#[derive(Debug, Default)]
pub struct TransferReceiver {
    /// The bucket being received and its entries so far.
    current: Option<(BucketId, Vec<(bytes::Bytes, bytes::Bytes)>)>,
    /// The session table of the bucket being received (`store::sessions`): the latest eviction's
    /// age and the answers so far; installed with the entries once the bucket verifies.
    sessions: (
        crate::store::sessions::TableMarks,
        Vec<crate::protocol::peer::SessionAnswer>,
    ),
    /// Keys received in verified buckets.
    pub keys: u64,
}

impl TransferReceiver {
    /// Takes one message: `None` while the transfer goes on, then its verdict (`Ok` after
    /// `TransferDone`, `Err` at the first inconsistency). The verdict is what `TransferAck` says.
    pub fn handle(&mut self, msg: PeerMsg, store: &Store) -> Option<Result<(), String>> {
        match msg {
            PeerMsg::BucketBegin(b) => {
                self.current = Some((b, Vec::new()));
                self.sessions = Default::default();
            }
            PeerMsg::SessionsEvicted { ms_ago } if self.current.is_some() => {
                self.sessions.0.evicted_ms_ago = Some(ms_ago)
            }
            PeerMsg::SessionsBorn { ms_ago } if self.current.is_some() => {
                self.sessions.0.born_ms_ago = Some(ms_ago)
            }
            PeerMsg::SessionAnswer(a) if self.current.is_some() => self.sessions.1.push(a),
            PeerMsg::BucketChunk(entries) => match self.current.as_mut() {
                Some((b, gathered)) if entries.iter().all(|(k, _)| BucketId::of(k) == *b) => {
                    gathered.extend(entries)
                }
                _ => return Some(Err("chunk outside its bucket".to_string())),
            },
            PeerMsg::BucketEnd {
                bucket,
                count,
                digest,
            } => {
                let Some((b, entries)) = self.current.take().filter(|(b, _)| *b == bucket) else {
                    return Some(Err(format!("end of bucket {bucket} without its beginning")));
                };
                let got = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
                if got != digest || entries.len() as u64 != count {
                    return Some(Err(format!(
                        "bucket {b}: {} entries with digest {got}, expected {count} with {digest}",
                        entries.len()
                    )));
                }
                self.keys += count;
                store.replace_bucket(b, entries);
                let (marks, answers) = std::mem::take(&mut self.sessions);
                store
                    .sessions()
                    .install(b, marks, answers, std::time::Instant::now());
            }
            PeerMsg::TransferDone => return Some(Ok(())),
            other => return Some(Err(format!("unexpected {other:?} during a transfer"))),
        }
        None
    }
}

/// Sends a snapshot of `buckets` and waits for the receiver's verdict; each write and the wait
/// are bounded by `step`.
pub async fn send_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Store,
    buckets: &[BucketId],
    step: Duration,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let (mut keys, mut bytes) = (0u64, 0u64);
    for &bucket in buckets {
        // One bucket at a time, yielding in between: building the whole snapshot at once held the
        // runtime for seconds on a large store, the link's keep-alives stopped and the peer's idle
        // timeout cut every bootstrap of 1M keys (docs/benchmarks.md).
        let (msgs, k, b) = bucket_msgs(store, bucket, &reader.limits);
        keys += k;
        bytes += b;
        for msg in msgs {
            bounded(step, "sending a snapshot", send_msgs(send, &[msg])).await?;
        }
        tokio::task::yield_now().await;
    }
    bounded(
        step,
        "sending a snapshot",
        send_msgs(send, &[PeerMsg::TransferDone]),
    )
    .await?;
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

/// Receives a snapshot, replacing each bucket it carries after checking its count and digest, and
/// answers the sender. Callers guarantee nobody else writes to the store meanwhile.
pub async fn receive_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Store,
    step: Duration,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let mut receiver = TransferReceiver::default();
    let verdict = loop {
        let msg = bounded(step, "receiving a snapshot", reader.next()).await?;
        if let Some(verdict) = receiver.handle(msg, store) {
            break verdict;
        }
    };
    let ack = PeerMsg::TransferAck {
        ok: verdict.is_ok(),
        reason: verdict.clone().err().unwrap_or_default(),
    };
    bounded(step, "sending the transfer ack", send_msgs(send, &[ack])).await?;
    verdict.map_err(LinkError)?;
    info!(
        keys = receiver.keys,
        secs = started.elapsed().as_secs_f64(),
        "bootstrap: snapshot received and verified"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;

    #[test]
    fn chunks_never_exceed_the_frame_limit_whatever_the_mix_of_sizes() {
        // Finding 2: 100 KiB values then one at the size limit used to share a frame.
        let limits = Limits::default();
        let small = Bytes::from(vec![b's'; 100 * 1024]);
        let big = Bytes::from(vec![b'B'; limits.max_value]);
        let key = |i: usize| Bytes::from(format!("k{i}"));
        let mut entries = Vec::new();
        for i in 0..40 {
            let value = if i % 9 == 8 {
                big.clone()
            } else {
                small.clone()
            };
            entries.push((key(i), value));
        }
        entries.push((Bytes::from(vec![b'K'; limits.max_key]), big.clone()));
        let total = entries.len();
        let mut seen = 0;
        for chunk in chunks(entries, &limits) {
            let mut buf = BytesMut::new();
            chunk.encode(&mut buf);
            let frame = buf.len() - 4;
            assert!(frame <= limits.max_frame, "a chunk frame of {frame} bytes");
            match PeerMsg::decode(&mut buf, &limits) {
                Ok(Some(PeerMsg::BucketChunk(e))) => seen += e.len(),
                other => panic!("the receiver rejects the chunk: {other:?}"),
            }
        }
        assert_eq!(seen, total, "every entry sent once");
        // Limits smaller than the usual chunk size shrink the chunks.
        let tight = Limits::new(1024, 1024);
        let entries: Vec<_> = (0..100)
            .map(|i| (key(i), Bytes::from(vec![0; 1000])))
            .collect();
        for chunk in chunks(entries, &tight) {
            let mut buf = BytesMut::new();
            chunk.encode(&mut buf);
            assert!(buf.len() - 4 <= tight.max_frame);
        }
    }
}
