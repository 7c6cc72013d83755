//! The backup's driver: accept the primary's link, warm start, bootstrap, then apply each lane's
//! writes in order (`quickv_core::apply`) and acknowledge them cumulatively.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replication::link::{
    bounded, receive_buckets, send_buckets, send_msgs, step_timeout, LinkError, PeerReader,
};
use crate::replication::Replication;
use quickv_core::apply::{Pass, StreamApplier};
use quickv_core::commit_point::{apply_marked, backup_opening};
use quickv_core::opening::{backup_plan, transfer_ended, Transfer};
use quickv_core::state::{admit, may_supersede, Refusal};
use quickv_core::store::{BucketId, Digest, BUCKETS};
use quickv_proto::peer::{LaneMark, PeerHello, PeerMsg};

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
    // What this store applied, per lane, taken after the admission fenced the older links'
    // appliers (under the lock they apply under): the primary keeps exactly those writes.
    let applied = *repl.backup_marks.lock().unwrap_or_else(|p| p.into_inner());
    let hello = backup_opening(ours.clone(), applied);
    bounded(step, "sending the hello", send_msgs(&mut ctl_send, &hello)).await?;
    let (plan, transfer) = repl
        .with_link_machine(g, |v| {
            backup_plan(&mut v.machine, theirs, &ours, link.epoch)
        })
        .ok_or_else(superseded)?;
    let received = match &transfer {
        Transfer::Nothing => None,
        Transfer::Receive(_) => {
            receive_buckets(&mut ctl_send, &mut ctl, &repl.store, &repl.fence, step).await?;
            // The copy is verified: this store is the pair's data from here on, whether or not
            // `Synced` ever arrives.
            Some(true)
        }
        Transfer::Send(buckets) => {
            send_buckets(&mut ctl_send, &mut ctl, &repl.store, buckets, step).await?;
            // The primary acknowledged our snapshot: it has our hello and the epoch.
            Some(false)
        }
    };
    if let Some(received) = received {
        repl.with_link_machine(g, |v| transfer_ended(&mut v.machine, received))
            .ok_or_else(superseded)?;
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
    let mark = LaneMark {
        primary_run: theirs.run_id,
        epoch: link.epoch,
        offset: 0,
    };
    tokio::spawn(accept_lanes(
        repl.clone(),
        conn.clone(),
        (link.generation, mark),
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
    link: (u64, LaneMark),
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
                r = apply_stream(&repl, send, reader, link) => r,
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
///
/// Each write is applied under the lock of the lane marks, after the fence check, and its mark
/// (`link`: the primary's run id and the link's epoch) recorded there: a newer link's report of
/// the marks, taken after its admission, sees every write an older applier got in.
async fn apply_stream(
    repl: &Arc<Replication>,
    mut send: quinn::SendStream,
    mut reader: PeerReader,
    (generation, mark): (u64, LaneMark),
) -> Result<(), LinkError> {
    let mut lanes = StreamApplier::default();
    let step = step_timeout(&repl.config);
    let limits = reader.limits;
    // Fenced: once a newer link is admitted, this one applies nothing more.
    let live = || repl.applying_link.load(Ordering::Acquire) == generation;
    loop {
        let mut out = Vec::new();
        let before = reader.buffer().len();
        // One clock read per batch read: it dates the session records the batch's writes make.
        let now = Instant::now();
        loop {
            // Under the marks' lock: a newer link's report of the marks (taken after its
            // admission) waits for this batch, and sees every write it applied.
            let pass = {
                let mut marks = repl.backup_marks.lock().unwrap_or_else(|p| p.into_inner());
                // Only lanes this pass advanced get the mark: a fenced applier changes none.
                apply_marked(
                    &mut lanes,
                    &mut marks,
                    mark,
                    reader.buffer(),
                    &limits,
                    &repl.store,
                    &repl.counters,
                    now,
                    live,
                    &mut out,
                )
            };
            let Pass::Resync(job) = pass? else { break };
            // A whole bucket is checked and installed off the runtime (keep-alives and the other
            // streams go on), holding the store's transfer fence so that the job, owned by this
            // stream and awaited here, is never overtaken by a newer link's warm start even if
            // this future is dropped.
            let fence = repl.fence.hold().await;
            let repl = repl.clone();
            tokio::task::spawn_blocking(move || {
                let applied = job.apply(&repl.store, &repl.counters);
                drop(fence);
                applied
            })
            .await
            .map_err(|e| LinkError(format!("applying a resync failed: {e}")))??;
        }
        let applied = lanes.acks(&mut out);
        for b in BucketId::all() {
            repl.backup_applied[b.index()].store(applied[b.index()], Ordering::Relaxed);
        }
        if reader.buffer().len() != before {
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
