//! The primary's graceful stop and a backup's goodbye, as steps of [`PrimaryLink`] (review F7:
//! a primary whose backup is not current waits for it, bounded, and says which way it went).

use std::time::Instant;

use quickv_proto::peer::PeerMsg;

use super::{Ending, Phase, PrimaryLink};
use crate::lanes::Lanes;

impl PrimaryLink {
    /// The lanes may have drained (the driver's wake-up when a lane's queue empties, asked for
    /// by [`PrimaryLink::wants_drained`]).
    pub fn handle_drained(&mut self, now: Instant, lanes: &Lanes) {
        if !lanes.idle() {
            return;
        }
        if let Some(Phase::Leaving { cause, .. }) = self.live.as_ref().map(|l| &l.phase) {
            let cause = cause.clone();
            self.end(cause, now, lanes);
        }
        if matches!(self.ending, Some(Ending::WaitIdle { .. })) {
            self.goodbye(now);
        }
    }

    /// A graceful stop begins: writes are refused from now on; no new link is dialed.
    pub fn handle_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.machine.handle_shutdown();
            self.redial_at = None;
        }
    }

    /// The graceful stop ends the link, in order (module doc: F7).
    pub fn handle_stop(&mut self, now: Instant, lanes: &Lanes) {
        self.handle_shutdown();
        if self.ending.is_some() {
            return;
        }
        if self.catching_up() {
            let limit = self.config.drain;
            tracing::warn!(
                ?limit,
                "graceful stop: the backup is not current yet (its bootstrap is under way) and \
                 this server holds the pair's only full copy; waiting for the bootstrap to verify"
            );
            self.ending = Some(Ending::WaitCurrent { until: now + limit });
        } else {
            self.wait_idle(now, lanes);
        }
    }

    pub(super) fn wait_idle(&mut self, now: Instant, lanes: &Lanes) {
        match lanes.idle() {
            true => self.goodbye(now),
            false => {
                self.ending = Some(Ending::WaitIdle {
                    until: now + self.config.ack_timeout,
                })
            }
        }
    }

    /// Tells the backup we stop; it closes the link once it has read this (closing first could
    /// discard the goodbye in flight).
    pub(super) fn goodbye(&mut self, now: Instant) {
        self.ending = Some(match self.live_conn() {
            Some(conn) => {
                let bye = PeerMsg::Goodbye("primary shutting down".into());
                self.transmits.push_back((conn, bye));
                Ending::Goodbye {
                    until: now + self.config.ack_timeout,
                }
            }
            None => Ending::Done,
        });
    }

    /// The steps of a graceful stop that are due at `now`.
    pub(super) fn ending_due(&mut self, now: Instant, lanes: &Lanes) {
        match self.ending {
            Some(Ending::WaitCurrent { until }) if until <= now => {
                tracing::error!(
                    limit = ?self.config.drain,
                    "graceful stop: the backup did not become current (bootstrap unfinished or \
                     link lost); stopping anyway: the pair's data may be lost with this server"
                );
                self.wait_idle(now, lanes);
            }
            Some(Ending::WaitIdle { until }) if until <= now => self.goodbye(now),
            Some(Ending::Goodbye { until }) if until <= now => {
                self.end("primary shutting down".into(), now, lanes);
                self.ending = Some(Ending::Done);
            }
            _ => {}
        }
    }
}
