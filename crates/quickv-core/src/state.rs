//! The replication state machine, without I/O or clocks: drivers feed it events (`handle_*`) and
//! read back what to do and what changed (`poll_*`). Deterministic, so it is tested exhaustively
//! on its own.
//!
//! ```text
//!              link up                 plan needs transfer          transfer verified
//! ColdStart ───────────► WarmStart ─────────────────────► Bootstrap ─────────────────► Sync
//!     ▲                      │  plan: nothing differs                                    │
//!     │                      └──────────────────────────────────────────────────────────►│
//!     │               link lost / ack timeout / peer goodbye (from any state but ShuttingDown)
//!     └──────────────────────────────────────────────────────────────────────────────────┘
//!  any state ── shutdown ──► ShuttingDown (terminal)
//! ```

use std::fmt;

use crate::store::{BucketId, BUCKETS};
use quickv_proto::peer::PeerHello;

/// Where the pair stands, from this server's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// No peer reachable; the primary keeps dialing with backoff, the backup waits to be dialed.
    ColdStart,
    /// The peer is connected; the two exchange hellos to decide who holds the data.
    WarmStart,
    /// Buckets are being copied from the side that holds the data to the other.
    Bootstrap {
        /// True when this server sends, false when it receives.
        sending: bool,
        /// Buckets in the transfer.
        buckets: usize,
    },
    /// Steady state: every write is replicated and acknowledged before it is answered.
    Sync,
    /// Graceful stop under way; terminal.
    ShuttingDown,
}

impl State {
    /// The name used in `status --json` and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            State::ColdStart => "cold_start",
            State::WarmStart => "warm_start",
            State::Bootstrap { .. } => "bootstrap",
            State::Sync => "sync",
            State::ShuttingDown => "shutting_down",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side's data wins in a warm start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The primary's store is copied to the backup.
    Primary,
    /// The backup survived a primary restart: its store is copied to the primary.
    Backup,
}

/// The outcome of a warm start, computed identically on both sides from the two hellos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whose data wins.
    pub source: Source,
    /// Buckets whose digests differ: only these are sent.
    pub buckets: Vec<BucketId>,
}

/// Decides who holds the data. A server is *current* (`synced` in its hello) once its store is
/// known to hold the pair's data in this process's life (see [`Machine::current`]); a restarted
/// server is not, and is empty.
///
/// - primary restarted, backup current → the backup survived: its data wins;
/// - otherwise (backup restarted, both restarted and empty, or a link loss without restart) → the
///   primary's data wins, after the primary has settled the writes of the lost link from the
///   backup's `Applied` marks (`lanes::Lanes::resolve`: the commit point is the backup).
///
/// Either way only buckets whose digests differ are sent; both empty means nothing to send. The
/// exception is a receiver that is not current (it restarted) fed by a current sender: it gets
/// every bucket, because a bucket's session records (`store::sessions`) are not
/// in its digest, and a restarted server has none.
pub fn decide(primary: &PeerHello, backup: &PeerHello) -> Plan {
    let source = if !primary.synced && backup.synced {
        Source::Backup
    } else {
        Source::Primary
    };
    let (sender, receiver) = match source {
        Source::Primary => (primary, backup),
        Source::Backup => (backup, primary),
    };
    let everything = !receiver.synced && sender.synced;
    let buckets = (0..BUCKETS)
        .filter(|&i| everything || primary.digests[i] != backup.digests[i])
        .filter_map(BucketId::new)
        .collect();
    Plan { source, buckets }
}

/// Why a peer's hello was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The two servers are not of the same pair.
    #[error("the peer belongs to another pair (pair id {theirs:016x}, ours {ours:016x})")]
    OtherPair {
        /// The peer's pair id.
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// A primary claiming current data from an older link than the backup's latest one.
    #[error(
        "stale primary: it claims current data from link epoch {primary}, but the backup has \
         since been linked at epoch {backup} (another primary took over); refused"
    )]
    StaleEpoch {
        /// The primary's epoch.
        primary: u64,
        /// The backup's epoch.
        backup: u64,
    },
    /// Two primaries or two backups.
    #[error("both servers claim the same role ({0})")]
    SameRole(&'static str),
    /// A primary that is not current (a fresh process) while the backup's live link was heard
    /// from within the grace period: another primary process is serving; it is not replaced.
    #[error(
        "another primary's link is live (heard {heard_ms} ms ago): a primary that is not current \
         does not replace it; retry once that link is silent"
    )]
    LivePrimary {
        /// How long ago the live link was last heard from, in milliseconds.
        heard_ms: u64,
    },
}

impl Refusal {
    /// Whether a refusal's reason, as sent in a `Goodbye`, says the primary is stale: what the
    /// refused primary reads to stop serving reads (see [`Machine::handle_refused_as_stale`]).
    pub fn is_stale(reason: &str) -> bool {
        reason.starts_with("stale primary")
    }
}

/// Whether a primary whose hello `admit` accepted may replace the backup's live link, last heard
/// from `heard` ago (`None`: no live link). A current primary always may (it redials after a lost
/// link, and `admit` already refused a stale one); a primary that is not current (a fresh
/// process) may only once the live link has been silent for `grace`: otherwise a second primary
/// process would take the backup from the one that is serving.
pub fn may_supersede(
    primary: &PeerHello,
    heard: Option<std::time::Duration>,
    grace: std::time::Duration,
) -> Result<(), Refusal> {
    match heard {
        Some(ago) if !primary.synced && ago < grace => Err(Refusal::LivePrimary {
            heard_ms: ago.as_millis() as u64,
        }),
        _ => Ok(()),
    }
}

/// Checks two hellos before anything of the link is used, and returns the new link's epoch.
///
/// The epoch numbers the links of a pair: each verified link takes `max(primary, backup) + 1`,
/// and both sides adopt it. A primary that claims a current store (`synced`) but has not seen the
/// backup's latest epoch was cut off while another primary linked with the backup: its data is
/// stale, and the link is refused. A restarted primary (not current) is never stale: it takes the
/// data from the backup. Both servers compute the same answer from the same two hellos.
pub fn admit(primary: &PeerHello, backup: &PeerHello) -> Result<u64, Refusal> {
    if !primary.primary {
        return Err(Refusal::SameRole("backup"));
    }
    if backup.primary {
        return Err(Refusal::SameRole("primary"));
    }
    if primary.pair != backup.pair {
        return Err(Refusal::OtherPair {
            theirs: primary.pair,
            ours: backup.pair,
        });
    }
    if primary.synced && primary.epoch < backup.epoch {
        return Err(Refusal::StaleEpoch {
            primary: primary.epoch,
            backup: backup.epoch,
        });
    }
    Ok(primary.epoch.max(backup.epoch).saturating_add(1))
}

/// A state change, for the log and for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why, in words.
    pub cause: String,
}

/// The machine: current state, whether the local store is known current, and pending transitions.
#[derive(Debug)]
pub struct Machine {
    /// True for the primary.
    primary: bool,
    /// The state now.
    state: State,
    /// Whether the local store is known to hold the pair's data: set when a warm start found both
    /// stores identical, or when this side received a transfer and verified every bucket of it
    /// (the backup then acknowledges `TransferAck`, and every later lane write it acks builds on
    /// that copy). It follows the data, never `Synced`, which another stream can overtake. Never
    /// cleared in a process's life: decides warm starts.
    current: bool,
    /// The epoch of the latest link known to both sides (0: none yet in this process). It is what
    /// the hello carries and what [`admit`] fences stale primaries with.
    epoch: u64,
    /// The epoch of the link being set up, before the peer has shown it adopted it. The backup
    /// takes it as its own only on proof that the primary did (a message the primary sends only
    /// after reading the backup's hello: a snapshot, a transfer ack, `Synced`); adopting it any
    /// earlier would make a primary that lost the backup's hello look stale to it for ever.
    proposed_epoch: u64,
    /// A backup that lost its link for longer than the ack timeout stops answering reads until
    /// the next warm start: it can no longer tell whether it still follows the pair.
    reads_fenced: bool,
    /// A primary the backup refused as stale (another primary has linked with it since): its
    /// store is not the pair's data, so it serves no reads until a warm start gives it the data.
    refused_as_stale: bool,
    /// Transitions not yet taken by `poll_transition`.
    transitions: Vec<Transition>,
}

impl Machine {
    /// A machine in `ColdStart`, with a store not known to be current.
    pub fn new(primary: bool) -> Machine {
        Machine {
            primary,
            state: State::ColdStart,
            current: false,
            epoch: 0,
            proposed_epoch: 0,
            reads_fenced: false,
            refused_as_stale: false,
            transitions: Vec::new(),
        }
    }

    /// The epoch a previous process of this server persisted (its state file): the fence a stale
    /// primary is refused with survives the restart.
    pub fn restore_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// The backup refused this primary as stale: another primary linked with it since. This
    /// store is no longer the pair's data: it stops being current (reads are refused, saying
    /// why), and the process is fenced for good: it dials no more ([`Machine::fenced`]). Were it
    /// to redial, it would claim no data, and a backup that is itself not current (restarted,
    /// its bootstrap cut) would admit it and start the pair afresh from two empty stores while
    /// the live primary holds the data. A restarted process rejoins by taking the backup's data.
    pub fn handle_refused_as_stale(&mut self, reason: String) {
        if self.primary && !self.refused_as_stale {
            self.current = false;
            self.refused_as_stale = true;
            let state = self.state.clone();
            self.go(state, format!("refused as a stale primary: {reason}"));
        }
    }

    /// Whether this primary was refused as stale: another primary owns the pair, and this
    /// process must not dial the backup again.
    pub fn fenced(&self) -> bool {
        self.refused_as_stale
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the local store is known current (see the field's doc).
    pub fn current(&self) -> bool {
        self.current
    }

    /// The epoch of the latest verified link, 0 before the first.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reads are answered only from a store known to be current, and not by a backup cut off for
    /// longer than the ack timeout.
    pub fn reads_allowed(&self) -> bool {
        self.current && !self.reads_fenced
    }

    /// Why reads are refused, or `None` when they are allowed.
    pub fn read_refusal(&self) -> Option<&'static str> {
        if self.refused_as_stale {
            Some(
                "stale primary: the backup has linked with another primary since; this server \
                 no longer dials the backup and serves no reads until it is restarted",
            )
        } else if !self.current {
            Some("not yet synced: this server restarted and has not caught up with its peer")
        } else if self.reads_fenced {
            Some(
                "cut off from the primary for longer than the ack timeout: this backup refuses \
                 reads until it has re-synced",
            )
        } else {
            None
        }
    }

    /// Client writes are accepted only by the primary in `Sync`.
    pub fn writes_allowed(&self) -> bool {
        self.primary && self.state == State::Sync
    }

    /// The peer connected.
    pub fn handle_link_up(&mut self) {
        if self.state == State::ColdStart {
            self.go(State::WarmStart, "peer link established".into());
        }
    }

    /// Both hellos are known and verified ([`admit`] gave `epoch`): returns the plan, and enters
    /// `Bootstrap` if buckets must be copied. With nothing to copy both stores are the pair's data
    /// (this one is current) and the machine stays in `WarmStart` until
    /// [`Machine::handle_synced`], which the driver calls at once (the primary after opening its
    /// lanes, so that `sync` in status always means writes are accepted).
    pub fn handle_hellos(&mut self, primary: &PeerHello, backup: &PeerHello, epoch: u64) -> Plan {
        let plan = decide(primary, backup);
        if self.state != State::WarmStart {
            return plan;
        }
        if self.primary {
            // The backup's hello is in hand: the backup has proposed this epoch, so adopt it.
            self.epoch = self.epoch.max(epoch);
        } else {
            self.proposed_epoch = epoch;
        }
        self.reads_fenced = false;
        self.refused_as_stale = false;
        if plan.buckets.is_empty() {
            self.current = true;
            return plan;
        }
        {
            let sending = (plan.source == Source::Primary) == self.primary;
            let who = match plan.source {
                Source::Primary => "primary",
                Source::Backup => "backup (it survived the primary's restart)",
            };
            self.go(
                State::Bootstrap {
                    sending,
                    buckets: plan.buckets.len(),
                },
                format!(
                    "warm start: {} bucket(s) differ, data from the {who}",
                    plan.buckets.len()
                ),
            );
        }
        plan
    }

    /// This side received the transfer and verified every bucket: its store is the pair's data
    /// from now on, whatever happens to the messages that follow.
    pub fn handle_transfer_verified(&mut self) {
        if matches!(self.state, State::Bootstrap { sending: false, .. }) {
            self.current = true;
            self.handle_epoch_confirmed();
        }
    }

    /// The peer sent something it sends only after reading our hello: the link's epoch is known
    /// to both sides (see `proposed_epoch`).
    pub fn handle_epoch_confirmed(&mut self) {
        self.epoch = self.epoch.max(self.proposed_epoch);
    }

    /// Any transfer is verified and the lanes are open: steady state.
    pub fn handle_synced(&mut self) {
        let cause = match self.state {
            State::Bootstrap { .. } => "bootstrap verified by bucket digests",
            State::WarmStart => "warm start: both stores already identical",
            _ => return,
        };
        self.go(State::Sync, cause.into());
        self.current = true;
        self.handle_epoch_confirmed();
    }

    /// A backup has had no link for longer than the ack timeout: stop answering reads.
    pub fn handle_link_silent(&mut self) {
        if !self.primary && self.state == State::ColdStart && !self.reads_fenced {
            self.reads_fenced = true;
            let state = self.state.clone();
            self.go(
                state,
                "no link to the primary for longer than the ack timeout: reads refused until the next warm start"
                    .into(),
            );
        }
    }

    /// The link is gone (closed, timed out, ack timeout, peer said goodbye).
    pub fn handle_link_lost(&mut self, cause: String) {
        if !matches!(self.state, State::ColdStart | State::ShuttingDown) {
            self.go(State::ColdStart, cause);
        }
    }

    /// Graceful stop requested.
    pub fn handle_shutdown(&mut self) {
        if self.state != State::ShuttingDown {
            self.go(State::ShuttingDown, "shutdown requested".into());
        }
    }

    /// The next transition to log, oldest first.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        if self.transitions.is_empty() {
            None
        } else {
            Some(self.transitions.remove(0))
        }
    }

    fn go(&mut self, to: State, cause: String) {
        let from = std::mem::replace(&mut self.state, to.clone());
        self.transitions.push(Transition { from, to, cause });
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
