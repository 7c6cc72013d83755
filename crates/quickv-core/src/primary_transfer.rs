//! The primary's bootstrap transfer, as steps of [`PrimaryLink`]: our snapshot sent and its
//! verdict, or the backup's snapshot received, each bucket installed by a job registered with
//! its link generation.

use std::time::Instant;

use super::{Phase, PrimaryEvent, PrimaryLink};
use crate::backup_events::{ConnId, JobId};
use crate::intake::{Intake, IntakeStep};
use crate::lanes::Lanes;
use crate::opening::{transfer_ack, transfer_ended, Transfer};
use crate::store::Store;

impl PrimaryLink {
    /// The driver finished writing our snapshot on `conn` (or failed to).
    pub fn handle_snapshot_sent(
        &mut self,
        conn: ConnId,
        result: Result<(), String>,
        now: Instant,
        lanes: &Lanes,
    ) {
        let Some(live) = self.live.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        match (&mut live.phase, result) {
            (Phase::Sending { sent, .. }, Ok(())) => {
                *sent = true;
                live.progress = now;
            }
            (_, Err(e)) => self.end(e, now, lanes),
            _ => {}
        }
    }

    /// A bucket job reported done (the keys it installed, or why it was refused).
    pub fn handle_job_done(
        &mut self,
        id: JobId,
        result: Result<u64, String>,
        now: Instant,
        lanes: &Lanes,
        store: &Store,
    ) {
        if !self.jobs.finish(id) {
            return;
        }
        if let Some(live) = self.live.as_mut().filter(|l| l.generation == id.generation) {
            if let Phase::Receiving(intake) = &mut live.phase {
                if intake.finished(id) {
                    live.progress = now;
                    return match result {
                        Ok(_) => self.receive(now, lanes),
                        Err(e) => self.refuse_transfer(e, now, lanes),
                    };
                }
            }
        }
        self.open(now, store);
    }

    /// The transfer the plan asked for (`catching_up`: the backup is not current).
    pub(super) fn transfer(&mut self, transfer: Transfer, catching_up: bool) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match transfer {
            Transfer::Nothing => self.open_lanes(),
            Transfer::Send(buckets) => {
                live.phase = Phase::Sending {
                    sent: false,
                    buckets: buckets.len(),
                    catching_up,
                };
                let conn = live.conn;
                self.events
                    .push_back(PrimaryEvent::SendSnapshot { conn, buckets });
            }
            Transfer::Receive(buckets) => live.phase = Phase::Receiving(Intake::new(buckets)),
        }
    }

    /// Starts the next bucket job of a received transfer, or ends the transfer once the backup
    /// said `TransferDone` and every job is done.
    pub(super) fn receive(&mut self, now: Instant, lanes: &Lanes) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Phase::Receiving(intake) = &mut live.phase else {
            return;
        };
        match intake.next() {
            IntakeStep::Refused(e) => self.refuse_transfer(e, now, lanes),
            IntakeStep::Wait => {}
            IntakeStep::Apply(job) => {
                let id = self.jobs.start(live.generation);
                intake.started(id);
                self.events.push_back(PrimaryEvent::Apply { id, job });
            }
            IntakeStep::Verified => {
                let buckets = intake.buckets;
                self.transmits.push_back((live.conn, transfer_ack(&Ok(()))));
                transfer_ended(&mut self.machine, true);
                self.events.push_back(PrimaryEvent::TransferVerified {
                    buckets,
                    received: true,
                });
                self.open_lanes();
            }
        }
    }

    /// A received transfer failed: tell the backup and end the link (a job in flight stays
    /// outstanding: the next link waits for it).
    pub(super) fn refuse_transfer(&mut self, reason: String, now: Instant, lanes: &Lanes) {
        if let Some(conn) = self.live_conn() {
            self.transmits
                .push_back((conn, transfer_ack(&Err(reason.clone()))));
        }
        self.end(reason, now, lanes);
    }
}
