//! The backup's side of the data streams without I/O: [`StreamApplier`] applies each lane's
//! writes in offset order, verifies digest checks and gathers a resync's entries;
//! [`apply_resync`] checks and installs a resynced bucket. The server's driver reads the frames,
//! batches the acks and runs a resync's install off its runtime; the simulator calls the same code.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use crate::counters::Counters;
use crate::error::LinkError;
use crate::store::{BucketId, Digest, Store, BUCKETS};
use quickv_proto::peer::{PeerMsg, ReplOffset};

/// The backup's side of one data stream, without I/O: applies each lane's messages in offset
/// order and says what to report. A lane is carried by one stream per link, so the offsets here
/// are the lane's.
#[derive(Debug, Default)]
pub struct StreamApplier {
    /// Highest offset applied per lane (the next ack).
    pub applied: [ReplOffset; BUCKETS],
    /// A single-bucket resync being received: its lane and the entries so far.
    replacing: Option<(BucketId, Vec<(bytes::Bytes, bytes::Bytes)>)>,
    /// Highest offset acknowledged per lane ([`StreamApplier::acks`]).
    acked: [ReplOffset; BUCKETS],
}

/// What one pass of [`StreamApplier::apply_buffered`] over a stream's buffered frames asks of
/// the caller.
#[derive(Debug)]
pub enum Pass {
    /// Every whole frame buffered was applied.
    Done,
    /// A resync's entries are complete: the caller checks and installs them
    /// ([`ResyncJob::apply`]; a live backup does it off its runtime, under the store's fence),
    /// then calls `apply_buffered` again for the frames after it.
    Resync(ResyncJob),
}

/// A resynced bucket, received whole, to check and install.
#[derive(Debug)]
pub struct ResyncJob {
    /// The bucket.
    pub bucket: BucketId,
    entries: Vec<(bytes::Bytes, bytes::Bytes)>,
    digest: Digest,
}

impl ResyncJob {
    /// Checks the entries against the primary's digest and, if they match, makes the bucket
    /// hold exactly them ([`apply_resync`]); counts the resync.
    pub fn apply(self, store: &Store, counters: &Counters) -> Result<(), LinkError> {
        let bucket = self.bucket;
        apply_resync(store, bucket, self.entries, self.digest)?;
        counters.resyncs.fetch_add(1, Ordering::Relaxed);
        info!(%bucket, "bucket resynced from the primary");
        Ok(())
    }
}

impl StreamApplier {
    fn next(&mut self, b: BucketId, offset: ReplOffset) -> Result<(), LinkError> {
        let applied = &mut self.applied[b.index()];
        if offset != *applied + 1 {
            return Err(LinkError(format!(
                "lane {b}: offset {offset} after {applied}"
            )));
        }
        *applied = offset;
        Ok(())
    }

    /// Applies the whole frames buffered in `buf` (the one way both the server's data-stream
    /// driver and the simulator apply a stream): each in lane order, checks verified, reports
    /// (mismatches) appended to `out`. Stops at a resync's end, handing its job back
    /// ([`Pass::Resync`]). `live()` is asked before each frame: once it says no (a newer link was
    /// admitted), nothing more is applied and the link ends. `now` dates session records.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_buffered(
        &mut self,
        buf: &mut bytes::BytesMut,
        limits: &quickv_proto::Limits,
        store: &Store,
        counters: &Counters,
        now: Instant,
        live: impl Fn() -> bool,
        out: &mut Vec<PeerMsg>,
    ) -> Result<Pass, LinkError> {
        while let Some(msg) = PeerMsg::decode(buf, limits).map_err(LinkError::new)? {
            if !live() {
                return Err(LinkError(
                    "link superseded; its writes are no longer applied".into(),
                ));
            }
            if let PeerMsg::ReplaceEnd {
                bucket,
                offset,
                digest,
            } = msg
            {
                let entries = self.take_replace(bucket, offset)?;
                return Ok(Pass::Resync(ResyncJob {
                    bucket,
                    entries,
                    digest,
                }));
            }
            out.extend(self.handle(msg, store, counters, now)?);
        }
        Ok(Pass::Done)
    }

    /// Appends an `Ack` for every lane applied further than last acknowledged (one ack per lane
    /// per batch, cumulative), and returns the lanes' applied offsets.
    pub fn acks(&mut self, out: &mut Vec<PeerMsg>) -> [ReplOffset; BUCKETS] {
        for b in BucketId::all() {
            let applied = self.applied[b.index()];
            if applied > self.acked[b.index()] {
                self.acked[b.index()] = applied;
                out.push(PeerMsg::Ack {
                    bucket: b,
                    offset: applied,
                });
            }
        }
        self.applied
    }

    /// The entries of the resync that `ReplaceEnd { bucket, offset }` closes, with the lane moved
    /// to `offset`: for the caller to check and install ([`apply_resync`]).
    pub fn take_replace(
        &mut self,
        bucket: BucketId,
        offset: ReplOffset,
    ) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>, LinkError> {
        let entries = match self.replacing.take() {
            Some((b, entries)) if b == bucket => entries,
            _ => {
                return Err(LinkError(format!(
                    "lane {bucket}: resync end without begin"
                )))
            }
        };
        self.next(bucket, offset)?;
        Ok(entries)
    }

    /// Applies one message; returns a report for the primary (a mismatch), if any. Acks are the
    /// caller's, once per batch, from `applied`.
    ///
    /// `counters` take the digest checks, mismatches and resyncs; `now` dates session records.
    pub fn handle(
        &mut self,
        msg: PeerMsg,
        store: &Store,
        counters: &Counters,
        now: Instant,
    ) -> Result<Option<PeerMsg>, LinkError> {
        match msg {
            PeerMsg::Put {
                offset,
                key,
                value,
                stamp,
            } => {
                let b = BucketId::of(&key);
                self.next(b, offset)?;
                store.put(key, value);
                if let Some(stamp) = stamp {
                    store.sessions().record(b, stamp, None, now);
                }
            }
            PeerMsg::Remove { offset, key, stamp } => {
                let b = BucketId::of(&key);
                self.next(b, offset)?;
                let old = store.remove(&key);
                if let Some(stamp) = stamp {
                    store.sessions().record(b, stamp, old, now);
                }
            }
            PeerMsg::Check {
                bucket,
                offset,
                digest,
            } => {
                counters.digest_checks.fetch_add(1, Ordering::Relaxed);
                let mut ours = store.digest(bucket);
                if offset == self.applied[bucket.index()] && ours != digest {
                    // Before reporting, make sure the running digest describes the bucket (only
                    // this applier writes to it now, so a recount is exact).
                    if store.recount_bucket(bucket) {
                        tracing::error!(%bucket, "internal error: this bucket's running totals disagreed with its contents; recounted");
                        counters.totals_repaired.fetch_add(1, Ordering::Relaxed);
                        ours = store.digest(bucket);
                    }
                }
                if offset == self.applied[bucket.index()] && ours != digest {
                    counters.digest_mismatches.fetch_add(1, Ordering::Relaxed);
                    warn!(%bucket, offset, ours = %ours, primary = %digest, "digest mismatch");
                    return Ok(Some(PeerMsg::Mismatch {
                        bucket,
                        offset,
                        digest: ours,
                    }));
                }
            }
            PeerMsg::ReplaceBegin(b) => self.replacing = Some((b, Vec::new())),
            PeerMsg::BucketChunk(entries) => match self.replacing.as_mut() {
                Some((b, gathered)) if entries.iter().all(|(k, _)| BucketId::of(k) == *b) => {
                    gathered.extend(entries)
                }
                _ => return Err(LinkError("stray or foreign bucket chunk".into())),
            },
            PeerMsg::ReplaceEnd {
                bucket,
                offset,
                digest,
            } => {
                let entries = self.take_replace(bucket, offset)?;
                apply_resync(store, bucket, entries, digest)?;
                counters.resyncs.fetch_add(1, Ordering::Relaxed);
                info!(%bucket, "bucket resynced from the primary");
            }
            other => return Err(LinkError(format!("unexpected {other:?} on a data stream"))),
        }
        Ok(None)
    }
}

/// Checks a resync's entries against the digest the primary sent and, if they match, makes the
/// bucket hold exactly them. Hashes and walks the whole bucket: a live backup runs it on a
/// blocking thread (`apply_stream`).
pub fn apply_resync(
    store: &Store,
    bucket: BucketId,
    entries: Vec<(bytes::Bytes, bytes::Bytes)>,
    digest: Digest,
) -> Result<(), LinkError> {
    let got = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
    if got != digest {
        return Err(LinkError(format!(
            "lane {bucket}: resync digest {got} != {digest}"
        )));
    }
    store.replace_bucket(bucket, entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::lanes::{CheckOutcome, Lanes};
    use crate::testing::{submit, t0};
    use quickv_proto::Op;

    /// A backup's store and counters.
    struct Backup {
        store: Store,
        counters: Counters,
    }

    fn backup() -> Backup {
        Backup {
            store: Store::new(),
            counters: Counters::default(),
        }
    }

    /// Everything the primary queued on lane `b`, decoded.
    fn drain(rx: &mut std::sync::mpsc::Receiver<Bytes>) -> Vec<PeerMsg> {
        let mut buf = BytesMut::new();
        while let Ok(frame) = rx.try_recv() {
            buf.extend_from_slice(&frame);
        }
        std::iter::from_fn(|| PeerMsg::decode(&mut buf, &Default::default()).expect("valid"))
            .collect()
    }

    /// The integrity loop end to end without I/O: writes flow and are acked; a divergence is caught
    /// by a check, reported, and repaired by resending that bucket only.
    #[test]
    fn a_digest_mismatch_resyncs_only_that_bucket() {
        let primary = Store::new();
        let lanes = Lanes::default();
        let (txs, mut rxs): (Vec<_>, Vec<_>) =
            (0..BUCKETS).map(|_| std::sync::mpsc::channel()).unzip();
        lanes.enable(txs);
        let backup = backup();
        let b = BucketId::of(b"k1");
        let mut applier = StreamApplier::default();

        let Ok(done) = submit(
            &lanes,
            &primary,
            Op::Insert {
                key: Bytes::from("k1"),
                value: Bytes::from("v1"),
            },
            None,
            "",
        ) else {
            panic!("a replicated insert waits for its ack");
        };
        for msg in drain(&mut rxs[b.index()]) {
            assert_eq!(
                applier
                    .handle(msg, &backup.store, &backup.counters, t0())
                    .expect("apply"),
                None
            );
        }
        lanes
            .handle_ack(&primary, b, applier.applied[b.index()], t0())
            .expect("ack");
        assert_eq!(done.try_recv().expect("answered"), quickv_proto::Reply::Ok);
        assert_eq!(primary.digest(b), backup.store.digest(b));

        // Divergence on the backup (a bug or bit rot): an extra key in the same bucket.
        let stray = (0u32..)
            .map(|i| format!("stray{i}"))
            .find(|k| BucketId::of(k.as_bytes()) == b)
            .expect("some key lands in the bucket");
        backup
            .store
            .put(Bytes::from(stray.clone()), Bytes::from("x"));
        let other = BucketId::new((b.index() + 1) % BUCKETS).expect("bucket");
        let other_digest = backup.store.digest(other);

        assert!(matches!(lanes.check(&primary, b), CheckOutcome::Sent));
        let mut reports = Vec::new();
        for msg in drain(&mut rxs[b.index()]) {
            reports.extend(
                applier
                    .handle(msg, &backup.store, &backup.counters, t0())
                    .expect("check"),
            );
        }
        assert!(
            matches!(reports.as_slice(), [PeerMsg::Mismatch { .. }]),
            "{reports:?}"
        );
        lanes.handle_mismatch(&primary, b, t0());
        for msg in drain(&mut rxs[b.index()]) {
            assert_eq!(
                applier
                    .handle(msg, &backup.store, &backup.counters, t0())
                    .expect("resync"),
                None
            );
        }
        lanes
            .handle_ack(&primary, b, applier.applied[b.index()], t0())
            .expect("ack resync");
        assert_eq!(backup.store.digest(b), primary.digest(b), "bucket repaired");
        assert_eq!(backup.store.get(stray.as_bytes()), None);
        assert_eq!(
            backup.store.digest(other),
            other_digest,
            "other buckets untouched"
        );
        assert_eq!(backup.counters.digest_mismatches.load(Ordering::Relaxed), 1);
        assert_eq!(backup.counters.resyncs.load(Ordering::Relaxed), 1);
        assert!(lanes.idle());
    }

    #[test]
    fn lanes_are_ordered_independently_and_gaps_are_refused() {
        let backup = backup();
        let b = BucketId::of(b"k");
        let mut applier = StreamApplier::default();
        let put = |key: &str, offset| PeerMsg::Put {
            offset,
            key: Bytes::from(key.to_string()),
            value: Bytes::from("v"),
            stamp: None,
        };
        assert!(
            applier
                .handle(put("k", 2), &backup.store, &backup.counters, t0())
                .is_err(),
            "offset gap"
        );
        assert!(applier
            .handle(put("k", 1), &backup.store, &backup.counters, t0())
            .is_ok());
        let other = (0u32..)
            .map(|i| format!("f{i}"))
            .find(|k| BucketId::of(k.as_bytes()) != b)
            .expect("a key elsewhere");
        assert!(
            applier
                .handle(put(&other, 1), &backup.store, &backup.counters, t0())
                .is_ok(),
            "another lane starts at 1"
        );
        assert!(
            applier
                .handle(put(&other, 3), &backup.store, &backup.counters, t0())
                .is_err(),
            "gap in that lane"
        );
        assert_eq!(applier.applied[b.index()], 1);
        // A resync's chunk must hold keys of the bucket being replaced.
        applier
            .handle(
                PeerMsg::ReplaceBegin(b),
                &backup.store,
                &backup.counters,
                t0(),
            )
            .expect("begin");
        let chunk = PeerMsg::BucketChunk(vec![(Bytes::from(other), Bytes::new())]);
        assert!(
            applier
                .handle(chunk, &backup.store, &backup.counters, t0())
                .is_err(),
            "foreign key in a resync"
        );
    }

    #[test]
    fn a_pass_applies_what_is_buffered_hands_back_a_resync_and_stops_when_fenced() {
        let backup = backup();
        let b = BucketId::of(b"k");
        let mut buf = BytesMut::new();
        let put = |offset, value: &'static str| PeerMsg::Put {
            offset,
            key: Bytes::from("k"),
            value: Bytes::from(value),
            stamp: None,
        };
        put(1, "a").encode(&mut buf);
        PeerMsg::ReplaceBegin(b).encode(&mut buf);
        PeerMsg::BucketChunk(vec![(Bytes::from("k"), Bytes::from("r"))]).encode(&mut buf);
        let digest = Digest::of_entries([(&Bytes::from("k"), &Bytes::from("r"))]);
        PeerMsg::ReplaceEnd {
            bucket: b,
            offset: 2,
            digest,
        }
        .encode(&mut buf);
        put(3, "c").encode(&mut buf);
        let (limits, mut applier, mut out) = (Default::default(), StreamApplier::default(), vec![]);
        let (store, counters) = (&backup.store, &backup.counters);
        let pass =
            applier.apply_buffered(&mut buf, &limits, store, counters, t0(), || true, &mut out);
        let Ok(Pass::Resync(job)) = pass else {
            panic!("stops at the resync's end: {pass:?}");
        };
        job.apply(store, counters).expect("verified");
        assert_eq!(store.get(b"k"), Some(Bytes::from("r")));
        let pass =
            applier.apply_buffered(&mut buf, &limits, store, counters, t0(), || true, &mut out);
        assert!(matches!(pass, Ok(Pass::Done)), "{pass:?}");
        assert_eq!(store.get(b"k"), Some(Bytes::from("c")));
        applier.acks(&mut out);
        assert!(
            matches!(out.as_slice(), [PeerMsg::Ack { offset: 3, .. }]),
            "one cumulative ack: {out:?}"
        );
        // Fenced: a newer link was admitted; nothing more is applied.
        put(4, "d").encode(&mut buf);
        let pass =
            applier.apply_buffered(&mut buf, &limits, store, counters, t0(), || false, &mut out);
        assert!(pass.is_err());
        assert_eq!(store.get(b"k"), Some(Bytes::from("c")));
    }
}
