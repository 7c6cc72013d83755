//! The primary's side of the peer link as one value without I/O: when to dial, the opening (our
//! hello, the backup's answer and applied marks, settling the lost link's writes), the transfer in
//! either direction and its bucket jobs, opening the lanes, `Synced`, the ack timeout and the
//! digest checks, a backup's goodbye, and the graceful stop. The server's primary driver pumps it
//! (`quickv-server`'s `replication/primary.rs`); the simulator (`tests/sim/primary.rs`) drives the
//! same value on virtual time.
//!
//! # Inputs and outputs
//!
//! Inputs are `handle_*` calls carrying the connection they came on (a [`ConnId`] the driver
//! numbers) and the time; the lanes and the store are passed in, not owned, so that client writes
//! go on taking only their lane's lock: [`PrimaryLink::handle_connected`],
//! [`PrimaryLink::handle_dial_failed`], [`PrimaryLink::handle_ctl`],
//! [`PrimaryLink::handle_snapshot_sent`], [`PrimaryLink::handle_job_done`],
//! [`PrimaryLink::handle_lanes_open`], [`PrimaryLink::handle_conn_closed`],
//! [`PrimaryLink::handle_drained`], [`PrimaryLink::handle_shutdown`],
//! [`PrimaryLink::handle_stop`] and [`PrimaryLink::handle_timeout`]. Outputs are polled:
//! [`PrimaryLink::poll_transmit`] (a control-stream message), [`PrimaryLink::poll_event`]
//! ([`PrimaryEvent`]) and [`PrimaryLink::poll_timeout`]. The data streams' acks do not come here:
//! [`on_data`] hands them to the lanes directly.
//!
//! # Ownership (the same rule as the backup's, review F1 and F6)
//!
//! - Input from a connection that is not the live one changes nothing (counted, dropped).
//! - A bucket received from the backup is installed by a job registered here with its link
//!   generation ([`JobId`]); it stays outstanding until the driver reports it done. A newer
//!   link's opening (whose hello may discard a partial copy, and whose settling and transfer
//!   write the store) waits in `Draining` until no job of an older link is outstanding.
//!
//! # Graceful stop (review F7)
//!
//! [`PrimaryLink::handle_shutdown`] refuses writes at once. [`PrimaryLink::handle_stop`] ends the
//! link in order: while a backup that is not current is being bootstrapped, it waits for the
//! transfer to verify (at most `drain`), and logs whether it did; then it lets the writes in
//! flight finish (at most the ack timeout), says goodbye, and waits (at most the ack timeout) for
//! the backup to close the link. [`PrimaryLink::stopped`] says when it is done.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use quickv_proto::peer::{LaneMark, PeerHello, PeerMsg};

use crate::commit_point::{applied_marks, settle_lost_writes};
use crate::hello::hello_of;
use crate::intake::Intake;
use crate::lanes::Lanes;
use crate::opening::{primary_answered, transfer_ended, Transfer};
use crate::state::{Machine, Transition};
use crate::store::Store;
use crate::timers::LinkTimers;

use crate::backup_events::Jobs;
pub use crate::backup_events::{ConnId, JobId};
pub use crate::primary_events::{on_data, DataStep, PrimaryConfig, PrimaryEvent};

/// Where the live link stands.
#[derive(Debug)]
enum Phase {
    /// Connected; waiting until no job of an older link is outstanding before our hello.
    Draining,
    /// Our hello sent; waiting for the backup's answer.
    Hello { ours: Box<PeerHello> },
    /// The backup's hello admitted; waiting for its applied marks.
    Applied {
        ours: Box<PeerHello>,
        theirs: Box<PeerHello>,
        transfer: Transfer,
    },
    /// Our snapshot is being sent (`sent` once the driver wrote it); waiting for the verdict.
    /// `catching_up`: the backup is not current, so this is the pair's only full copy (F7).
    Sending {
        sent: bool,
        buckets: usize,
        catching_up: bool,
    },
    /// Receiving the backup's snapshot, one bucket job at a time (as the backup does).
    Receiving(Intake),
    /// The driver is opening the data streams and the lanes.
    Opening,
    /// Lanes open, `Synced` sent: the ack timeout and the digest checks run.
    Lanes { timers: LinkTimers },
    /// The backup said goodbye: writes are refused; those in flight may finish until `until`.
    Leaving { until: Instant, cause: String },
}

/// The live link.
#[derive(Debug)]
struct Live {
    conn: ConnId,
    generation: u64,
    /// The link's epoch, once the backup's hello is admitted (the lanes' mark).
    epoch: u64,
    phase: Phase,
    /// When the backup last made progress in the opening (the step timeout counts from it).
    progress: Instant,
}

/// Where a graceful stop stands ([`PrimaryLink::handle_stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Waiting for a bootstrap to a backup that is not current to verify (F7).
    WaitCurrent { until: Instant },
    /// Waiting for the writes in flight.
    WaitIdle { until: Instant },
    /// Goodbye sent; waiting for the backup to close the link.
    Goodbye { until: Instant },
    /// Done: no link, none will be dialed.
    Done,
}

/// The primary's side of the peer link (module doc).
#[derive(Debug)]
pub struct PrimaryLink {
    config: PrimaryConfig,
    machine: Machine,
    live: Option<Live>,
    /// Link generations handed out (the live one is the latest).
    generation: u64,
    /// Jobs started and not yet reported done.
    jobs: Jobs,
    /// When to dial next (no link, no dial under way).
    redial_at: Option<Instant>,
    /// A dial is under way (asked for, not yet reported).
    dialing: bool,
    /// The next redial delay.
    backoff: Duration,
    /// Writes are refused for good (a graceful stop began).
    stopping: bool,
    ending: Option<Ending>,
    transmits: VecDeque<(ConnId, PeerMsg)>,
    events: VecDeque<PrimaryEvent>,
    /// Inputs from connections that are not the live link, dropped.
    late: u64,
}

impl PrimaryLink {
    /// The primary's link with its state machine restored at `epoch` (the state file); the first
    /// dial is due at `now`.
    pub fn new(config: PrimaryConfig, epoch: u64, now: Instant) -> PrimaryLink {
        let mut machine = Machine::new(true);
        machine.restore_epoch(epoch);
        PrimaryLink::with_machine(config, machine, now)
    }

    /// [`PrimaryLink::new`] around a machine built elsewhere (the simulator's stale primary
    /// process, frozen at an older link).
    pub fn with_machine(config: PrimaryConfig, machine: Machine, now: Instant) -> PrimaryLink {
        PrimaryLink {
            backoff: config.backoff_min,
            config,
            machine,
            live: None,
            generation: 0,
            jobs: Jobs::default(),
            redial_at: Some(now),
            dialing: false,
            stopping: false,
            ending: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            late: 0,
        }
    }

    /// The state machine (read only: it changes through the inputs).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// An epoch read from the state file after construction.
    pub fn restore_epoch(&mut self, epoch: u64) {
        self.machine.restore_epoch(epoch);
    }

    /// The next state change to log.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.machine.poll_transition()
    }

    /// The live connection, if any.
    pub fn live_conn(&self) -> Option<ConnId> {
        self.live.as_ref().map(|l| l.conn)
    }

    /// The live link's generation (what its bucket jobs' [`JobId`]s carry), if any.
    pub fn live_generation(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.generation)
    }

    /// Whether the live link has its lanes open (the pair linked).
    pub fn lanes_open(&self) -> bool {
        matches!(
            self.live.as_ref().map(|l| &l.phase),
            Some(Phase::Lanes { .. })
        )
    }

    /// Inputs dropped because their connection was not the live link.
    pub fn late_inputs(&self) -> u64 {
        self.late
    }

    /// Jobs started and not yet reported done.
    pub fn jobs_outstanding(&self) -> usize {
        self.jobs.len()
    }

    /// Whether a bootstrap to a backup that is not current is under way (this server holds the
    /// pair's only full copy until it verifies).
    pub fn catching_up(&self) -> bool {
        matches!(
            self.live.as_ref().map(|l| &l.phase),
            Some(Phase::Sending {
                catching_up: true,
                ..
            })
        )
    }

    /// Whether the value waits for the lanes to drain: the driver reports
    /// [`PrimaryLink::handle_drained`] when they do.
    pub fn wants_drained(&self) -> bool {
        matches!(self.ending, Some(Ending::WaitIdle { .. }))
            || matches!(
                self.live.as_ref().map(|l| &l.phase),
                Some(Phase::Leaving { .. })
            )
    }

    /// Whether a graceful stop is done.
    pub fn stopped(&self) -> bool {
        self.ending == Some(Ending::Done)
    }

    /// Whether the driver should read the next control message of `conn` now: not while a
    /// received bucket already waits behind the one being installed.
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

    /// Whether output waits to be polled (transmits or events).
    pub fn has_output(&self) -> bool {
        !self.transmits.is_empty() || !self.events.is_empty()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<PrimaryEvent> {
        self.events.pop_front()
    }

    /// When [`PrimaryLink::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.live.as_ref().and_then(|l| match &l.phase {
            Phase::Hello { .. } | Phase::Applied { .. } => Some(l.progress + self.config.step),
            Phase::Sending { sent: true, .. } => Some(l.progress + self.config.step),
            Phase::Receiving(intake) if intake.receiving() => Some(l.progress + self.config.step),
            Phase::Lanes { timers } => Some(timers.poll_timeout()),
            Phase::Leaving { until, .. } => Some(*until),
            _ => None,
        });
        let ending = match self.ending {
            Some(
                Ending::WaitCurrent { until }
                | Ending::WaitIdle { until }
                | Ending::Goodbye { until },
            ) => Some(until),
            _ => None,
        };
        let redial = self.redial_at.filter(|_| self.wants_dial());
        [link, ending, redial].into_iter().flatten().min()
    }

    /// A dial succeeded: `conn` becomes the live link. Its opening waits until no job of an
    /// older link is outstanding.
    pub fn handle_connected(&mut self, conn: ConnId, now: Instant, lanes: &Lanes, store: &Store) {
        self.dialing = false;
        if self.stopping {
            return self.close(conn, "primary shutting down".into());
        }
        if self.live.is_some() {
            self.end("superseded by a newer connection".into(), now, lanes);
            self.redial_at = None;
        }
        self.backoff = self.config.backoff_min;
        self.generation += 1;
        self.machine.handle_link_up();
        self.events.push_back(PrimaryEvent::Linked { conn });
        self.live = Some(Live {
            conn,
            generation: self.generation,
            epoch: 0,
            phase: Phase::Draining,
            progress: now,
        });
        self.open(now, store);
    }

    /// A dial failed before any connection: dial again after the backoff.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        self.dialing = false;
        self.schedule_redial(now);
    }

    /// A message on `conn`'s control stream.
    pub fn handle_ctl(
        &mut self,
        conn: ConnId,
        msg: PeerMsg,
        now: Instant,
        lanes: &Lanes,
        store: &Store,
    ) {
        let Some(live) = self.live.as_mut().filter(|l| l.conn == conn) else {
            self.late += 1;
            tracing::debug!(conn, ?msg, "a message of a link that is not the live one");
            return;
        };
        live.progress = now;
        let phase = std::mem::replace(&mut live.phase, Phase::Opening);
        match (phase, msg) {
            (Phase::Hello { ours }, answer) => {
                match primary_answered(&mut self.machine, &ours, answer) {
                    Ok((theirs, epoch, transfer)) => {
                        self.events.push_back(PrimaryEvent::Answered {
                            peer_run_id: theirs.run_id,
                            epoch,
                        });
                        tracing::info!(peer_run_id = %format!("{:016x}", theirs.run_id), peer_keys = theirs.keys, peer_current = theirs.synced, epoch, "warm start");
                        live.epoch = epoch;
                        live.phase = Phase::Applied {
                            ours,
                            theirs,
                            transfer,
                        };
                    }
                    Err(e) => self.end(e, now, lanes),
                }
            }
            (
                Phase::Applied {
                    ours,
                    theirs,
                    transfer,
                },
                msg,
            ) => match applied_marks(msg) {
                Ok(applied) => {
                    // Before anything of the warm start touches the store: no job of an older
                    // link is outstanding (the `Draining` phase saw to it).
                    let settled = settle_lost_writes(lanes, store, &ours, &theirs, &applied, now);
                    self.events.push_back(PrimaryEvent::Settled(settled));
                    self.transfer(transfer, !theirs.synced);
                }
                Err(e) => self.end(e, now, lanes),
            },
            (Phase::Lanes { .. } | Phase::Opening, PeerMsg::Goodbye(reason)) => {
                // Stop taking writes at once; let what is in flight finish before closing.
                let cause = format!("backup said goodbye: {reason}");
                self.machine
                    .handle_link_lost(format!("backup is shutting down: {reason}"));
                live.phase = Phase::Leaving {
                    until: now + self.config.ack_timeout,
                    cause,
                };
                self.handle_drained(now, lanes);
            }
            (_, PeerMsg::Goodbye(reason)) => {
                self.end(format!("backup said goodbye: {reason}"), now, lanes)
            }
            (Phase::Sending { buckets, .. }, PeerMsg::TransferAck { ok: true, .. }) => {
                transfer_ended(&mut self.machine, false);
                self.events.push_back(PrimaryEvent::TransferVerified {
                    buckets,
                    received: false,
                });
                if matches!(self.ending, Some(Ending::WaitCurrent { .. })) {
                    // The backup holds the pair's data now; the stop goes on (no lanes).
                    tracing::info!(
                        "graceful stop: the backup verified its bootstrap and is current; stopping"
                    );
                    return self.wait_idle(now, lanes);
                }
                self.open_lanes();
            }
            (Phase::Sending { .. }, PeerMsg::TransferAck { ok: false, reason }) => self.end(
                format!("the peer rejected the snapshot: {reason}"),
                now,
                lanes,
            ),
            (Phase::Receiving(mut intake), msg) if intake.receiving() => {
                intake.feed(msg);
                live.phase = Phase::Receiving(intake);
                self.receive(now, lanes);
            }
            (_, other) => self.end(
                format!("unexpected {other:?} on the control stream"),
                now,
                lanes,
            ),
        }
    }

    /// The driver opened the data streams of `conn` and the lanes on them: the pair is in sync;
    /// the backup is told, and the ack timeout and digest checks start.
    pub fn handle_lanes_open(&mut self, conn: ConnId, now: Instant) {
        let Some(live) = self.live.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        if !matches!(live.phase, Phase::Opening) {
            return;
        }
        self.machine.handle_synced();
        self.transmits.push_back((conn, PeerMsg::Synced));
        let c = &self.config;
        live.phase = Phase::Lanes {
            timers: LinkTimers::new(now, c.ack_timeout, c.step, c.check_every),
        };
    }

    /// `conn` is gone (closed by either side, timed out, or one of its streams failed).
    pub fn handle_conn_closed(&mut self, conn: ConnId, cause: String, now: Instant, lanes: &Lanes) {
        if self.live.as_ref().is_some_and(|l| l.conn == conn) {
            self.live = None;
            self.lost(conn, cause, now, lanes);
        }
    }

    /// A stream of `conn` failed (a data stream's writer or reader, a bad message): the link
    /// ends and the connection is closed.
    pub fn handle_link_failed(&mut self, conn: ConnId, cause: String, now: Instant, lanes: &Lanes) {
        if self.live.as_ref().is_some_and(|l| l.conn == conn) {
            self.end(cause, now, lanes);
        }
    }

    /// Runs what is due at `now`: a dial, a stalled opening ends, the ack timeout and the digest
    /// checks, a backup's goodbye drained, the steps of a graceful stop.
    pub fn handle_timeout(&mut self, now: Instant, lanes: &Lanes, store: &Store) {
        if self.wants_dial() && self.redial_at.is_some_and(|at| at <= now) {
            self.redial_at = None;
            self.dialing = true;
            self.events.push_back(PrimaryEvent::Dial);
        }
        if let Some(live) = self.live.as_mut() {
            let stalled = match &mut live.phase {
                Phase::Lanes { timers } => match timers.handle_timeout(now, lanes, store) {
                    Ok(0) => None,
                    Ok(n) => {
                        self.events.push_back(PrimaryEvent::DigestChecks(n));
                        None
                    }
                    Err(cause) => Some(cause),
                },
                Phase::Leaving { until, cause } if *until <= now => Some(cause.clone()),
                phase => {
                    let what = match phase {
                        Phase::Hello { .. } => Some("waiting for the backup's hello"),
                        Phase::Applied { .. } => Some("waiting for the backup's applied marks"),
                        Phase::Sending { sent: true, .. } => Some("waiting for the transfer ack"),
                        Phase::Receiving(intake) if intake.receiving() => {
                            Some("receiving a snapshot")
                        }
                        _ => None,
                    };
                    let step = self.config.step;
                    what.filter(|_| now >= live.progress + step)
                        .map(|what| format!("peer link stalled: {what} took over {step:?}"))
                }
            };
            if let Some(cause) = stalled {
                self.end(cause, now, lanes);
            }
        }
        self.ending_due(now, lanes);
    }

    // ---- inside ----

    /// No link, none being dialed, not stopping, and not fenced: a primary refused as stale
    /// never dials again ([`Machine::fenced`]).
    pub(super) fn wants_dial(&self) -> bool {
        self.live.is_none() && !self.dialing && !self.stopping && !self.machine.fenced()
    }

    pub(super) fn schedule_redial(&mut self, now: Instant) {
        if !self.stopping {
            self.redial_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        }
    }

    pub(super) fn close(&mut self, conn: ConnId, reason: String) {
        self.events.push_back(PrimaryEvent::Close { conn, reason });
    }

    /// The live link is gone: writes in flight are indeterminate, the machine leaves sync, a
    /// redial is due after the backoff (or a graceful stop moves on).
    pub(super) fn lost(&mut self, conn: ConnId, cause: String, now: Instant, lanes: &Lanes) {
        lanes.fail_all(&cause, now);
        self.machine.handle_link_lost(cause.clone());
        tracing::warn!(conn, %cause, "peer link lost");
        self.events.push_back(PrimaryEvent::Lost { conn, cause });
        self.schedule_redial(now);
        match self.ending {
            Some(Ending::WaitCurrent { .. }) => {
                tracing::error!(
                    "graceful stop: the backup did not become current (link lost); stopping \
                     anyway: the pair's data may be lost with this server"
                );
                self.ending = Some(Ending::Done);
            }
            Some(Ending::WaitIdle { .. } | Ending::Goodbye { .. }) => {
                self.ending = Some(Ending::Done)
            }
            _ => {}
        }
    }

    /// Ends the live link: closes it and leaves sync.
    pub(super) fn end(&mut self, cause: String, now: Instant, lanes: &Lanes) {
        if let Some(l) = self.live.take() {
            self.close(l.conn, cause.clone());
            self.lost(l.conn, cause, now, lanes);
        }
    }

    /// Our hello, once no job of an older link is outstanding (it may discard a partial copy).
    pub(super) fn open(&mut self, now: Instant, store: &Store) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if !matches!(live.phase, Phase::Draining) || self.jobs.older_than(live.generation) {
            return;
        }
        let ours = hello_of(
            true,
            self.config.run_id,
            self.config.pair,
            self.machine.current(),
            self.machine.epoch(),
            store,
            now,
        );
        self.transmits
            .push_back((live.conn, PeerMsg::Hello(Box::new(ours.clone()))));
        live.progress = now;
        live.phase = Phase::Hello {
            ours: Box::new(ours),
        };
    }

    /// The transfer is over: the driver opens the data streams and the lanes.
    pub(super) fn open_lanes(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.phase = Phase::Opening;
        let mark = LaneMark {
            primary_run: self.config.run_id,
            epoch: live.epoch,
            offset: 0,
        };
        self.events.push_back(PrimaryEvent::OpenLanes {
            conn: live.conn,
            mark,
        });
    }
}

#[path = "primary_stop.rs"]
mod stop;
#[path = "primary_transfer.rs"]
mod transfer_steps;

#[cfg(test)]
#[path = "primary_link_tests.rs"]
mod tests;
