//! The bootstrap transfer without I/O: the sending half encodes buckets into `BucketBegin`,
//! chunks, session records and `BucketEnd` frames ([`encode_bucket`], [`bucket_msgs`]); the
//! receiving half ([`TransferReceiver`]) gathers each bucket and hands it back as a [`BucketJob`]
//! that checks its count and digest before it replaces the bucket. The server's link driver moves
//! the frames over QUIC and runs the jobs off its runtime; the simulator moves them in memory.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::store::{BucketId, Digest, Store};
use quickv_proto::peer::{split_entries, ChunkWriter, PeerMsg, CHUNK_HEADER_BYTES};
use quickv_proto::Limits;

/// Target size of one snapshot chunk frame, in bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;

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
    now: Instant,
) -> (Vec<PeerMsg>, u64, u64) {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut msgs = Vec::new();
    for &bucket in buckets {
        let (bucket_msgs, k, b) = bucket_msgs(store, bucket, limits, now);
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
///
/// `now` dates the session records' marks (their ages travel, not instants).
pub fn bucket_msgs(
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
pub fn encode_bucket(
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
    /// The bucket it installs.
    pub fn bucket(&self) -> BucketId {
        self.bucket
    }

    /// The bytes of its entries (keys and values): what installing it costs, roughly.
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Checks the bucket's count and digest and, only if they match, replaces the bucket and
    /// installs its session table. Returns the keys installed.
    /// `now` is when it is installed: the session records' ages are counted from it.
    pub fn apply(self, store: &Store, now: Instant) -> Result<u64, String> {
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
    pub fn handle(
        &mut self,
        msg: PeerMsg,
        store: &Store,
        now: Instant,
    ) -> Option<Result<(), String>> {
        match self.feed(msg) {
            Received::More => None,
            Received::Bucket(job) => match job.apply(store, now) {
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

#[cfg(test)]
mod tests {
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
        let now = crate::testing::origin();
        for bucket in BucketId::all() {
            let (msgs, keys, bytes) = bucket_msgs(&store, bucket, &limits, now);
            let mut expected = BytesMut::new();
            for m in &msgs {
                m.encode(&mut expected);
            }
            let (frames, k, b) = encode_bucket(&store, bucket, &limits, now);
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
