//! The backup's driver: accept the primary's link, warm start, bootstrap, then apply each lane's
//! writes in order and acknowledge them cumulatively.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replication::link::{
    bounded, receive_buckets, send_buckets, send_msgs, step_timeout, LinkError, PeerReader,
};
use crate::replication::state::{admit, may_supersede, Refusal, Source};
use crate::replication::Replication;
use crate::store::{BucketId, Digest, BUCKETS};
use quickv_proto::peer::{PeerHello, PeerMsg, ReplOffset};

/// Serves one link from the primary until it ends. The primary's hello is read and verified
/// ([`admit`]: same pair, not a stale epoch) before the connection touches anything; only then
/// does it replace the live link (the primary redials after a restart before the old connection
/// has timed out). A refused primary is told why and closed; the live link goes on.
pub async fn serve(repl: Arc<Replication>, conn: quinn::Connection, shutdown: CancellationToken) {
    let remote = conn.remote_address();
    let step = step_timeout(&repl.config);
    let opened = bounded(step, "waiting for the primary's hello", async {
        let (mut ctl_send, ctl_recv) = conn.accept_bi().await.map_err(LinkError::new)?;
        let mut ctl = PeerReader::new(ctl_recv, repl.config.limits);
        let theirs = ctl.next().await?;
        let PeerMsg::Hello(theirs) = theirs else {
            return Err(LinkError(format!(
                "expected the primary's hello, got {theirs:?}"
            )));
        };
        match verify(&repl, &conn, &theirs) {
            Ok(admitted) => Ok((ctl_send, ctl, theirs, admitted)),
            Err(refusal) => {
                let reason = refusal.to_string();
                warn!(%remote, %reason, "peer link refused");
                let _ = send_msgs(&mut ctl_send, &[PeerMsg::Goodbye(reason.clone())]).await;
                let _ = ctl_send.finish();
                Err(LinkError(reason))
            }
        }
    })
    .await;
    let (ctl_send, ctl, theirs, Admitted { epoch, generation }) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            // Give the goodbye a moment to leave before the close discards it.
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
            conn.close(1u32.into(), e.0.as_bytes());
            debug!(%remote, reason = %e, "peer connection ended before its link was verified");
            return;
        }
    };
    info!(%remote, epoch, "primary connected");
    let link = Admitted { epoch, generation };
    let cause = match run_link(&repl, &conn, ctl_send, ctl, &theirs, link, shutdown).await {
        Ok(cause) => cause,
        Err(e) => e.0,
    };
    conn.close(1u32.into(), cause.as_bytes());
    let still_current = {
        let mut current = repl.backup_link.lock().unwrap_or_else(|p| p.into_inner());
        let mine = current.as_ref().is_some_and(|(g, _)| *g == generation);
        if mine {
            *current = None;
            repl.heard_at.store(0, Ordering::Relaxed);
        }
        mine
    };
    if still_current {
        repl.link_lost(&cause);
        warn!(%remote, %cause, "peer link lost");
    }
}

/// How long a live link must have been silent before a primary that is not current may replace
/// it: the ack timeout plus one digest-check interval (an idle link is heard from at every check).
fn live_link_grace(config: &crate::config::ServerConfig) -> std::time::Duration {
    config.ack_timeout + crate::replication::primary::CHECK_INTERVAL
}

/// How long a refused connection waits for the peer to read our goodbye before closing.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Checks the primary's hello against ours and, if it is admitted, makes this connection the live
/// link: gives it the next link generation (fencing the old link's appliers) and closes the old
/// link. One lock covers the check and the swap.
fn verify(
    repl: &Arc<Replication>,
    conn: &quinn::Connection,
    theirs: &PeerHello,
) -> Result<Admitted, Refusal> {
    let mut current = repl.backup_link.lock().unwrap_or_else(|p| p.into_inner());
    let live = current.as_ref().and_then(|_| repl.heard_ago());
    // The check and the new generation under the machine's lock: a superseded link's driver,
    // which mutates the machine only under the same lock and for its own generation
    // ([`Replication::with_link_machine`]), sees either the old generation or the new one whole.
    let (epoch, generation) = repl.with_machine(|v| {
        let ours = PeerHello {
            primary: false,
            run_id: repl.run_id,
            pair: repl.pair_id,
            epoch: v.machine.epoch(),
            synced: v.machine.current(),
            keys: 0,
            digests: [Digest::default(); BUCKETS],
        };
        let epoch = admit(theirs, &ours)?;
        may_supersede(theirs, live, live_link_grace(&repl.config))?;
        let generation = repl.applying_link.load(Ordering::Acquire) + 1;
        repl.applying_link.store(generation, Ordering::Release);
        Ok::<_, Refusal>((epoch, generation))
    })?;
    if let Some((_, old)) = current.take() {
        old.close(1u32.into(), b"superseded by a newer link from the primary");
    }
    *current = Some((generation, conn.clone()));
    repl.heard(generation);
    drop(current);
    if repl.with_machine(|v| v.link_up) {
        repl.link_lost("superseded by a newer link from the primary");
    }
    Ok(Admitted { epoch, generation })
}

/// A verified link: its epoch (shared with the primary) and its generation on this backup (local,
/// strictly increasing: what fences an older link's appliers).
#[derive(Clone, Copy, Debug)]
struct Admitted {
    epoch: u64,
    generation: u64,
}

async fn run_link(
    repl: &Arc<Replication>,
    conn: &quinn::Connection,
    mut ctl_send: quinn::SendStream,
    mut ctl: PeerReader,
    theirs: &PeerHello,
    link: Admitted,
    shutdown: CancellationToken,
) -> Result<String, LinkError> {
    let step = step_timeout(&repl.config);
    repl.counters.links.fetch_add(1, Ordering::Relaxed);
    let g = link.generation;
    let superseded = || LinkError(format!("link {g} superseded by a newer link"));
    repl.with_link_machine(g, |v| {
        v.link_up = true;
        v.peer_run_id = Some(theirs.run_id);
        v.machine.handle_link_up();
    })
    .ok_or_else(superseded)?;
    let ours = repl.hello().await;
    let hello = [PeerMsg::Hello(Box::new(ours.clone()))];
    bounded(step, "sending the hello", send_msgs(&mut ctl_send, &hello)).await?;
    let plan = repl
        .with_link_machine(g, |v| v.machine.handle_hellos(theirs, &ours, link.epoch))
        .ok_or_else(superseded)?;
    if !plan.buckets.is_empty() {
        match plan.source {
            Source::Primary => {
                receive_buckets(&mut ctl_send, &mut ctl, &repl.store, &repl.fence, step).await?;
                // The copy is verified: this store is the pair's data from here on, whether or
                // not `Synced` ever arrives.
                repl.with_link_machine(g, |v| v.machine.handle_transfer_verified())
                    .ok_or_else(superseded)?;
            }
            Source::Backup => {
                send_buckets(&mut ctl_send, &mut ctl, &repl.store, &plan.buckets, step).await?;
                // The primary acknowledged our snapshot: it has our hello and the epoch.
                repl.with_link_machine(g, |v| v.machine.handle_epoch_confirmed())
                    .ok_or_else(superseded)?;
            }
        }
        repl.counters.bootstraps.fetch_add(1, Ordering::Relaxed);
        repl.counters
            .buckets_transferred
            .fetch_add(plan.buckets.len() as u64, Ordering::Relaxed);
    }
    repl.with_link_machine(g, |_| {
        for applied in &repl.backup_applied {
            applied.store(0, Ordering::Relaxed);
        }
    })
    .ok_or_else(superseded)?;

    let link_failed = CancellationToken::new();
    let _stop_lanes_on_exit = link_failed.clone().drop_guard();
    tokio::spawn(accept_lanes(
        repl.clone(),
        conn.clone(),
        link.generation,
        link_failed.clone(),
    ));

    let mut said_goodbye = false;
    let mut drain_deadline = None;
    loop {
        let drain_timer = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = ctl.next() => match msg? {
                PeerMsg::Synced => {
                    repl.heard(g);
                    repl.with_link_machine(g, |v| v.machine.handle_synced()).ok_or_else(superseded)?;
                }
                PeerMsg::Goodbye(reason) => return Ok(format!("primary said goodbye: {reason}")),
                other => return Err(LinkError(format!("unexpected {other:?} on the control stream"))),
            },
            _ = link_failed.cancelled() => return Err(LinkError("a lane of the peer link failed".into())),
            _ = shutdown.cancelled(), if !said_goodbye => {
                // Tell the primary first, so it refuses writes at once; keep applying what is in
                // flight until it closes the link or the drain time is up.
                said_goodbye = true;
                let bye = [PeerMsg::Goodbye("backup shutting down".into())];
                bounded(step, "sending the goodbye", send_msgs(&mut ctl_send, &bye)).await?;
                drain_deadline = Some(tokio::time::Instant::now() + repl.config.drain_timeout);
            }
            _ = drain_timer => return Ok("backup shut down".into()),
        }
    }
}

/// Accepts the primary's data streams for one link.
async fn accept_lanes(
    repl: Arc<Replication>,
    conn: quinn::Connection,
    generation: u64,
    link_failed: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = link_failed.cancelled() => return,
        };
        let Ok((send, recv)) = stream else { return };
        let reader = PeerReader::new(recv, repl.config.limits);
        let repl = repl.clone();
        let failed = link_failed.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = apply_stream(&repl, send, reader, generation) => r,
                _ = failed.cancelled() => return,
            };
            if let Err(e) = outcome {
                tracing::debug!(reason = %e, "lane ended");
            }
            failed.cancel();
        });
    }
}

/// Applies one data stream's writes in lane order and acknowledges, after each batch read, every
/// lane the batch advanced (one write for all of them).
async fn apply_stream(
    repl: &Replication,
    mut send: quinn::SendStream,
    mut reader: PeerReader,
    generation: u64,
) -> Result<(), LinkError> {
    let mut lanes = StreamApplier::default();
    let mut acked = [0 as ReplOffset; BUCKETS];
    let step = step_timeout(&repl.config);
    loop {
        let mut out = Vec::new();
        let mut heard = false;
        while let Some(msg) = reader.buffered()? {
            heard = true;
            // Fenced: once a newer link is admitted, this one applies nothing more.
            if repl.applying_link.load(Ordering::Acquire) != generation {
                return Err(LinkError(format!(
                    "link {generation} superseded; its writes are no longer applied"
                )));
            }
            if let PeerMsg::ReplaceEnd {
                bucket,
                offset,
                digest,
            } = msg
            {
                // A whole bucket is checked and installed off the runtime (keep-alives and the
                // other streams go on), holding the store's transfer fence so that the job,
                // owned by this stream and awaited here, is never overtaken by a newer link's
                // warm start even if this future is dropped.
                let entries = lanes.take_replace(bucket, offset)?;
                let fence = repl.fence.hold().await;
                let store = repl.store.clone();
                tokio::task::spawn_blocking(move || {
                    let applied = apply_resync(&store, bucket, entries, digest);
                    drop(fence);
                    applied
                })
                .await
                .map_err(|e| LinkError(format!("applying a resync failed: {e}")))??;
                repl.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                info!(%bucket, "bucket resynced from the primary");
                continue;
            }
            if let Some(report) = lanes.handle(msg, repl)? {
                out.push(report);
            }
        }
        for b in BucketId::all() {
            let applied = lanes.applied[b.index()];
            if applied > acked[b.index()] {
                acked[b.index()] = applied;
                out.push(PeerMsg::Ack {
                    bucket: b,
                    offset: applied,
                });
                repl.backup_applied[b.index()].store(applied, Ordering::Relaxed);
            }
        }
        if heard {
            repl.heard(generation);
        }
        if !out.is_empty() {
            bounded(step, "sending acks", send_msgs(&mut send, &out)).await?;
        }
        if !reader.fill().await? {
            return Ok(());
        }
    }
}

/// The backup's side of one data stream, without I/O: applies each lane's messages in offset
/// order and says what to report. A lane is carried by one stream per link, so the offsets here
/// are the lane's.
#[derive(Debug, Default)]
pub struct StreamApplier {
    /// Highest offset applied per lane (the next ack).
    pub applied: [ReplOffset; BUCKETS],
    /// A single-bucket resync being received: its lane and the entries so far.
    replacing: Option<(BucketId, Vec<(bytes::Bytes, bytes::Bytes)>)>,
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
    pub fn handle(
        &mut self,
        msg: PeerMsg,
        repl: &Replication,
    ) -> Result<Option<PeerMsg>, LinkError> {
        self.handle_at(msg, repl, std::time::Instant::now())
    }

    /// [`StreamApplier::handle`] at `now`: session records are made then (a simulator passes
    /// virtual time).
    pub fn handle_at(
        &mut self,
        msg: PeerMsg,
        repl: &Replication,
        now: std::time::Instant,
    ) -> Result<Option<PeerMsg>, LinkError> {
        let store = &repl.store;
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
                repl.counters.digest_checks.fetch_add(1, Ordering::Relaxed);
                let mut ours = store.digest(bucket);
                if offset == self.applied[bucket.index()] && ours != digest {
                    // Before reporting, make sure the running digest describes the bucket (only
                    // this applier writes to it now, so a recount is exact).
                    if store.recount_bucket(bucket) {
                        tracing::error!(%bucket, "internal error: this bucket's running totals disagreed with its contents; recounted");
                        repl.counters
                            .totals_repaired
                            .fetch_add(1, Ordering::Relaxed);
                        ours = store.digest(bucket);
                    }
                }
                if offset == self.applied[bucket.index()] && ours != digest {
                    repl.counters
                        .digest_mismatches
                        .fetch_add(1, Ordering::Relaxed);
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
                repl.counters.resyncs.fetch_add(1, Ordering::Relaxed);
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
    store: &crate::store::Store,
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
    use std::net::SocketAddr;

    use bytes::{Bytes, BytesMut};
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::{Role, ServerConfig};
    use crate::replication::lanes::{CheckOutcome, Lanes};
    use crate::store::{Store, BUCKETS};
    use quickv_proto::Op;

    fn backup() -> Arc<Replication> {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        Replication::new(
            Arc::new(Store::new()),
            ServerConfig::new(Role::Backup, addr),
            7,
        )
    }

    /// Everything the primary queued on lane `b`, decoded.
    fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<PeerMsg> {
        let mut buf = BytesMut::new();
        while let Ok(frame) = rx.try_recv() {
            buf.extend_from_slice(&frame);
        }
        std::iter::from_fn(|| PeerMsg::decode(&mut buf, &Default::default()).expect("valid"))
            .collect()
    }

    /// The integrity loop end to end without I/O: writes flow and are acked; a divergence is caught
    /// by a check, reported, and repaired by resending that bucket only.
    #[tokio::test]
    async fn a_digest_mismatch_resyncs_only_that_bucket() {
        let primary = Store::new();
        let lanes = Lanes::default();
        let (txs, mut rxs): (Vec<_>, Vec<_>) =
            (0..BUCKETS).map(|_| mpsc::unbounded_channel()).unzip();
        lanes.enable(txs);
        let backup = backup();
        let b = BucketId::of(b"k1");
        let mut applier = StreamApplier::default();

        let Ok(done) = lanes.submit(
            &primary,
            Op::Insert {
                key: Bytes::from("k1"),
                value: Bytes::from("v1"),
            },
            String::new,
        ) else {
            panic!("a replicated insert waits for its ack");
        };
        for msg in drain(&mut rxs[b.index()]) {
            assert_eq!(applier.handle(msg, &backup).expect("apply"), None);
        }
        lanes
            .handle_ack(&primary, b, applier.applied[b.index()])
            .expect("ack");
        assert_eq!(done.await.expect("answered"), quickv_proto::Reply::Ok);
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
            reports.extend(applier.handle(msg, &backup).expect("check"));
        }
        assert!(
            matches!(reports.as_slice(), [PeerMsg::Mismatch { .. }]),
            "{reports:?}"
        );
        lanes.handle_mismatch(&primary, b);
        for msg in drain(&mut rxs[b.index()]) {
            assert_eq!(applier.handle(msg, &backup).expect("resync"), None);
        }
        lanes
            .handle_ack(&primary, b, applier.applied[b.index()])
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
        assert!(applier.handle(put("k", 2), &backup).is_err(), "offset gap");
        assert!(applier.handle(put("k", 1), &backup).is_ok());
        let other = (0u32..)
            .map(|i| format!("f{i}"))
            .find(|k| BucketId::of(k.as_bytes()) != b)
            .expect("a key elsewhere");
        assert!(
            applier.handle(put(&other, 1), &backup).is_ok(),
            "another lane starts at 1"
        );
        assert!(
            applier.handle(put(&other, 3), &backup).is_err(),
            "gap in that lane"
        );
        assert_eq!(applier.applied[b.index()], 1);
        // A resync's chunk must hold keys of the bucket being replaced.
        applier
            .handle(PeerMsg::ReplaceBegin(b), &backup)
            .expect("begin");
        let chunk = PeerMsg::BucketChunk(vec![(Bytes::from(other), Bytes::new())]);
        assert!(
            applier.handle(chunk, &backup).is_err(),
            "foreign key in a resync"
        );
    }
}
