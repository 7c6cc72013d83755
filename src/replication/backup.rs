//! The backup's driver: accept the primary's link, warm start, bootstrap, then apply each lane's
//! writes in order and acknowledge them cumulatively.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::protocol::peer::{PeerMsg, ReplOffset};
use crate::replication::link::{receive_buckets, send_buckets, send_msgs, LinkError, PeerReader};
use crate::replication::state::Source;
use crate::replication::Replication;
use crate::store::{BucketId, Digest};

/// Serves one link from the primary until it ends. A newer link replaces an older one: the
/// primary redials after a restart before the old connection has timed out.
pub async fn serve(repl: Arc<Replication>, conn: quinn::Connection, shutdown: CancellationToken) {
    let remote = conn.remote_address();
    let generation = {
        let mut current = repl.backup_link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = current.take() {
            old.close(1u32.into(), b"superseded by a newer link from the primary");
        }
        let generation = repl.counters.links.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some((generation, conn.clone()));
        generation
    };
    if repl.with_machine(|v| v.link_up) {
        repl.link_lost("superseded by a newer link from the primary");
    }
    info!(%remote, "primary connected");
    let cause = match run_link(&repl, &conn, shutdown).await {
        Ok(cause) => cause,
        Err(e) => e.0,
    };
    conn.close(1u32.into(), cause.as_bytes());
    let still_current = {
        let mut current = repl.backup_link.lock().unwrap_or_else(|p| p.into_inner());
        let mine = current.as_ref().is_some_and(|(g, _)| *g == generation);
        if mine {
            *current = None;
        }
        mine
    };
    if still_current {
        repl.link_lost(&cause);
        warn!(%remote, %cause, "peer link lost");
    }
}

async fn run_link(
    repl: &Arc<Replication>,
    conn: &quinn::Connection,
    shutdown: CancellationToken,
) -> Result<String, LinkError> {
    let (mut ctl_send, ctl_recv) = conn.accept_bi().await.map_err(LinkError::new)?;
    let mut ctl = PeerReader::new(ctl_recv, repl.config.limits);
    let theirs = match ctl.next().await? {
        PeerMsg::Hello(h) if h.primary => h,
        PeerMsg::Hello(_) => return Err(LinkError("the peer is also a backup".into())),
        other => {
            return Err(LinkError(format!(
                "expected the primary's hello, got {other:?}"
            )))
        }
    };
    repl.with_machine(|v| {
        v.link_up = true;
        v.peer_run_id = Some(theirs.run_id);
        v.machine.handle_link_up();
    });
    let ours = repl.hello();
    send_msgs(&mut ctl_send, &[PeerMsg::Hello(Box::new(ours.clone()))]).await?;
    let plan = repl.with_machine(|v| v.machine.handle_hellos(&theirs, &ours));
    if !plan.buckets.is_empty() {
        match plan.source {
            Source::Primary => receive_buckets(&mut ctl_send, &mut ctl, &repl.store).await?,
            Source::Backup => {
                send_buckets(&mut ctl_send, &mut ctl, &repl.store, &plan.buckets).await?
            }
        }
        repl.counters.bootstraps.fetch_add(1, Ordering::Relaxed);
        repl.counters
            .buckets_transferred
            .fetch_add(plan.buckets.len() as u64, Ordering::Relaxed);
    }
    for applied in &repl.backup_applied {
        applied.store(0, Ordering::Relaxed);
    }

    let link_failed = CancellationToken::new();
    let _stop_lanes_on_exit = link_failed.clone().drop_guard();
    tokio::spawn(accept_lanes(
        repl.clone(),
        conn.clone(),
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
                PeerMsg::Synced => repl.with_machine(|v| v.machine.handle_synced()),
                PeerMsg::Goodbye(reason) => return Ok(format!("primary said goodbye: {reason}")),
                other => return Err(LinkError(format!("unexpected {other:?} on the control stream"))),
            },
            _ = link_failed.cancelled() => return Err(LinkError("a lane of the peer link failed".into())),
            _ = shutdown.cancelled(), if !said_goodbye => {
                // Tell the primary first, so it refuses writes at once; keep applying what is in
                // flight until it closes the link or the drain time is up.
                said_goodbye = true;
                send_msgs(&mut ctl_send, &[PeerMsg::Goodbye("backup shutting down".into())]).await?;
                drain_deadline = Some(tokio::time::Instant::now() + repl.config.drain_timeout);
            }
            _ = drain_timer => return Ok("backup shut down".into()),
        }
    }
}

/// Accepts the primary's lane streams for one link.
async fn accept_lanes(
    repl: Arc<Replication>,
    conn: quinn::Connection,
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
                r = apply_lane(&repl, send, reader) => r,
                _ = failed.cancelled() => return,
            };
            if let Err(e) = outcome {
                tracing::debug!(reason = %e, "lane ended");
            }
            failed.cancel();
        });
    }
}

/// Applies one lane's writes in order and acknowledges after each batch read.
async fn apply_lane(
    repl: &Replication,
    mut send: quinn::SendStream,
    mut reader: PeerReader,
) -> Result<(), LinkError> {
    let b = match reader.next().await? {
        PeerMsg::LaneStart(b) => b,
        other => return Err(LinkError(format!("expected a lane start, got {other:?}"))),
    };
    let store = &repl.store;
    let mut applied: ReplOffset = 0;
    let mut acked: ReplOffset = 0;
    let mut replacing: Option<Vec<(bytes::Bytes, bytes::Bytes)>> = None;
    let in_order = |offset: ReplOffset, applied: ReplOffset| {
        if offset == applied + 1 {
            Ok(offset)
        } else {
            Err(LinkError(format!(
                "lane {b}: offset {offset} after {applied}"
            )))
        }
    };
    loop {
        let mut out = Vec::new();
        while let Some(msg) = reader.buffered()? {
            match msg {
                PeerMsg::Put { offset, key, value } if BucketId::of(&key) == b => {
                    applied = in_order(offset, applied)?;
                    store.put(key, value);
                }
                PeerMsg::Remove { offset, key } if BucketId::of(&key) == b => {
                    applied = in_order(offset, applied)?;
                    store.remove(&key);
                }
                PeerMsg::Check { offset, digest } => {
                    repl.counters.digest_checks.fetch_add(1, Ordering::Relaxed);
                    let ours = store.digest(b);
                    if offset == applied && ours != digest {
                        repl.counters
                            .digest_mismatches
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(bucket = %b, offset, ours = %ours, primary = %digest, "digest mismatch");
                        out.push(PeerMsg::Mismatch {
                            offset,
                            digest: ours,
                        });
                    }
                }
                PeerMsg::ReplaceBegin => replacing = Some(Vec::new()),
                PeerMsg::BucketChunk(entries) => match replacing.as_mut() {
                    Some(gathered) if entries.iter().all(|(k, _)| BucketId::of(k) == b) => {
                        gathered.extend(entries)
                    }
                    _ => return Err(LinkError(format!("lane {b}: stray bucket chunk"))),
                },
                PeerMsg::ReplaceEnd { offset, digest } => {
                    applied = in_order(offset, applied)?;
                    let entries = replacing.take().unwrap_or_default();
                    let got = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
                    if got != digest {
                        return Err(LinkError(format!(
                            "lane {b}: resync digest {got} != {digest}"
                        )));
                    }
                    store.replace_bucket(b, entries);
                    repl.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                    info!(bucket = %b, "bucket resynced from the primary");
                }
                other => return Err(LinkError(format!("lane {b}: unexpected {other:?}"))),
            }
        }
        if applied > acked {
            out.push(PeerMsg::Ack(applied));
            acked = applied;
            repl.backup_applied[b.index()].store(applied, Ordering::Relaxed);
        }
        if !out.is_empty() {
            send_msgs(&mut send, &out).await?;
        }
        if !reader.fill().await? {
            return Ok(());
        }
    }
}
