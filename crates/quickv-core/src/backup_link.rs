//! The backup's side of the peer link as one value without I/O: admission of a primary's
//! connection, the opening (hello, applied marks, the warm-start plan), the bootstrap transfer and
//! its apply jobs, `Synced`, goodbye and shutdown, and the silent-link timer that fences reads.
//! The server's backup driver pumps it (`quickv-server`'s `replication/backup.rs`); the simulator
//! (`tests/sim/backup.rs`) drives the same value on virtual time.
//!
//! # Inputs and outputs
//!
//! Inputs are `handle_*` calls, each carrying the connection it came on and the time:
//! [`BackupLink::handle_connect`] (a connection's first message, the primary's hello),
//! [`BackupLink::handle_ctl`] (a later control-stream message), [`BackupLink::handle_conn_closed`],
//! [`BackupLink::handle_job_done`], [`BackupLink::handle_snapshot_sent`],
//! [`BackupLink::handle_shutdown`] and [`BackupLink::handle_timeout`]. Outputs are polled:
//! [`BackupLink::poll_transmit`] (a message for a connection's control stream),
//! [`BackupLink::poll_event`] ([`LinkEvent`]: close a connection, run a bucket job, send our
//! snapshot, open the data streams, counters and logs) and [`BackupLink::poll_timeout`].
//!
//! # Ownership (review F1, F6)
//!
//! - Input from a connection that is not the live one (a superseded link's late message, already
//!   in its reader's buffer) changes nothing: it is counted ([`BackupLink::late_inputs`]) and
//!   dropped. Only [`BackupLink::handle_connect`] may replace the live link, after admission.
//! - Every job that writes the store outside the lanes (a bootstrap's bucket, a lane resync) is
//!   registered here with its link generation ([`JobId`]) and stays outstanding until its driver
//!   reports it done. A newer link's opening, whose hello may clear the store and whose transfer
//!   replaces buckets, waits (its `Draining` phase) until no job of an older generation is
//!   outstanding: what one link started ends before the next link touches the store.
//! - The data streams stay on their own lock-light path ([`BackupShared::apply_pass`]): each
//!   pass checks the link generation (an atomic the admission advances) and records its lane
//!   marks under one small lock; no data-stream write takes this value's lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use quickv_proto::peer::{LaneMark, PeerHello, PeerMsg};

use crate::commit_point::backup_opening;
use crate::hello::hello_of;
use crate::intake::{Intake, IntakeStep};
use crate::opening::{backup_plan, transfer_ack, transfer_ended, Transfer};
use crate::state::{admit, may_supersede, Machine, Transition};
use crate::store::{Digest, Store, BUCKETS};

use crate::backup_events::Jobs;
pub use crate::backup_events::{BackupConfig, ConnId, JobId, LinkEvent};
pub use crate::backup_shared::BackupShared;

/// Where the live link stands.
#[derive(Debug)]
enum Phase {
    /// Admitted; waiting until no job of an older link is outstanding before the hello (which may
    /// clear the store) and the transfer.
    Draining,
    /// Receiving the primary's snapshot, one bucket job at a time ([`Intake`]).
    Receiving(Intake),
    /// Our snapshot is being sent (`sent` once the driver wrote it); waiting for the ack.
    AwaitAck { sent: bool, buckets: usize },
    /// The transfer is over (or there was none): data streams are accepted; `Synced` may come.
    Running,
}

/// The live link.
#[derive(Debug)]
struct Live {
    conn: ConnId,
    generation: u64,
    epoch: u64,
    theirs: Box<PeerHello>,
    phase: Phase,
    /// When the primary last made progress in the opening (the step timeout counts from it).
    progress: Instant,
}

/// The backup's side of the peer link (module doc).
#[derive(Debug)]
pub struct BackupLink {
    config: BackupConfig,
    machine: Machine,
    store: Arc<Store>,
    shared: Arc<BackupShared>,
    live: Option<Live>,
    /// Jobs started and not yet reported done, by generation.
    jobs: Jobs,
    /// When reads are fenced if no link has come up by then.
    silent_at: Option<Instant>,
    /// A graceful stop: when the live link is ended at the latest.
    drain_until: Option<Instant>,
    stopping: bool,
    /// Refused connections, closed once their goodbye had time to leave.
    refused: Vec<(Instant, ConnId, String)>,
    transmits: VecDeque<(ConnId, PeerMsg)>,
    events: VecDeque<LinkEvent>,
    /// Inputs from connections that are not the live link, dropped.
    late: u64,
}

impl BackupLink {
    /// The backup's link, without a link yet; `epoch` is what the state file persisted and `now`
    /// the origin of the heard-from clock.
    pub fn new(config: BackupConfig, store: Arc<Store>, epoch: u64, now: Instant) -> BackupLink {
        let mut machine = Machine::new(false);
        machine.restore_epoch(epoch);
        BackupLink {
            config,
            machine,
            store,
            shared: Arc::new(BackupShared::new(now)),
            live: None,
            jobs: Jobs::default(),
            silent_at: None,
            drain_until: None,
            stopping: false,
            refused: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            late: 0,
        }
    }

    /// The state machine (read only: it changes through the inputs).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The next state change to log.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.machine.poll_transition()
    }

    /// An epoch read from the state file after construction.
    pub fn restore_epoch(&mut self, epoch: u64) {
        self.machine.restore_epoch(epoch);
    }

    /// What the data-stream appliers share with this value.
    pub fn shared(&self) -> &Arc<BackupShared> {
        &self.shared
    }

    /// The live connection, if any.
    pub fn live_conn(&self) -> Option<ConnId> {
        self.live.as_ref().map(|l| l.conn)
    }

    /// Inputs dropped because their connection was not the live link (late messages of a
    /// superseded link).
    pub fn late_inputs(&self) -> u64 {
        self.late
    }

    /// Jobs started and not yet reported done.
    pub fn jobs_outstanding(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the driver should read the next control message of `conn` now: not while a
    /// received bucket already waits behind the one being applied (the stream's flow control
    /// then holds the sender, so at most two buckets are in memory).
    pub fn wants_ctl(&self, conn: ConnId) -> bool {
        match &self.live {
            Some(l) if l.conn == conn => {
                !matches!(&l.phase, Phase::Receiving(intake) if intake.backlogged())
            }
            _ => true,
        }
    }

    /// A message for a connection's control stream.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, PeerMsg)> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When [`BackupLink::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let opening = self.live.as_ref().and_then(|l| {
            let waiting = match &l.phase {
                Phase::Receiving(intake) => intake.receiving(),
                Phase::AwaitAck { sent, .. } => *sent,
                Phase::Draining | Phase::Running => false,
            };
            waiting.then_some(l.progress + self.config.step)
        });
        let refused = self.refused.iter().map(|(at, ..)| *at).min();
        [opening, refused, self.silent_at, self.drain_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// A connection's first control message (`first`): the primary's hello, checked before the
    /// connection may touch anything ([`admit`], [`may_supersede`]). Admitted, it replaces the
    /// live link; refused, the primary is told why and the connection closed after a grace.
    pub fn handle_connect(&mut self, conn: ConnId, first: PeerMsg, now: Instant) {
        if self.stopping {
            return self.close(conn, "backup shutting down".into());
        }
        let PeerMsg::Hello(theirs) = first else {
            return self.close(conn, format!("expected the primary's hello, got {first:?}"));
        };
        let ours = PeerHello {
            primary: false,
            run_id: self.config.run_id,
            pair: self.config.pair,
            epoch: self.machine.epoch(),
            synced: self.machine.current(),
            keys: 0,
            digests: [Digest::default(); BUCKETS],
        };
        let heard = self.live.as_ref().and_then(|_| self.shared.heard_ago(now));
        let admitted = admit(&theirs, &ours).and_then(|epoch| {
            may_supersede(&theirs, heard, self.config.live_grace).map(|()| epoch)
        });
        let epoch = match admitted {
            Ok(epoch) => epoch,
            Err(refusal) => {
                let reason = refusal.to_string();
                tracing::warn!(conn, %reason, "peer link refused");
                self.transmits
                    .push_back((conn, PeerMsg::Goodbye(reason.clone())));
                let at = now + self.config.close_grace;
                return self.refused.push((at, conn, reason));
            }
        };
        // Fence the older links' appliers first: from here on none applies anything more.
        let generation = self.shared.advance();
        if let Some(old) = self.live.take() {
            let cause = "superseded by a newer link from the primary".to_string();
            self.close(old.conn, cause.clone());
            self.lost(old.conn, cause);
        }
        self.machine.handle_link_up();
        self.silent_at = None;
        self.shared.heard(generation, now);
        self.events.push_back(LinkEvent::Admitted {
            conn,
            generation,
            epoch,
            peer_run_id: theirs.run_id,
        });
        self.live = Some(Live {
            conn,
            generation,
            epoch,
            theirs,
            phase: Phase::Draining,
            progress: now,
        });
        self.open(now);
    }

    /// A later message on `conn`'s control stream.
    pub fn handle_ctl(&mut self, conn: ConnId, msg: PeerMsg, now: Instant) {
        let Some(live) = self.live.as_mut().filter(|l| l.conn == conn) else {
            self.late += 1;
            tracing::debug!(
                conn,
                ?msg,
                "a message of a link that is not the live one: ignored"
            );
            return;
        };
        live.progress = now;
        if let PeerMsg::Goodbye(reason) = msg {
            return self.end(format!("primary said goodbye: {reason}"), now);
        }
        let phase = std::mem::replace(&mut live.phase, Phase::Running);
        match (phase, msg) {
            (Phase::Receiving(mut intake), msg) if intake.receiving() => {
                intake.feed(msg);
                live.phase = Phase::Receiving(intake);
                self.receive(now);
            }
            (Phase::AwaitAck { buckets, .. }, PeerMsg::TransferAck { ok: true, .. }) => {
                transfer_ended(&mut self.machine, false);
                self.events
                    .push_back(LinkEvent::TransferVerified { buckets });
                self.running();
            }
            (Phase::AwaitAck { .. }, PeerMsg::TransferAck { ok: false, reason }) => {
                self.end(format!("the peer rejected the snapshot: {reason}"), now)
            }
            (Phase::Running, PeerMsg::Synced) => {
                self.shared.heard(live.generation, now);
                self.machine.handle_synced();
            }
            (_, other) => self.end(format!("unexpected {other:?} on the control stream"), now),
        }
    }

    /// `conn` is gone (closed by either side, timed out, or its stream failed).
    pub fn handle_conn_closed(&mut self, conn: ConnId, cause: String, now: Instant) {
        self.refused.retain(|(_, c, _)| *c != conn);
        if self.live.as_ref().is_some_and(|l| l.conn == conn) {
            self.live = None;
            self.lost(conn, cause);
            self.silent_at = Some(now + self.config.silence);
        }
    }

    /// A data stream of link `generation` received a resync whole: registers the job that
    /// installs it (the caller runs it, then reports [`BackupLink::handle_job_done`]). `None`
    /// when that link is superseded: nothing more of it is applied.
    pub fn begin_job(&mut self, generation: u64) -> Option<JobId> {
        self.shared
            .live(generation)
            .then(|| self.jobs.start(generation))
    }

    /// A job reported done (its result: keys installed, or why it was refused).
    pub fn handle_job_done(&mut self, id: JobId, result: Result<u64, String>, now: Instant) {
        if !self.jobs.finish(id) {
            return;
        }
        if let Some(live) = self.live.as_mut().filter(|l| l.generation == id.generation) {
            if let Phase::Receiving(intake) = &mut live.phase {
                if intake.finished(id) {
                    live.progress = now;
                    match result {
                        Ok(_) => self.receive(now),
                        Err(e) => self.refuse_transfer(e, now),
                    }
                    return;
                }
            }
        }
        self.open(now);
    }

    /// The driver finished writing our snapshot on `conn` (or failed to).
    pub fn handle_snapshot_sent(&mut self, conn: ConnId, result: Result<(), String>, now: Instant) {
        let Some(live) = self.live.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        match (&mut live.phase, result) {
            (Phase::AwaitAck { sent, .. }, Ok(())) => {
                *sent = true;
                live.progress = now;
            }
            (_, Err(e)) => self.end(e, now),
            _ => {}
        }
    }

    /// A graceful stop: tell the primary first (it refuses writes at once), keep applying what
    /// is in flight until it closes the link or the drain time is up; admit no new link.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.machine.handle_shutdown();
        if let Some(conn) = self.live_conn() {
            self.transmits
                .push_back((conn, PeerMsg::Goodbye("backup shutting down".into())));
            self.drain_until = Some(now + self.config.drain);
        }
    }

    /// Whether a graceful stop is done: no live link left.
    pub fn stopped(&self) -> bool {
        self.stopping && self.live.is_none()
    }

    /// Runs what is due at `now`: refused connections are closed, a stalled opening ends, a
    /// backup without a link past the ack timeout fences its reads, a drain ends.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (due, later) = std::mem::take(&mut self.refused)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.refused = later;
        for (_, conn, reason) in due {
            self.close(conn, reason);
        }
        if self.silent_at.is_some_and(|at| at <= now) {
            self.silent_at = None;
            if self.live.is_none() {
                self.machine.handle_link_silent();
            }
        }
        if self.drain_until.is_some_and(|at| at <= now) {
            self.drain_until = None;
            if self.live.is_some() {
                self.end("backup shut down".into(), now);
            }
        }
        if let Some(l) = &self.live {
            let what = match &l.phase {
                Phase::Receiving(intake) if intake.receiving() => Some("receiving a snapshot"),
                Phase::AwaitAck { sent: true, .. } => Some("waiting for the transfer ack"),
                _ => None,
            };
            if let Some(what) = what.filter(|_| now >= l.progress + self.config.step) {
                let step = self.config.step;
                self.end(format!("peer link stalled: {what} took over {step:?}"), now);
            }
        }
    }

    // ---- inside ----

    fn close(&mut self, conn: ConnId, reason: String) {
        self.events.push_back(LinkEvent::Close { conn, reason });
    }

    fn lost(&mut self, conn: ConnId, cause: String) {
        self.shared.not_heard();
        self.machine.handle_link_lost(cause.clone());
        self.events.push_back(LinkEvent::Lost { conn, cause });
    }

    /// Ends the live link: closes it and leaves sync.
    fn end(&mut self, cause: String, now: Instant) {
        if let Some(l) = self.live.take() {
            self.close(l.conn, cause.clone());
            self.lost(l.conn, cause);
            self.silent_at = Some(now + self.config.silence);
        }
    }

    /// The opening, once no job of an older link is outstanding: our hello (discarding a
    /// partial copy), our applied marks, the plan, and the transfer's first step.
    fn open(&mut self, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if !matches!(live.phase, Phase::Draining) || self.jobs.older_than(live.generation) {
            return;
        }
        let ours = hello_of(
            false,
            self.config.run_id,
            self.config.pair,
            self.machine.current(),
            self.machine.epoch(),
            &self.store,
            now,
        );
        // Taken after the admission fenced the older links' appliers, under their lock: the
        // primary keeps exactly the writes this store applied.
        let opening = backup_opening(ours.clone(), self.shared.marks());
        self.transmits
            .extend(opening.into_iter().map(|m| (live.conn, m)));
        let (plan, transfer) = backup_plan(&mut self.machine, &live.theirs, &ours, live.epoch);
        live.progress = now;
        match transfer {
            Transfer::Nothing => self.running(),
            Transfer::Receive(buckets) => live.phase = Phase::Receiving(Intake::new(buckets)),
            Transfer::Send(buckets) => {
                live.phase = Phase::AwaitAck {
                    sent: false,
                    buckets: plan.buckets.len(),
                };
                let conn = live.conn;
                self.events
                    .push_back(LinkEvent::SendSnapshot { conn, buckets });
            }
        }
    }

    /// Starts the next bucket job of the transfer, or ends the transfer once the primary said
    /// `TransferDone` and every job is done.
    fn receive(&mut self, now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Phase::Receiving(intake) = &mut live.phase else {
            return;
        };
        match intake.next() {
            IntakeStep::Refused(e) => self.refuse_transfer(e, now),
            IntakeStep::Wait => {}
            IntakeStep::Apply(job) => {
                let id = self.jobs.start(live.generation);
                intake.started(id);
                self.events.push_back(LinkEvent::Apply { id, job });
            }
            IntakeStep::Verified => {
                let buckets = intake.buckets;
                self.transmits.push_back((live.conn, transfer_ack(&Ok(()))));
                // The copy is verified: this store is the pair's data from here on, whether or
                // not `Synced` ever arrives.
                transfer_ended(&mut self.machine, true);
                self.events
                    .push_back(LinkEvent::TransferVerified { buckets });
                self.running();
            }
        }
    }

    /// The transfer failed: tell the primary and end the link (a job in flight stays
    /// outstanding: the next link waits for it).
    fn refuse_transfer(&mut self, reason: String, now: Instant) {
        if let Some(conn) = self.live_conn() {
            self.transmits
                .push_back((conn, transfer_ack(&Err(reason.clone()))));
        }
        self.end(reason, now);
    }

    /// The transfer is over: the data streams may be accepted.
    fn running(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.phase = Phase::Running;
        self.shared.reset_applied();
        let mark = LaneMark {
            primary_run: live.theirs.run_id,
            epoch: live.epoch,
            offset: 0,
        };
        self.events.push_back(LinkEvent::Running {
            conn: live.conn,
            generation: live.generation,
            mark,
        });
    }
}

#[cfg(test)]
#[path = "backup_link_tests.rs"]
mod tests;
