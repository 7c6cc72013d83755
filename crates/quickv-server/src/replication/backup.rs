//! The backup's driver: a pump for the core's link machine ([`BackupLink`]). Each peer
//! connection's task reads its control stream and hands every message to the machine, writes
//! what the machine transmits for it, and runs what it asks (our snapshot, the data streams);
//! bucket jobs run on blocking threads and report back to the machine themselves, whatever
//! happens to their connection; one timer task arms the machine's timeout. Admission, the
//! opening, the transfer's jobs and their fencing, goodbye and the read fence are the machine's
//! decisions (`quickv_core::backup_link`). The data streams apply on their own lock-light path
//! ([`BackupShared::apply_pass`]) and acknowledge cumulatively.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replication::link::{
    bounded, send_msgs, send_snapshot, step_timeout, LinkError, PeerReader,
};
use crate::replication::Replication;
use quickv_core::apply::{Pass, StreamApplier};
use quickv_core::backup_link::{BackupLink, BackupShared, ConnId, LinkEvent};
use quickv_core::store::{BucketId, BUCKETS};
use quickv_proto::peer::{LaneMark, PeerMsg};

/// How long a refused connection waits for the peer to read our goodbye before closing.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a live link must have been silent before a primary that is not current may replace
/// it: the ack timeout plus one digest-check interval (an idle link is heard from at every check).
pub fn live_link_grace(config: &crate::config::ServerConfig) -> std::time::Duration {
    config.ack_timeout + crate::replication::primary::CHECK_INTERVAL
}

/// What the backup's driver keeps beside the link machine: the connections it pumps.
#[derive(Debug)]
pub struct Pump {
    /// Connection ids, never reused.
    next: AtomicU64,
    /// The connections being served, by id: where the machine's output for each goes.
    conns: Mutex<HashMap<ConnId, Mailbox>>,
    /// Woken after every input: the timer re-arms.
    changed: Notify,
    /// The machine's data-stream side (lock-light; see [`BackupShared`]).
    shared: Arc<BackupShared>,
}

/// A connection's share of the machine's output, in order.
#[derive(Debug)]
struct Mailbox {
    to: mpsc::UnboundedSender<Mail>,
    /// Woken after every input, so a task waiting to read (flow control) looks again.
    wake: Arc<Notify>,
}

/// What a connection's task must do for the machine.
#[derive(Debug)]
enum Mail {
    Transmit(PeerMsg),
    SendSnapshot(Vec<BucketId>),
    Running { generation: u64, mark: LaneMark },
    Close(String),
}

impl Pump {
    /// The pump of a backup whose link machine shares `shared` with its data streams.
    pub fn new(shared: Arc<BackupShared>) -> Pump {
        Pump {
            next: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            shared,
        }
    }

    /// Per lane, the offset applied on the live link (status).
    pub fn applied(&self) -> [u64; BUCKETS] {
        self.shared.applied()
    }

    fn register(&self) -> (ConnId, mpsc::UnboundedReceiver<Mail>, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (to, mail) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let mailbox = Mailbox {
            to,
            wake: wake.clone(),
        };
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, mailbox);
        (id, mail, wake)
    }

    fn unregister(&self, id: ConnId) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn post(&self, id: ConnId, mail: Mail) {
        if let Some(m) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            let _ = m.to.send(mail);
        }
    }

    fn wake_all(&self) {
        for m in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            m.wake.notify_one();
        }
        self.changed.notify_one();
    }
}

impl Replication {
    /// Hands one input to the backup's link machine (`f` gets it and the time) and carries out
    /// everything it asked for. `None` on a primary.
    pub(crate) fn backup_input<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut BackupLink, Instant) -> T,
    ) -> Option<T> {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let out = self.with_machine(|v| {
            let link = v.backup()?;
            let out = f(link, Instant::now());
            while let Some(t) = link.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = link.poll_event() {
                events.push(e);
            }
            for e in &events {
                match e {
                    LinkEvent::Admitted { peer_run_id, .. } => {
                        v.link_up = true;
                        v.peer_run_id = Some(*peer_run_id);
                    }
                    LinkEvent::Lost { .. } => {
                        v.link_up = false;
                        v.peer_run_id = None;
                    }
                    _ => {}
                }
            }
            Some(out)
        });
        let pump = self.pump()?;
        for (conn, msg) in transmits {
            pump.post(conn, Mail::Transmit(msg));
        }
        for e in events {
            self.dispatch(pump, e);
        }
        pump.wake_all();
        out
    }

    fn dispatch(self: &Arc<Self>, pump: &Pump, event: LinkEvent) {
        match event {
            LinkEvent::Close { conn, reason } => pump.post(conn, Mail::Close(reason)),
            LinkEvent::Apply { id, job } => {
                // Owned by the machine, not by a connection: the job reports itself done when
                // it ends, and no newer link touches the store before that.
                let repl = self.clone();
                tokio::task::spawn_blocking(move || {
                    let result = job.apply(&repl.store, Instant::now());
                    repl.backup_input(|l, now| l.handle_job_done(id, result, now));
                });
            }
            LinkEvent::SendSnapshot { conn, buckets } => {
                pump.post(conn, Mail::SendSnapshot(buckets))
            }
            LinkEvent::Running {
                conn,
                generation,
                mark,
            } => pump.post(conn, Mail::Running { generation, mark }),
            LinkEvent::Admitted {
                conn,
                epoch,
                generation,
                ..
            } => {
                self.counters.links.fetch_add(1, Ordering::Relaxed);
                info!(conn, epoch, generation, "primary connected");
            }
            LinkEvent::TransferVerified { buckets } => {
                self.counters.bootstraps.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .buckets_transferred
                    .fetch_add(buckets as u64, Ordering::Relaxed);
            }
            LinkEvent::Lost { conn, cause } => warn!(conn, %cause, "peer link lost"),
        }
    }
}

/// Arms the backup's link machine's timer until the replication stops.
pub async fn run_timer(repl: Arc<Replication>) {
    let Some(pump) = repl.pump() else { return };
    loop {
        let changed = pump.changed.notified();
        let next = repl
            .with_machine(|v| v.backup().map(|l| l.poll_timeout()))
            .flatten();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                repl.backup_input(|l, now| l.handle_timeout(now));
            }
            _ = changed => {}
            _ = repl.stop.cancelled() => return,
        }
    }
}

/// Serves one connection from the primary until it ends: its first message goes to the machine's
/// admission, the later ones to the machine; what the machine asks of this connection is done
/// here. The primary's hello is awaited for at most the step timeout.
pub async fn serve(repl: Arc<Replication>, conn: quinn::Connection, shutdown: CancellationToken) {
    let remote = conn.remote_address();
    let Some(pump) = repl.pump() else {
        conn.close(1u32.into(), b"not a backup");
        return;
    };
    let (id, mut mail, wake) = pump.register();
    let cause = drive(&repl, &conn, id, &mut mail, &wake, shutdown).await;
    conn.close(1u32.into(), cause.as_bytes());
    debug!(%remote, conn = id, %cause, "peer connection ended");
    repl.backup_input(|l, now| l.handle_conn_closed(id, cause, now));
    pump.unregister(id);
}

async fn drive(
    repl: &Arc<Replication>,
    conn: &quinn::Connection,
    id: ConnId,
    mail: &mut mpsc::UnboundedReceiver<Mail>,
    wake: &Notify,
    shutdown: CancellationToken,
) -> String {
    let step = step_timeout(&repl.config);
    let limits = repl.config.limits;
    let opened = bounded(step, "waiting for the primary's hello", async {
        let (send, recv) = conn.accept_bi().await.map_err(LinkError::new)?;
        let mut ctl = PeerReader::new(recv, limits);
        let first = ctl.next().await?;
        Ok((send, ctl, first))
    })
    .await;
    let (mut ctl_send, mut ctl, first) = match opened {
        Ok(opened) => opened,
        Err(e) => return e.0,
    };
    repl.backup_input(|l, now| l.handle_connect(id, first, now));
    // The data streams of this connection end with it (or when one of them fails).
    let lanes_failed = CancellationToken::new();
    let _stop_lanes_on_exit = lanes_failed.clone().drop_guard();
    let mut told_shutdown = false;
    loop {
        let woken = wake.notified();
        let reading = repl
            .with_machine(|v| v.backup().map(|l| l.wants_ctl(id)))
            .unwrap_or(false);
        tokio::select! {
            msg = ctl.next(), if reading => match msg {
                Ok(msg) => {
                    repl.backup_input(|l, now| l.handle_ctl(id, msg, now));
                }
                Err(e) => return e.0,
            },
            _ = woken, if !reading => {}
            m = mail.recv() => match m {
                Some(Mail::Transmit(msg)) => {
                    let sent = bounded(step, "writing to the primary", send_msgs(&mut ctl_send, &[msg])).await;
                    if let Err(e) = sent {
                        return e.0;
                    }
                }
                Some(Mail::SendSnapshot(buckets)) => {
                    let sent = send_snapshot(&mut ctl_send, &repl.store, &buckets, limits, step).await;
                    repl.backup_input(|l, now| l.handle_snapshot_sent(id, sent.map(|_| ()).map_err(|e| e.0), now));
                }
                Some(Mail::Running { generation, mark }) => {
                    let Some(shared) = repl.pump().map(|p| p.shared.clone()) else {
                        return "the link machine's data-stream side is missing".into();
                    };
                    tokio::spawn(accept_lanes(repl.clone(), conn.clone(), shared, (generation, mark), lanes_failed.clone()));
                }
                Some(Mail::Close(reason)) => {
                    let _ = ctl_send.finish();
                    return reason;
                }
                None => return "the backup's driver is gone".into(),
            },
            _ = lanes_failed.cancelled() => return "a lane of the peer link failed".into(),
            _ = shutdown.cancelled(), if !told_shutdown => {
                told_shutdown = true;
                repl.backup_input(|l, now| l.handle_shutdown(now));
            }
        }
    }
}

/// Accepts the primary's data streams for one link.
async fn accept_lanes(
    repl: Arc<Replication>,
    conn: quinn::Connection,
    shared: Arc<BackupShared>,
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
        let (repl, shared) = (repl.clone(), shared.clone());
        let failed = link_failed.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = apply_stream(&repl, &shared, send, reader, link) => r,
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
/// lane the batch advanced (one write for all of them). Each pass is fenced by the link
/// generation and records its lane marks ([`BackupShared::apply_pass`]).
async fn apply_stream(
    repl: &Arc<Replication>,
    shared: &BackupShared,
    mut send: quinn::SendStream,
    mut reader: PeerReader,
    (generation, mark): (u64, LaneMark),
) -> Result<(), LinkError> {
    let mut lanes = StreamApplier::default();
    let step = step_timeout(&repl.config);
    let limits = reader.limits;
    loop {
        let mut out = Vec::new();
        let before = reader.buffer().len();
        // One clock read per batch read: it dates the session records the batch's writes make.
        let now = Instant::now();
        loop {
            let pass = shared.apply_pass(
                &mut lanes,
                generation,
                mark,
                reader.buffer(),
                &limits,
                &repl.store,
                &repl.counters,
                now,
                &mut out,
            );
            let Pass::Resync(job) = pass? else { break };
            // A whole bucket is checked and installed off the runtime (keep-alives and the other
            // streams go on). The machine tracks the job by generation: it reports itself done
            // even if this stream is dropped, and no newer link touches the store before.
            let superseded = || LinkError(format!("link {generation} superseded"));
            let id = repl
                .backup_input(|l, _| l.begin_job(generation))
                .flatten()
                .ok_or_else(superseded)?;
            let repl = repl.clone();
            tokio::task::spawn_blocking(move || {
                let applied = job.apply(&repl.store, &repl.counters);
                let report = applied.as_ref().map(|()| 0).map_err(|e| e.to_string());
                repl.backup_input(|l, now| l.handle_job_done(id, report, now));
                applied
            })
            .await
            .map_err(|e| LinkError(format!("applying a resync failed: {e}")))??;
        }
        let applied = lanes.acks(&mut out);
        shared.record_applied(generation, &applied);
        if reader.buffer().len() != before {
            shared.heard(generation, now);
        }
        if !out.is_empty() {
            bounded(step, "sending acks", send_msgs(&mut send, &out)).await?;
        }
        if !reader.fill().await? {
            return Ok(());
        }
    }
}
