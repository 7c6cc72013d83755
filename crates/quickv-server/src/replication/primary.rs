//! The primary's driver: a pump for the core's link machine ([`PrimaryLink`]). One task dials
//! when the machine asks, reads the control stream and hands every message to the machine,
//! writes what it transmits, runs what it asks (our snapshot, the data streams and the lanes on
//! them), runs bucket jobs on blocking threads and reports them done, and arms the one timer the
//! machine asks for. When to dial, the opening, the transfer and its jobs, the ack timeout, the
//! digest checks, a backup's goodbye and the graceful stop (F7) are the machine's decisions
//! (`quickv_core::primary_link`). The data streams' acks take the lanes' own lock-light path
//! ([`on_data`]) in one reader task per stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv_net::{BatchWriter, Outbox, Taken};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replication::dial::dial;
use crate::replication::link::{
    bounded, send_msgs, send_snapshot, step_timeout, LinkError, PeerReader,
};
use crate::replication::Replication;
use crate::tls;
use quickv_core::commit_point::Settled;
use quickv_core::lanes::FrameSink;
use quickv_core::primary_link::{
    on_data, ConnId, DataStep, JobId, PrimaryConfig, PrimaryEvent, PrimaryLink,
};
use quickv_core::resync::ResyncPlan;
use quickv_core::store::BucketId;
use quickv_core::store::BUCKETS;
use quickv_net::tls::{CertPaths, Identity};
use quickv_proto::peer::{LaneMark, PeerMsg};

/// First redial delay after a lost link (or an endpoint that cannot dial).
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest redial delay.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Interval between digest checks of idle lanes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The primary's link settings from the server's config.
pub fn link_config(config: &crate::config::ServerConfig, run_id: u64, pair: u64) -> PrimaryConfig {
    PrimaryConfig {
        run_id,
        pair,
        ack_timeout: config.ack_timeout,
        step: step_timeout(config),
        check_every: CHECK_INTERVAL,
        drain: config.drain_timeout,
        backoff_min: BACKOFF_MIN,
        backoff_max: BACKOFF_MAX,
    }
}

/// The live connection as the pump holds it.
struct LinkIo {
    id: ConnId,
    conn: quinn::Connection,
    ctl_send: quinn::SendStream,
    /// Cancelled when the link ends (dropped): its stream tasks and watcher stop.
    _cancel: tokio_util::sync::DropGuard,
    cancel: CancellationToken,
}

/// What a link's own tasks report to the pump.
enum Note {
    /// A stream of the connection failed (or its reader ended): the link ends.
    Failed(ConnId, String),
    /// The connection is gone.
    Closed(ConnId, String),
}

/// A dial under way.
type Dialing<'a> = Pin<Box<dyn Future<Output = Result<quinn::Connection, LinkError>> + Send + 'a>>;

/// Pumps the primary's link machine until a graceful stop has ended the link.
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
    let Some(side) = repl.primary_side() else {
        return;
    };
    let step = step_timeout(&repl.config);
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<Note>();
    let mut link: Option<LinkIo> = None;
    let mut ctl: Option<PeerReader> = None;
    let mut dialing: Option<Dialing<'_>> = None;
    // Bucket jobs belong to the machine, not to a link: they run to their end and report, and
    // the machine holds the next link's opening until they have.
    let mut jobs: JoinSet<Result<u64, String>> = JoinSet::new();
    let mut job_ids: HashMap<tokio::task::Id, JobId> = HashMap::new();
    let mut next_conn: ConnId = 0;
    let mut stop_asked = false;
    loop {
        // Carry out what the machine asked for.
        while let Some(action) = repl.primary_poll() {
            match action {
                Action::Transmit(conn, msg) => {
                    let Some(l) = link.as_mut().filter(|l| l.id == conn) else {
                        continue;
                    };
                    let sent = bounded(step, "writing to the backup", async {
                        send_msgs(&mut l.ctl_send, &[msg]).await
                    })
                    .await;
                    if let Err(e) = sent {
                        repl.primary_input(|p, now, lanes, _| {
                            p.handle_link_failed(conn, e.0, now, lanes)
                        });
                    }
                }
                Action::Event(event) => match event {
                    PrimaryEvent::Dial => {
                        dialing = Some(Box::pin(dial(&endpoint, &client_cfg, peer)));
                    }
                    PrimaryEvent::SendSnapshot { conn, buckets } => {
                        let Some(l) = link.as_mut().filter(|l| l.id == conn) else {
                            continue;
                        };
                        let started = Instant::now();
                        let sent = send_snapshot(
                            &mut l.ctl_send,
                            &repl.store,
                            &buckets,
                            repl.config.limits,
                            step,
                        )
                        .await;
                        if let Ok((keys, bytes)) = &sent {
                            let secs = started.elapsed().as_secs_f64();
                            info!(
                                buckets = buckets.len(),
                                keys,
                                mb = *bytes as f64 / 1e6,
                                secs,
                                mb_per_s = *bytes as f64 / 1e6 / secs.max(1e-9),
                                "bootstrap: snapshot sent"
                            );
                        }
                        let result = sent.map(|_| ()).map_err(|e| e.0);
                        repl.primary_input(|p, now, lanes, _| {
                            p.handle_snapshot_sent(conn, result, now, lanes)
                        });
                    }
                    PrimaryEvent::Apply { id, job } => {
                        let store = repl.store.clone();
                        let handle = jobs.spawn_blocking(move || job.apply(&store, Instant::now()));
                        job_ids.insert(handle.id(), id);
                    }
                    PrimaryEvent::OpenLanes { conn, mark } => {
                        let Some(l) = link.as_mut().filter(|l| l.id == conn) else {
                            continue;
                        };
                        match open_lanes(&repl, l, mark, step, &notes_tx).await {
                            Ok(()) => {
                                repl.primary_input(|p, now, _, _| p.handle_lanes_open(conn, now))
                            }
                            Err(e) => repl.primary_input(|p, now, lanes, _| {
                                p.handle_link_failed(conn, e.0, now, lanes)
                            }),
                        };
                    }
                    PrimaryEvent::Close { conn, reason } => {
                        if let Some(l) = link.take_if(|l| l.id == conn) {
                            l.conn.close(1u32.into(), reason.as_bytes());
                            ctl = None;
                        }
                    }
                    other => repl.primary_note(other),
                },
            }
        }
        if repl.primary_stopped() {
            return;
        }
        // The lanes' "a queue became empty" wake-up, registered before the machine looks.
        let drained = side.drained.0.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        let (wants_drained, reading, next) = repl
            .primary_input(|p, now, lanes, _| {
                if p.wants_drained() {
                    p.handle_drained(now, lanes);
                }
                let reading = link.as_ref().is_some_and(|l| p.wants_ctl(l.id));
                (p.wants_drained(), reading, p.poll_timeout())
            })
            .unwrap_or((false, false, None));
        if repl.primary_pending() {
            continue;
        }
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let conn_id = link.as_ref().map(|l| l.id);
        let read_ctl = async {
            match ctl.as_mut() {
                Some(r) => r.next().await,
                None => std::future::pending().await,
            }
        };
        let dialed = async {
            match dialing.as_mut() {
                Some(d) => d.await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            msg = read_ctl, if reading => Input::Ctl(msg),
            d = dialed => Input::Dialed(d),
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => Input::Job(done),
            Some(note) = notes.recv() => Input::Note(note),
            _ = timer => Input::Timer,
            _ = &mut drained, if wants_drained => Input::Drained,
            _ = repl.stop.cancelled(), if !stop_asked => Input::Stop,
        };
        match input {
            Input::Ctl(msg) => {
                let Some(conn) = conn_id else { continue };
                match msg {
                    Ok(msg) => repl.primary_input(|p, now, lanes, store| {
                        p.handle_ctl(conn, msg, now, lanes, store)
                    }),
                    Err(e) => repl.primary_input(|p, now, lanes, _| {
                        p.handle_link_failed(conn, e.0, now, lanes)
                    }),
                };
            }
            Input::Dialed(result) => {
                dialing = None;
                match connected(result, step).await {
                    Ok((conn, send, recv)) => {
                        next_conn += 1;
                        let id = next_conn;
                        let cancel = CancellationToken::new();
                        tokio::spawn(watch_closed(
                            conn.clone(),
                            id,
                            cancel.clone(),
                            notes_tx.clone(),
                        ));
                        ctl = Some(PeerReader::new(recv, repl.config.limits));
                        link = Some(LinkIo {
                            id,
                            conn,
                            ctl_send: send,
                            _cancel: cancel.clone().drop_guard(),
                            cancel,
                        });
                        repl.primary_input(|p, now, lanes, store| {
                            p.handle_connected(id, now, lanes, store)
                        });
                    }
                    Err(e) => {
                        warn!(%peer, reason = %e, "cannot dial the backup");
                        repl.primary_input(|p, now, _, _| p.handle_dial_failed(now));
                    }
                }
            }
            Input::Job(done) => {
                let (task, result) = match done {
                    Ok((task, result)) => (task, result),
                    Err(e) => (e.id(), Err(format!("a bucket job failed: {e}"))),
                };
                let Some(id) = job_ids.remove(&task) else {
                    continue;
                };
                repl.primary_input(|p, now, lanes, store| {
                    p.handle_job_done(id, result, now, lanes, store)
                });
            }
            Input::Note(Note::Failed(conn, cause)) => {
                repl.primary_input(|p, now, lanes, _| {
                    p.handle_link_failed(conn, cause, now, lanes)
                });
            }
            Input::Note(Note::Closed(conn, cause)) => {
                if link.as_ref().is_some_and(|l| l.id == conn) {
                    link = None;
                    ctl = None;
                }
                repl.primary_input(|p, now, lanes, _| {
                    p.handle_conn_closed(conn, cause, now, lanes)
                });
            }
            Input::Timer => {
                repl.primary_input(|p, now, lanes, store| p.handle_timeout(now, lanes, store));
            }
            Input::Drained => {}
            Input::Stop => {
                stop_asked = true;
                dialing = None;
                repl.primary_input(|p, now, lanes, _| p.handle_stop(now, lanes));
            }
        }
    }
}

/// One input of the pump's wait.
enum Input {
    Ctl(Result<PeerMsg, LinkError>),
    Dialed(Result<quinn::Connection, LinkError>),
    Job(Result<(tokio::task::Id, Result<u64, String>), tokio::task::JoinError>),
    Note(Note),
    Timer,
    Drained,
    Stop,
}

/// What the machine asked for, taken out of its lock.
pub(super) enum Action {
    Transmit(ConnId, PeerMsg),
    Event(PrimaryEvent),
}

/// A dial's connection with its control stream opened.
async fn connected(
    dialed: Result<quinn::Connection, LinkError>,
    step: Duration,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), LinkError> {
    let conn = dialed?;
    let (send, recv) = bounded(step, "opening the control stream", async {
        conn.open_bi().await.map_err(LinkError::new)
    })
    .await?;
    Ok((conn, send, recv))
}

/// Reports the connection's end to the pump (unless the link ended first).
async fn watch_closed(
    conn: quinn::Connection,
    id: ConnId,
    cancel: CancellationToken,
    notes: mpsc::UnboundedSender<Note>,
) {
    tokio::select! {
        e = conn.closed() => {
            let _ = notes.send(Note::Closed(id, format!("connection closed: {e}")));
        }
        _ = cancel.cancelled() => {}
    }
}

impl Replication {
    /// Hands one input to the primary's link machine (`f` gets it, the time, the lanes and the
    /// store); its output is queued for [`Replication::primary_poll`]. `None` on a backup.
    pub(crate) fn primary_input<T>(
        &self,
        f: impl FnOnce(
            &mut PrimaryLink,
            Instant,
            &quickv_core::lanes::Lanes,
            &quickv_core::store::Store,
        ) -> T,
    ) -> Option<T> {
        let side = self.primary_side()?;
        self.with_machine(|v| {
            let link = v.primary()?;
            let out = f(link, Instant::now(), &side.lanes, &self.store);
            Some(out)
        })
    }

    /// The next thing the primary's machine asked for, if any.
    pub(super) fn primary_poll(&self) -> Option<Action> {
        self.with_machine(|v| {
            let link = v.primary()?;
            if let Some((conn, msg)) = link.poll_transmit() {
                return Some(Action::Transmit(conn, msg));
            }
            let event = link.poll_event()?;
            // What status shows about the link, in the machine's order.
            match &event {
                PrimaryEvent::Linked { .. } => v.link_up = true,
                PrimaryEvent::Answered { peer_run_id, .. } => v.peer_run_id = Some(*peer_run_id),
                PrimaryEvent::Lost { .. } => {
                    v.link_up = false;
                    v.peer_run_id = None;
                }
                _ => {}
            }
            Some(Action::Event(event))
        })
    }

    /// Whether the primary's machine has output not yet carried out.
    fn primary_pending(&self) -> bool {
        self.with_machine(|v| v.primary().is_some_and(|l| l.has_output()))
    }

    /// Whether the primary's graceful stop has ended the link.
    fn primary_stopped(&self) -> bool {
        self.with_machine(|v| v.primary().is_none_or(|l| l.stopped()))
    }

    /// Events that only count or log.
    fn primary_note(&self, event: PrimaryEvent) {
        let c = &self.counters;
        match event {
            PrimaryEvent::Linked { conn } => {
                c.links.fetch_add(1, Ordering::Relaxed);
                debug!(conn, "peer link connected");
            }
            PrimaryEvent::TransferVerified { buckets, received } => {
                c.bootstraps.fetch_add(1, Ordering::Relaxed);
                c.buckets_transferred
                    .fetch_add(buckets as u64, Ordering::Relaxed);
                info!(buckets, received, "bootstrap verified");
            }
            PrimaryEvent::DigestChecks(n) => {
                c.digest_checks.fetch_add(n, Ordering::Relaxed);
            }
            PrimaryEvent::Settled(Settled::Discarded(dropped)) if dropped > 0 => {
                info!(dropped, "writes of the lost link left to the backup's data")
            }
            PrimaryEvent::Settled(Settled::Resolved(done)) if done.kept + done.dropped > 0 => {
                info!(
                    kept = done.kept,
                    dropped = done.dropped,
                    "writes of the lost link resolved: kept those the backup applied"
                )
            }
            _ => {}
        }
    }
}

/// Opens the data streams of the link and the lanes on them: lane b rides stream b mod n, so each
/// lane stays ordered and a burst to many lanes leaves in one write.
async fn open_lanes(
    repl: &Arc<Replication>,
    l: &LinkIo,
    mark: LaneMark,
    step: Duration,
    notes: &mpsc::UnboundedSender<Note>,
) -> Result<(), LinkError> {
    let side = repl
        .primary_side()
        .ok_or_else(|| LinkError("the primary's driver runs only on a primary".into()))?;
    let streams = repl.config.peer_streams.clamp(1, BUCKETS);
    let mut outboxes = Vec::with_capacity(streams);
    let mut readers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (send, recv) = bounded(step, "opening a data stream", async {
            l.conn.open_bi().await.map_err(LinkError::new)
        })
        .await?;
        let outbox = Arc::new(Outbox::new());
        outboxes.push(outbox.clone());
        tokio::spawn(write_lane(
            send,
            outbox,
            l.id,
            l.cancel.clone(),
            notes.clone(),
        ));
        readers.push(PeerReader::new(recv, repl.config.limits));
    }
    let senders = BucketId::all()
        .map(|b| OutboxSink(outboxes[b.index() % streams].clone()))
        .collect();
    let gen = side.lanes.enable_marked(senders, mark);
    for reader in readers {
        let task = read_acks(
            repl.clone(),
            reader,
            gen,
            l.id,
            l.cancel.clone(),
            notes.clone(),
        );
        tokio::spawn(task);
    }
    Ok(())
}

/// Writes a data stream's frames in order: whatever the lanes encoded into its outbox since the
/// last write, in one write. A failed write fails the link; on any exit the outbox is closed, so
/// lanes refuse writes instead of queueing them for nobody.
async fn write_lane(
    send: quinn::SendStream,
    outbox: Arc<Outbox>,
    conn: ConnId,
    cancel: CancellationToken,
    notes: mpsc::UnboundedSender<Note>,
) {
    let mut writer = BatchWriter::new(send);
    loop {
        let taken = tokio::select! {
            t = outbox.take(|frames| writer.take_from(frames)) => t,
            _ = cancel.cancelled() => break,
        };
        if taken == Taken::Closed {
            break;
        }
        let written = tokio::select! {
            w = writer.flush() => w.is_ok(),
            _ = cancel.cancelled() => break,
        };
        if !written {
            let _ = notes.send(Note::Failed(conn, "a data stream's write failed".into()));
            break;
        }
    }
    outbox.close();
}

/// Reads a data stream's acks and mismatch reports until the stream ends or fails (then the link
/// fails). Acks take the lanes' path ([`on_data`]); a mismatch's resync is built on a blocking
/// thread owned here (a [`JoinSet`] that ends with this reader) and queued only if this reader's
/// link still holds the lanes. Acks for every other lane keep flowing meanwhile.
async fn read_acks(
    repl: Arc<Replication>,
    mut reader: PeerReader,
    gen: u64,
    conn: ConnId,
    cancel: CancellationToken,
    notes: mpsc::UnboundedSender<Note>,
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
                        if lanes.finish_resync(&plan, frames, Instant::now()) {
                            repl.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => break format!("building a resync failed: {e}"),
                }
                continue;
            }
            _ = cancel.cancelled() => return,
        };
        let msg = match next {
            Ok(m) => m,
            Err(e) => break e.0,
        };
        match on_data(lanes, &repl.store, gen, msg, Instant::now()) {
            DataStep::Done => {}
            DataStep::Superseded => return,
            DataStep::Mismatch { bucket, plan } => {
                warn!(%bucket, "digest mismatch; resyncing the bucket");
                repl.counters
                    .digest_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(plan) = plan {
                    let (store, limits) = (repl.store.clone(), repl.config.limits);
                    resyncs.spawn_blocking(move || {
                        let frames = plan.build(&store, &limits);
                        (plan, frames)
                    });
                }
            }
            DataStep::Failed(e) => break e,
        }
    };
    debug!(%outcome, "data stream reader ended");
    let _ = notes.send(Note::Failed(conn, outcome));
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
