//! Replication: two servers, one truth.
//!
//! A primary and a backup run the same binary. The primary dials the backup over QUIC with mutual
//! TLS (ALPN `quickv-peer/4`, and the peer must present the pair's own server certificate). On the
//! first bidirectional stream, the *control stream*, the two exchange a [`PeerHello`](quickv_proto::peer::PeerHello): role, run
//! id, the pair's identity, the epoch of the latest link, whether their store is known current,
//! key count and the 32 bucket digests. The backup verifies the primary's hello
//! ([`quickv_core::state::admit`]: same pair, not a stale primary from an older epoch) before the connection
//! may replace the live link. From the two
//! hellos both compute the same [`quickv_core::state::Plan`] ([`quickv_core::state::decide`]): whose data wins, and which
//! buckets differ. The side holding the data streams those buckets (bootstrap), the receiver checks
//! each bucket's count and digest, and then the primary opens its data streams (the 32 *lanes*,
//! one per bucket, each with its own offsets, share `peer_streams` of them) and the
//! pair is in `Sync`.
//!
//! In `Sync`, a client write on the primary is decided against the store plus the writes still in
//! flight, given the next offset of its lane, sent, and answered only when the backup's cumulative
//! ack for that lane covers it — only then is it applied to the primary's store (see [`quickv_core::lanes`]).
//! Lanes are independent, so writes to different buckets proceed in parallel and many writes
//! pipeline within a lane. Every lane, busy or idle, is checked periodically: the primary sends its
//! bucket digest at the lane's last offset in lane order, the backup compares, and a mismatch
//! resends that bucket only (counted in status).
//!
//! Failure detection: keep-alives and a short idle timeout on the peer connection, and an ack
//! timeout on lanes with writes outstanding and no ack progress. Either one takes the primary out of `Sync` at once,
//! so later writes are refused (`unavailable`) immediately, and writes in flight answer
//! `indeterminate`. The primary redials with backoff; the next warm start repairs the difference.
//!
//! Who holds the data after a failure: a server is *current* once its store is known to hold the
//! pair's data in this process — it verified a received transfer, or the warm start found both
//! stores equal. "Current" follows the data, never `Synced`, which a lane write on another stream
//! can overtake. A restarted server is empty and not current; it refuses reads until it is. If the
//! primary restarted and the backup is current, the backup's data wins; in every other case the
//! primary's, once it has kept the writes of the lost link the backup applied (the commit point is
//! the backup: `quickv_core::lanes`, docs/replication.md "The commit point").
//!
//! The same link machines run without I/O in `tests/simulation.rs`, a deterministic simulator of
//! the pair under crashes, partitions and reordering, judged by the history checker.
//!
//! The protocol without I/O (the state machine, the lanes, the backup's applier, the transfer,
//! the store and its session records, and each side's link machine: `primary_link`,
//! `backup_link`) is the `quickv_core` crate; [`primary`] and [`backup`] are the tokio pumps that
//! run those machines over QUIC, [`link`] their shared plumbing.

pub mod backup;
pub mod dial;
pub mod epoch_file;
pub mod link;
pub mod oneshot;
pub mod primary;

pub use oneshot::{SubmitOneshot, Submitted};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Role, ServerConfig};
use quickv_core::backup_link::{BackupConfig, BackupLink};
use quickv_core::lanes::{Lanes, ReadNow};
use quickv_core::primary_link::PrimaryLink;
use quickv_core::reply::ReplyTo;
use quickv_core::state::{Machine, State, Transition};
use quickv_core::store::Store;
use quickv_core::Counters;
use quickv_proto::status::{LaneStatus, LastTransition, ReplicationStatus, Status};
use quickv_proto::Op;

/// The replication side of one server (primary or backup), shared by its sessions and drivers.
#[derive(Debug)]
pub struct Replication {
    /// The node's store.
    store: Arc<Store>,
    /// The node's config (role, peer, timeouts).
    config: ServerConfig,
    /// The machine's `writes_allowed`, mirrored after every machine call so the hot path reads an
    /// atomic instead of taking the machine's lock. Written only by [`Replication::with_machine`]:
    /// the machine stays the one source of truth for write admission.
    writes_open: std::sync::atomic::AtomicBool,
    /// The machine's `reads_allowed`, mirrored the same way: every GET checks it, so it must not
    /// take the machine's process-wide lock (issue 13).
    reads_open: std::sync::atomic::AtomicBool,
    /// The state machine (the backup's inside its link machine); locked briefly, never across
    /// an await.
    machine: Mutex<MachineView>,
    /// What only this server's role has: the primary's lanes, or the backup's pump.
    side: Side,
    /// Counters for status.
    counters: Counters,
    /// Cancelled to end the peer link for good (graceful stop finished).
    stop: CancellationToken,
    /// Where the epoch is persisted ([`epoch_file`]), once [`Replication::restore_epoch`] has
    /// read it; unset (nothing persisted) in the simulator and unit tests.
    epoch_file: std::sync::OnceLock<std::path::PathBuf>,
    /// The role's driver task (the primary's dialer, the backup's timer), awaited at the end of
    /// a graceful stop.
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What only one role has (review P3: no field "unused on the backup").
#[derive(Debug)]
enum Side {
    /// The primary's lanes and what its graceful stop waits for.
    Primary(PrimarySide),
    /// The backup's pump: the connections its link machine's output goes to.
    Backup(backup::Pump),
}

/// The primary's part of [`Replication`]: what its write path uses without the machine's lock.
#[derive(Debug)]
struct PrimarySide {
    /// The 32 lanes: the write path (decide, send, apply on ack). The link machine gets them
    /// with each input; it does not own them, so a write takes only its lane's lock.
    lanes: Lanes,
    /// Woken whenever a lane's queue becomes empty (the pump tells the machine, which waits for
    /// it after a backup's goodbye and in a graceful stop).
    drained: Arc<oneshot::Notified>,
}

impl PrimarySide {
    fn new(config: &ServerConfig) -> PrimarySide {
        let drained = Arc::new(oneshot::Notified::default());
        PrimarySide {
            lanes: Lanes::new(config.limits).waking(drained.clone()),
            drained,
        }
    }
}

/// The machine plus what status shows about it.
#[derive(Debug)]
struct MachineView {
    /// The role's machine.
    role: RoleMachine,
    /// The peer's run id while linked.
    peer_run_id: Option<u64>,
    /// Whether a peer connection is up.
    link_up: bool,
    /// The latest transition, for status.
    last: Option<Transition>,
}

/// Each role's link machine (each owns its state machine and changes it only through its
/// inputs).
#[derive(Debug)]
enum RoleMachine {
    Primary(Box<PrimaryLink>),
    Backup(Box<BackupLink>),
}

impl MachineView {
    /// The state machine, whatever the role.
    fn machine(&self) -> &Machine {
        match &self.role {
            RoleMachine::Primary(p) => p.machine(),
            RoleMachine::Backup(b) => b.machine(),
        }
    }

    /// The primary's link machine (`None` on a backup).
    fn primary(&mut self) -> Option<&mut PrimaryLink> {
        match &mut self.role {
            RoleMachine::Primary(m) => Some(m),
            RoleMachine::Backup(_) => None,
        }
    }

    /// The backup's link machine (`None` on a primary).
    fn backup(&mut self) -> Option<&mut BackupLink> {
        match &mut self.role {
            RoleMachine::Backup(b) => Some(b),
            RoleMachine::Primary(_) => None,
        }
    }
}

impl Replication {
    /// Replication for a primary or backup node.
    pub fn new(store: Arc<Store>, config: ServerConfig, run_id: u64) -> Arc<Replication> {
        let primary = config.role == Role::Primary;
        let pair_id = pair_id(&config.certs_dir);
        let role = if primary {
            let link = primary::link_config(&config, run_id, pair_id);
            RoleMachine::Primary(Box::new(PrimaryLink::new(link, 0, Instant::now())))
        } else {
            let link = BackupConfig {
                run_id,
                pair: pair_id,
                live_grace: backup::live_link_grace(&config),
                silence: config.ack_timeout,
                step: link::step_timeout(&config),
                drain: config.drain_timeout,
                close_grace: backup::CLOSE_GRACE,
            };
            RoleMachine::Backup(Box::new(BackupLink::new(
                link,
                store.clone(),
                0,
                Instant::now(),
            )))
        };
        let side = match &role {
            RoleMachine::Backup(link) => Side::Backup(backup::Pump::new(link.shared().clone())),
            RoleMachine::Primary(_) => Side::Primary(PrimarySide::new(&config)),
        };
        let view = MachineView {
            role,
            peer_run_id: None,
            link_up: false,
            last: None,
        };
        Arc::new(Replication {
            store,
            config,
            writes_open: std::sync::atomic::AtomicBool::new(view.machine().writes_allowed()),
            reads_open: std::sync::atomic::AtomicBool::new(view.machine().reads_allowed()),
            machine: Mutex::new(view),
            side,
            counters: Counters::default(),
            stop: CancellationToken::new(),
            epoch_file: std::sync::OnceLock::new(),
            driver: Mutex::new(None),
        })
    }

    /// Reads the epoch a previous process of this server persisted (`config.epoch_file()`) and
    /// persists every later change there. The server calls it once at start; an unreadable file
    /// refuses the start (guessing 0 would drop the fence against stale primaries).
    pub fn restore_epoch(&self) -> crate::error::Result<()> {
        let path = self.config.epoch_file();
        let epoch = epoch_file::load(&path)?;
        self.with_machine(|v| match &mut v.role {
            RoleMachine::Primary(p) => p.restore_epoch(epoch),
            RoleMachine::Backup(b) => b.restore_epoch(epoch),
        });
        let _ = self.epoch_file.set(path);
        Ok(())
    }

    /// Runs `f` on the machine and logs every transition it made. An epoch it changed is
    /// persisted before anything else happens (the machine's lock is held meanwhile: once per
    /// link, a few milliseconds at most).
    fn with_machine<T>(&self, f: impl FnOnce(&mut MachineView) -> T) -> T {
        let mut view = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let before = view.machine().epoch();
        let out = f(&mut view);
        let after = view.machine().epoch();
        if after != before {
            if let Some(path) = self.epoch_file.get() {
                if let Err(e) = epoch_file::store(path, after) {
                    tracing::error!(reason = %e, epoch = after, "cannot persist the replication epoch: a restart of this server would forget its fence against stale primaries");
                }
            }
        }
        self.writes_open
            .store(view.machine().writes_allowed(), Ordering::Release);
        self.reads_open
            .store(view.machine().reads_allowed(), Ordering::Release);
        while let Some(t) = match &mut view.role {
            RoleMachine::Primary(p) => p.poll_transition(),
            RoleMachine::Backup(b) => b.poll_transition(),
        } {
            info!(role = %self.config.role, from = %t.from, to = %t.to, cause = %t.cause, "replication state");
            view.last = Some(t);
        }
        out
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.with_machine(|v| v.machine().state().clone())
    }

    /// Whether reads may be answered from the local store.
    ///
    /// Reads the mirror of the machine's answer, published after every machine call (no lock).
    pub fn reads_allowed(&self) -> bool {
        self.reads_open.load(Ordering::Acquire)
    }

    /// Why reads are refused (taken under the machine's lock: only on the refusal path).
    pub fn read_refusal(&self) -> &'static str {
        self.with_machine(|v| v.machine().read_refusal())
            .unwrap_or("reads are refused while the replication state changes; retry")
    }

    /// The status counters (the simulator's backup applier counts into them too).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A client write, which may carry a session stamp (see `quickv_core::store::sessions`: a
    /// retry gets the original answer and is not applied again): admitted only when the state
    /// machine allows writes (the primary in `Sync`), then replicated; otherwise refused before
    /// anything is sent. `reply_to` names where a write waiting for its ack is answered (a
    /// client stream's sink, or [`oneshot::reply_to`]): it is called once if the write is
    /// queued, and whoever applies the ack answers there; `None` then. `Some(answer)` now.
    pub fn submit(
        &self,
        op: Op,
        session: Option<quickv_proto::SessionWrite>,
        reply_to: impl FnOnce() -> ReplyTo,
    ) -> Option<quickv_proto::Reply> {
        let refusal = || {
            let state = self.state();
            format!(
                "the backup is not in sync (state {state}); writes are refused, reads still work"
            )
        };
        match &self.side {
            Side::Primary(p) if self.writes_open.load(Ordering::Acquire) => {
                p.lanes
                    .submit(&self.store, op, session, refusal, reply_to, Instant::now())
            }
            _ => Some(quickv_proto::Reply::Unavailable(refusal())),
        }
    }

    /// A client read on this server (the caller checked [`Replication::reads_allowed`]). On the
    /// primary, a read of a key with a write in flight waits for that write's ack (`None`: it is
    /// answered at `reply_to()`), and one with a write of unknown fate is refused: see
    /// `quickv_core::lanes` (the commit point is the backup). The backup answers from its store.
    pub fn read(
        &self,
        key: &bytes::Bytes,
        reply_to: impl FnOnce() -> ReplyTo,
    ) -> Option<quickv_proto::Reply> {
        self.read_with(key, reply_to, |read| read.into_reply())
    }

    /// [`Replication::read`] whose immediate answer goes to `answer`, a stored value borrowed
    /// under the map's guard (see [`Lanes::read_with`](quickv_core::lanes::Lanes::read_with)).
    pub fn read_with<R>(
        &self,
        key: &bytes::Bytes,
        reply_to: impl FnOnce() -> ReplyTo,
        answer: impl FnOnce(ReadNow<'_>) -> R,
    ) -> Option<R> {
        match &self.side {
            Side::Primary(p) => p
                .lanes
                .read_with(&self.store, key, reply_to, Instant::now, answer),
            Side::Backup(_) => Some(
                self.store
                    .get_with(key, |value| answer(ReadNow::Stored(value))),
            ),
        }
    }

    /// Starts the role's driver: the primary dials the backup; the backup is dialed (see
    /// [`backup::serve`]) and runs its link machine's timer.
    pub fn start(self: &Arc<Self>, endpoint: quinn::Endpoint) {
        let driver = match self.config.role {
            Role::Primary => tokio::spawn(primary::run(self.clone(), endpoint)),
            _ => tokio::spawn(backup::run_timer(self.clone())),
        };
        *self.driver.lock().unwrap_or_else(|p| p.into_inner()) = Some(driver);
    }

    /// Marks the start of a graceful stop (status shows `shutting_down`); a backup tells its
    /// primary at once.
    pub fn begin_shutdown(self: &Arc<Self>) {
        if self
            .primary_input(|p, _, _, _| p.handle_shutdown())
            .is_none()
        {
            self.backup_input(|l, now| l.handle_shutdown(now));
        }
    }

    /// The primary's part (`None` on a backup).
    fn primary_side(&self) -> Option<&PrimarySide> {
        match &self.side {
            Side::Primary(p) => Some(p),
            Side::Backup(_) => None,
        }
    }

    /// The backup's pump (`None` on a primary).
    fn pump(&self) -> Option<&backup::Pump> {
        match &self.side {
            Side::Backup(pump) => Some(pump),
            Side::Primary(_) => None,
        }
    }

    /// Finishes a graceful stop: the primary's link machine ends the link in order (it waits,
    /// bounded by the drain timeout, for a backup that is being bootstrapped to become current,
    /// then for the writes in flight, then says goodbye; review F7: a primary stopped during its
    /// restarted backup's bootstrap would stop the only full copy; it logs which way it went).
    /// The backup's driver ends with the stop token.
    pub async fn finish_shutdown(&self) {
        self.stop.cancel();
        // Each of the machine's steps is bounded; this bounds the whole, should a write to the
        // peer hang.
        let limit = self.config.drain_timeout
            + 3 * self.config.ack_timeout
            + link::step_timeout(&self.config);
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            if tokio::time::timeout(limit, driver).await.is_err() {
                tracing::error!(?limit, "graceful stop: the peer link did not end in time");
            }
        }
    }

    /// Fills the replication part of `status`: the document's `state`, and its replication
    /// figures (one lock for the machine's, relaxed loads for the counters).
    pub fn fill_status(&self, status: &mut Status) {
        let (state, link_up, peer_run, current, epoch, last, read_refusal) =
            self.with_machine(|v| {
                (
                    v.machine().state().name(),
                    v.link_up,
                    v.peer_run_id,
                    v.machine().current(),
                    v.machine().epoch(),
                    v.last.clone(),
                    v.machine().read_refusal(),
                )
            });
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let lanes = self.lane_status();
        let mut r = ReplicationStatus::default();
        r.link_up = link_up;
        r.peer_run_id = peer_run.map(|id| format!("{id:016x}"));
        r.current = current;
        r.read_refusal = read_refusal.map(String::from);
        r.epoch = epoch;
        r.last_transition = last.map(|t| LastTransition::new(t.from.name(), t.to.name(), t.cause));
        r.lag = lanes.iter().map(|l| l.pending).sum();
        r.unresolved = self
            .primary_side()
            .map_or(0, |p| p.lanes.unresolved() as u64);
        r.lanes = lanes;
        r.links = get(&c.links);
        r.bootstraps = get(&c.bootstraps);
        r.buckets_transferred = get(&c.buckets_transferred);
        r.resyncs = get(&c.resyncs);
        r.digest_checks = get(&c.digest_checks);
        r.digest_mismatches = get(&c.digest_mismatches);
        r.totals_repaired = get(&c.totals_repaired);
        r.digests = self.store.digests().iter().map(|d| d.to_string()).collect();
        status.state = state.to_string();
        status.replication = Some(r);
    }

    /// Per-lane offsets: sent/acked/pending on the primary, applied on the backup.
    fn lane_status(&self) -> Vec<LaneStatus> {
        match &self.side {
            Side::Backup(pump) => pump
                .applied()
                .iter()
                .map(|&applied| LaneStatus::new(applied, applied, 0))
                .collect(),
            Side::Primary(p) => p.lanes.status(),
        }
    }
}

/// The pair's identity as sent in the hello: a hash of the *names* in the pair's server
/// certificate in `certs_dir` (issuer, subject, subject alternative names), which both servers
/// hold. Names, not the certificate's bytes, so that `quickv certs renew` (new key, same names)
/// keeps the identity and a pair rolled to renewed certificates still links. 0 when the
/// certificate cannot be read (unit tests); the TLS handshake has checked it anyway.
pub fn pair_id(certs_dir: &std::path::Path) -> u64 {
    let Ok(cert) = crate::tls::own_server_cert(&quickv_net::tls::CertPaths::new(certs_dir)) else {
        return 0;
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return xxhash_rust::xxh3::xxh3_64(cert.as_ref());
    };
    let mut names = Vec::new();
    names.extend_from_slice(parsed.issuer().as_raw());
    names.extend_from_slice(parsed.subject().as_raw());
    for ext in parsed.extensions() {
        if ext.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME {
            names.extend_from_slice(ext.value);
        }
    }
    xxhash_rust::xxh3::xxh3_64(&names)
}

#[cfg(test)]
mod tests;
