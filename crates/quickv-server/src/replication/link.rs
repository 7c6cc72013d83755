//! Peer-link plumbing shared by both roles: framed peer streams and the bucket transfer of a
//! bootstrap.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quickv_net::FramedReader;
use tracing::info;

use crate::config::ServerConfig;
use crate::store::{BucketId, Digest, Store};
use quickv_proto::peer::{split_entries, ChunkWriter, PeerMsg, CHUNK_HEADER_BYTES};
use quickv_proto::Limits;

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
    snapshot_msgs_at(store, buckets, limits, Instant::now())
}

/// [`snapshot_msgs`] at `now`: the session tables' ages are taken then (a simulator passes
/// virtual time).
pub fn snapshot_msgs_at(
    store: &Store,
    buckets: &[BucketId],
    limits: &Limits,
    now: Instant,
) -> (Vec<PeerMsg>, u64, u64) {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut msgs = Vec::new();
    for &bucket in buckets {
        let (bucket_msgs, k, b) = bucket_msgs_at(store, bucket, limits, now);
        msgs.extend(bucket_msgs);
        keys += k;
        bytes += b;
    }
    msgs.push(PeerMsg::TransferDone);
    (msgs, keys, bytes)
}

/// One bucket of a snapshot: `BucketBegin`, its chunks and session records, `BucketEnd` with the
/// count and digest. Returns the messages, keys and bytes. The simulator and tests use this form;
/// a live sender writes the same frames with [`encode_bucket`].
pub fn bucket_msgs(store: &Store, bucket: BucketId, limits: &Limits) -> (Vec<PeerMsg>, u64, u64) {
    bucket_msgs_at(store, bucket, limits, Instant::now())
}

fn bucket_msgs_at(
    store: &Store,
    bucket: BucketId,
    limits: &Limits,
    now: Instant,
) -> (Vec<PeerMsg>, u64, u64) {
    let entries = store.bucket_snapshot(bucket);
    let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
    let count = entries.len() as u64;
    let bytes = entries
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum::<u64>();
    let mut msgs = vec![PeerMsg::BucketBegin(bucket)];
    msgs.extend(chunks(entries, limits));
    msgs.extend(session_msgs(store, bucket, now));
    msgs.push(PeerMsg::BucketEnd {
        bucket,
        count,
        digest,
    });
    (msgs, count, bytes)
}

/// The session table of `bucket` as transfer messages (`store::sessions`).
fn session_msgs(store: &Store, bucket: BucketId, now: Instant) -> Vec<PeerMsg> {
    let (marks, answers) = store.sessions().image(bucket, now);
    let mut msgs: Vec<PeerMsg> = Vec::with_capacity(answers.len() + 2);
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
    msgs
}

/// One bucket of a snapshot, encoded: the frames of [`bucket_msgs`], written in one pass over the
/// map straight into the wire buffer (entries are neither cloned nor collected, and the digest is
/// summed on the way). Returns the frames, keys and bytes. Senders build one bucket at a time so
/// a large store never holds the runtime (and the link's keep-alives) for the whole snapshot.
pub fn encode_bucket(store: &Store, bucket: BucketId, limits: &Limits) -> (Bytes, u64, u64) {
    encode_bucket_at(store, bucket, limits, Instant::now())
}

fn encode_bucket_at(
    store: &Store,
    bucket: BucketId,
    limits: &Limits,
    now: Instant,
) -> (Bytes, u64, u64) {
    // Sized once: each entry adds its two lengths (8 bytes) to what the store counts, and a few
    // entries more than counted (a racing write) only cost one regrowth.
    let entries = store.bucket_len(bucket) as usize;
    let estimate = store.bucket_bytes(bucket) as usize + 8 * entries;
    let frames = estimate / chunk_budget(limits).max(1) + 1;
    let mut out = BytesMut::with_capacity(estimate + frames * (CHUNK_HEADER_BYTES + 4) + 1024);
    PeerMsg::BucketBegin(bucket).encode(&mut out);
    let mut writer = ChunkWriter::new(chunk_budget(limits));
    let (mut count, mut bytes, mut digest) = (0u64, 0u64, Digest::default());
    store.visit_bucket(bucket, |k, v| {
        writer.push(&mut out, k, v);
        digest = digest.plus(Digest::of_entry(k, v));
        count += 1;
        bytes += (k.len() + v.len()) as u64;
    });
    writer.close(&mut out);
    for msg in session_msgs(store, bucket, now) {
        msg.encode(&mut out);
    }
    PeerMsg::BucketEnd {
        bucket,
        count,
        digest,
    }
    .encode(&mut out);
    (out.freeze(), count, bytes)
}

/// The receiving half of a transfer without I/O: gathers each bucket, checks its count and digest
/// and only then replaces it in the store (atomically per key, see [`Store::replace_bucket`]).
#[derive(Debug, Default)]
pub struct TransferReceiver {
    /// The bucket being received and its entries so far.
    current: Option<(BucketId, Vec<(bytes::Bytes, bytes::Bytes)>)>,
    /// The session table of the bucket being received (`store::sessions`): the latest eviction's
    /// age and the answers so far; installed with the entries once the bucket verifies.
    sessions: (
        crate::store::sessions::TableMarks,
        Vec<quickv_proto::peer::SessionAnswer>,
    ),
    /// Keys received in verified buckets.
    pub keys: u64,
}

/// What one message of a transfer leads to (see [`TransferReceiver::feed`]).
#[derive(Debug)]
pub enum Received {
    /// Nothing to do yet.
    More,
    /// A bucket was received whole: apply it ([`BucketJob::apply`]) before the next one.
    Bucket(BucketJob),
    /// The transfer is over: `Ok` after `TransferDone`, `Err` at the first inconsistency. The
    /// verdict is what `TransferAck` says, once every bucket job has been applied.
    Done(Result<(), String>),
}

/// One bucket received whole, to be checked and installed.
#[derive(Debug)]
pub struct BucketJob {
    bucket: BucketId,
    entries: Vec<(bytes::Bytes, bytes::Bytes)>,
    count: u64,
    digest: Digest,
    sessions: (
        crate::store::sessions::TableMarks,
        Vec<quickv_proto::peer::SessionAnswer>,
    ),
}

impl BucketJob {
    /// Checks the bucket's count and digest and, only if they match, replaces the bucket and
    /// installs its session table. Returns the keys installed.
    pub fn apply(self, store: &Store) -> Result<u64, String> {
        self.apply_at(store, std::time::Instant::now())
    }

    /// [`BucketJob::apply`] at `now`: the installed session table's ages count from then (a
    /// simulator passes virtual time).
    pub fn apply_at(self, store: &Store, now: Instant) -> Result<u64, String> {
        let BucketJob {
            bucket,
            entries,
            count,
            digest,
            sessions: (marks, answers),
        } = self;
        store
            .replace_bucket_verified(bucket, entries, count, digest)
            .map_err(|(got_count, got)| {
                format!(
                    "bucket {bucket}: {got_count} entries with digest {got}, expected {count} with {digest}"
                )
            })?;
        store.sessions().install(bucket, marks, answers, now);
        Ok(count)
    }
}

impl TransferReceiver {
    /// Takes one message and applies a completed bucket at once: `None` while the transfer goes
    /// on, then its verdict (`Ok` after `TransferDone`, `Err` at the first inconsistency).
    pub fn handle(&mut self, msg: PeerMsg, store: &Store) -> Option<Result<(), String>> {
        self.handle_at(msg, store, Instant::now())
    }

    /// [`TransferReceiver::handle`] at `now` (a simulator passes virtual time).
    pub fn handle_at(
        &mut self,
        msg: PeerMsg,
        store: &Store,
        now: Instant,
    ) -> Option<Result<(), String>> {
        match self.feed(msg) {
            Received::More => None,
            Received::Bucket(job) => match job.apply_at(store, now) {
                Ok(keys) => {
                    self.keys += keys;
                    None
                }
                Err(e) => Some(Err(e)),
            },
            Received::Done(verdict) => Some(verdict),
        }
    }

    /// Takes one message; a bucket received whole comes back as a job for the caller to apply
    /// (a live receiver applies it off the runtime while it reads the next one).
    pub fn feed(&mut self, msg: PeerMsg) -> Received {
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
                _ => return Received::Done(Err("chunk outside its bucket".to_string())),
            },
            PeerMsg::BucketEnd {
                bucket,
                count,
                digest,
            } => {
                let Some((b, entries)) = self.current.take().filter(|(b, _)| *b == bucket) else {
                    return Received::Done(Err(format!(
                        "end of bucket {bucket} without its beginning"
                    )));
                };
                return Received::Bucket(BucketJob {
                    bucket: b,
                    entries,
                    count,
                    digest,
                    sessions: std::mem::take(&mut self.sessions),
                });
            }
            PeerMsg::TransferDone => return Received::Done(Ok(())),
            other => return Received::Done(Err(format!("unexpected {other:?} during a transfer"))),
        }
        Received::More
    }
}

/// Sends a snapshot of `buckets` and waits for the receiver's verdict; each write and the wait
/// are bounded by `step`.
///
/// Buckets are encoded one at a time on a blocking thread, the next while the current one is
/// being sent: the runtime (QUIC, keep-alives) never waits for a walk of the store, and the two
/// cores each get one half of the work.
pub async fn send_buckets(
    send: &mut quinn::SendStream,
    reader: &mut PeerReader,
    store: &Arc<Store>,
    buckets: &[BucketId],
    step: Duration,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let (mut keys, mut bytes) = (0u64, 0u64);
    let encode = |bucket: BucketId| {
        let (store, limits) = (store.clone(), reader.limits);
        tokio::task::spawn_blocking(move || encode_bucket(&store, bucket, &limits))
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
    let ack = PeerMsg::TransferAck {
        ok: verdict.is_ok(),
        reason: verdict.clone().err().unwrap_or_default(),
    };
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
                    let applied = job.apply(&store);
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

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;

    #[test]
    fn an_encoded_bucket_is_the_encoding_of_its_messages() {
        let store = Store::new();
        for i in 0..5_000usize {
            let value = vec![b'v'; (i * 13) % 3000];
            store.put(Bytes::from(format!("k{i}")), Bytes::from(value));
        }
        let limits = Limits {
            max_frame: 64 * 1024,
            ..Limits::default()
        };
        let now = Instant::now();
        for bucket in BucketId::all() {
            let (msgs, keys, bytes) = bucket_msgs_at(&store, bucket, &limits, now);
            let mut expected = BytesMut::new();
            for m in &msgs {
                m.encode(&mut expected);
            }
            let (frames, k, b) = encode_bucket_at(&store, bucket, &limits, now);
            assert_eq!((k, b), (keys, bytes));
            assert_eq!(frames, expected.freeze(), "bucket {bucket}");
        }
    }

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
