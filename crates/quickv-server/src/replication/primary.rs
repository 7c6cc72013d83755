//! The primary's driver: dial the backup with backoff, warm start, bootstrap, open the lanes, then
//! watch acks, the ack timeout and the periodic digest checks until the link ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quickv_net::{BatchWriter, Outbox, Taken};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::replication::dial::dial;
use crate::replication::link::{
    bounded, receive_buckets, send_buckets, send_msgs, step_timeout, LinkError, PeerReader,
};
use crate::replication::Replication;
use crate::tls;
use quickv_core::commit_point::{applied_marks, settle_lost_writes, Marks, Settled};
use quickv_core::lanes::FrameSink;
use quickv_core::opening::{primary_answered, transfer_ended, Transfer};
use quickv_core::resync::ResyncPlan;
use quickv_core::store::{BucketId, BUCKETS};
use quickv_core::timers::LinkTimers;
use quickv_net::tls::{CertPaths, Identity};
use quickv_proto::peer::{LaneMark, PeerHello, PeerMsg};

/// First redial delay after a lost link (or an endpoint that cannot dial).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest redial delay.
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Interval between digest checks of idle lanes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Dials the backup until the replication is stopped; one link at a time.
pub async fn run(repl: Arc<Replication>, endpoint: quinn::Endpoint) {
    let Some(peer) = repl.config.peer else { return };
    let client_cfg = match tls::client_config(
        &CertPaths::new(&repl.config.certs_dir),
        Identity::Peer,
        repl.config.peer_idle_timeout,
        repl.config.peer_keep_alive,
    ) {
        Ok(cfg) => cfg,
        Err(e) => {
            warn!(reason = %e, "cannot build the peer link TLS config; replication disabled");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    while !repl.stop.is_cancelled() {
        let conn = tokio::select! {
            c = dial(&endpoint, &client_cfg, peer) => c,
            _ = repl.stop.cancelled() => break,
        };
        match conn {
            Ok(conn) => {
                backoff = BACKOFF_MIN;
                let cause = match run_link(&repl, &conn).await {
                    Ok(cause) => cause,
                    Err(e) => e.0,
                };
                conn.close(1u32.into(), cause.as_bytes());
                repl.link_lost(&cause);
                warn!(%peer, %cause, "peer link lost");
            }
            Err(e) => warn!(%peer, reason = %e, "cannot dial the backup"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = repl.stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One link's life; returns why it ended. Every await on the link is bounded by the step timeout
/// (see [`link::step_timeout`]), so a peer that stops reading or answering cannot stall us.
async fn run_link(repl: &Arc<Replication>, conn: &quinn::Connection) -> Result<String, LinkError> {
    let step = step_timeout(&repl.config);
    let (mut ctl_send, ctl_recv) = bounded(step, "opening the control stream", async {
        conn.open_bi().await.map_err(LinkError::new)
    })
    .await?;
    let mut ctl = PeerReader::new(ctl_recv, repl.config.limits);
    let not_primary = || LinkError("the primary's driver runs only on a primary".into());
    let side = repl.primary_side().ok_or_else(not_primary)?;
    repl.with_machine(|v| {
        v.link_up = true;
        v.primary().map(|m| m.handle_link_up())
    })
    .ok_or_else(not_primary)?;
    repl.counters.links.fetch_add(1, Ordering::Relaxed);
    let ours = repl.hello().await;
    let hello = [PeerMsg::Hello(Box::new(ours.clone()))];
    bounded(step, "sending the hello", send_msgs(&mut ctl_send, &hello)).await?;
    let answer = bounded(step, "waiting for the backup's hello", ctl.next()).await?;
    let (theirs, epoch, transfer) = repl
        .with_primary(|m| primary_answered(m, &ours, answer))
        .ok_or_else(not_primary)?
        .map_err(LinkError)?;
    let applied =
        applied_marks(bounded(step, "waiting for the backup's applied marks", ctl.next()).await?)
            .map_err(LinkError)?;
    resolve_lost_writes(repl, &ours, &theirs, &applied).await;
    info!(peer_run_id = %format!("{:016x}", theirs.run_id), peer_keys = theirs.keys, peer_current = theirs.synced, epoch, "warm start");
    repl.with_machine(|v| v.peer_run_id = Some(theirs.run_id));
    let buckets = match &transfer {
        Transfer::Nothing => 0,
        Transfer::Send(buckets) => {
            // A backup that is not current gets the pair's only full copy: a graceful stop
            // waits for it (F7).
            side.set_catching_up(!theirs.synced);
            send_buckets(&mut ctl_send, &mut ctl, &repl.store, buckets, step).await?;
            side.set_catching_up(false);
            repl.with_primary(|m| transfer_ended(m, false));
            buckets.len()
        }
        Transfer::Receive(buckets) => {
            receive_buckets(&mut ctl_send, &mut ctl, &repl.store, &side.fence, step).await?;
            repl.with_primary(|m| transfer_ended(m, true));
            *buckets
        }
    };
    if buckets > 0 {
        repl.counters.bootstraps.fetch_add(1, Ordering::Relaxed);
        repl.counters
            .buckets_transferred
            .fetch_add(buckets as u64, Ordering::Relaxed);
    }

    // Open the data streams, then enter sync: the machine admits writes from then on (and only
    // then). Lane b rides stream b mod n: each lane stays ordered, and a burst of writes to many
    // lanes leaves in one write and comes back as one batch of acks.
    let lane_failed = tokio_util::sync::CancellationToken::new();
    let _cancel_readers_on_exit = lane_failed.clone().drop_guard();
    let streams = repl.config.peer_streams.clamp(1, BUCKETS);
    let mut stream_senders = Vec::with_capacity(streams);
    let mut readers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (send, recv) = bounded(step, "opening a data stream", async {
            conn.open_bi().await.map_err(LinkError::new)
        })
        .await?;
        let outbox = Arc::new(Outbox::new());
        stream_senders.push(outbox.clone());
        tokio::spawn(write_lane(send, outbox, lane_failed.clone()));
        readers.push(PeerReader::new(recv, repl.config.limits));
    }
    let senders = BucketId::all()
        .map(|b| OutboxSink(stream_senders[b.index() % streams].clone()))
        .collect();
    let mark = LaneMark {
        primary_run: repl.run_id,
        epoch,
        offset: 0,
    };
    let link = side.lanes.enable_marked(senders, mark);
    for reader in readers {
        tokio::spawn(read_acks(repl.clone(), reader, link, lane_failed.clone()));
    }
    repl.with_primary(|m| m.handle_synced());
    bounded(
        step,
        "sending Synced",
        send_msgs(&mut ctl_send, &[PeerMsg::Synced]),
    )
    .await?;

    // The ack timeout and the digest checks: the core's rules, on one timer.
    let mut timers = LinkTimers::new(
        std::time::Instant::now(),
        repl.config.ack_timeout,
        step,
        CHECK_INTERVAL,
    );
    loop {
        tokio::select! {
            msg = ctl.next() => match msg {
                Ok(PeerMsg::Goodbye(reason)) => {
                    // Stop taking writes at once; let what is in flight finish before closing.
                    repl.with_primary(|m| m.handle_link_lost(format!("backup is shutting down: {reason}")));
                    repl.wait_lanes_idle(repl.config.ack_timeout).await;
                    return Ok(format!("backup said goodbye: {reason}"));
                }
                Ok(other) => return Err(LinkError(format!("unexpected {other:?} on the control stream"))),
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep_until(timers.poll_timeout().into()) => {
                // Dead link: something outstanding and no ack progress for the ack timeout (a
                // resync, which the backup checks and installs whole, gets the step timeout).
                let checks = timers
                    .handle_timeout(std::time::Instant::now(), &side.lanes, &repl.store)
                    .map_err(LinkError)?;
                repl.counters.digest_checks.fetch_add(checks, Ordering::Relaxed);
            }
            _ = lane_failed.cancelled() => {
                return Err(LinkError("a lane of the peer link failed".into()));
            }
            e = conn.closed() => return Err(LinkError(format!("connection closed: {e}"))),
            _ = repl.stop.cancelled() => {
                let bye = [PeerMsg::Goodbye("primary shutting down".into())];
                bounded(step, "sending the goodbye", send_msgs(&mut ctl_send, &bye)).await?;
                let _ = ctl_send.finish();
                // The backup closes the link once it has read the goodbye; closing first could
                // discard the goodbye still in flight.
                let _ = tokio::time::timeout(repl.config.ack_timeout, conn.closed()).await;
                return Ok("primary shutting down".into());
            }
        }
    }
}

/// Settles the writes of the previous link whose acks were lost (the commit point is the backup;
/// see `quickv_core::lanes`), before anything of this link's warm start touches the store: kept
/// if the backup applied them (or, restarted, may have and served them), dropped if it never did;
/// all forgotten if this primary is not current (it takes the backup's data whole).
async fn resolve_lost_writes(
    repl: &Replication,
    ours: &PeerHello,
    theirs: &PeerHello,
    applied: &Marks,
) {
    let Some(side) = repl.primary_side() else {
        return;
    };
    let _fence = side.fence.hold().await;
    let now = std::time::Instant::now();
    match settle_lost_writes(&side.lanes, &repl.store, ours, theirs, applied, now) {
        Settled::Discarded(0) => {}
        Settled::Discarded(dropped) => {
            info!(dropped, "writes of the lost link left to the backup's data")
        }
        Settled::Resolved(done) if done.kept + done.dropped == 0 => {}
        Settled::Resolved(done) => info!(
            kept = done.kept,
            dropped = done.dropped,
            backup_current = theirs.synced,
            "writes of the lost link resolved: kept those the backup applied"
        ),
    }
}

/// Writes a data stream's frames in order: whatever the lanes encoded into its outbox since the
/// last write, in one write. A failed write fails the link (the ack timeout would too, later); on
/// any exit the outbox is closed, so lanes refuse writes instead of queueing them for nobody.
async fn write_lane(
    send: quinn::SendStream,
    outbox: Arc<Outbox>,
    link_failed: tokio_util::sync::CancellationToken,
) {
    let mut writer = BatchWriter::new(send);
    loop {
        let taken = tokio::select! {
            t = outbox.take(|frames| writer.take_from(frames)) => t,
            _ = link_failed.cancelled() => break,
        };
        if taken == Taken::Closed {
            break;
        }
        let written = tokio::select! {
            w = writer.flush() => w.is_ok(),
            _ = link_failed.cancelled() => break,
        };
        if !written {
            link_failed.cancel();
            break;
        }
    }
    outbox.close();
}

/// Applies a data stream's acks and mismatch reports until the stream ends or fails; then fails
/// the link it belongs to (and only that one).
///
/// A mismatch pauses the bucket's lane and builds its resync on a blocking thread (see
/// [`crate::replication::resync`]); the build is owned here (a [`JoinSet`] that ends with this
/// reader), and its frames are queued only if this reader's link still holds the lanes. Acks
/// for every other lane keep flowing meanwhile.
async fn read_acks(
    repl: Arc<Replication>,
    mut reader: PeerReader,
    link: u64,
    link_failed: tokio_util::sync::CancellationToken,
) {
    let Some(lanes) = repl.primary_side().map(|p| &p.lanes) else {
        return;
    };
    let mut resyncs: JoinSet<(ResyncPlan, Bytes)> = JoinSet::new();
    let outcome = loop {
        let next = tokio::select! {
            m = reader.next() => m,
            Some(built) = resyncs.join_next() => {
                match built {
                    Ok((plan, frames)) => {
                        if lanes.finish_resync(&plan, frames, std::time::Instant::now()) {
                            repl.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => break format!("building a resync failed: {e}"),
                }
                continue;
            }
            _ = link_failed.cancelled() => return,
        };
        let msg = match next {
            Ok(m) => m,
            Err(e) => break e.0,
        };
        match msg {
            PeerMsg::Ack { bucket, offset } => {
                match lanes.handle_ack_on(
                    link,
                    &repl.store,
                    bucket,
                    offset,
                    std::time::Instant::now(),
                ) {
                    Ok(true) => {}
                    Ok(false) => break format!("link {link} superseded"),
                    Err(e) => break e,
                }
            }
            PeerMsg::Mismatch {
                bucket,
                offset,
                digest,
            } => {
                warn!(%bucket, offset, backup_digest = %digest, "digest mismatch; resyncing the bucket");
                repl.counters
                    .digest_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(plan) = lanes.begin_resync(link, bucket) {
                    let (store, limits) = (repl.store.clone(), repl.config.limits);
                    resyncs.spawn_blocking(move || {
                        let frames = plan.build(&store, &limits);
                        (plan, frames)
                    });
                }
            }
            other => break format!("unexpected {other:?} on a data stream"),
        }
    };
    debug!(%outcome, "data stream reader ended");
    link_failed.cancel();
}

/// A lane's sink on a data stream: frames are encoded straight into the stream writer's next
/// batch (no allocation, no channel message per write).
#[derive(Debug)]
struct OutboxSink(Arc<Outbox>);

impl FrameSink for OutboxSink {
    fn push(&self, encode: &mut dyn FnMut(&mut bytes::BytesMut)) -> bool {
        self.0.try_push(false, |buf| encode(buf))
    }
}
