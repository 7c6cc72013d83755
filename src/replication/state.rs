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

use crate::protocol::peer::PeerHello;
use crate::store::{BucketId, BUCKETS};

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

/// Decides who holds the data. A server is *current* (`synced`) once it has reached sync in its
/// process's life; a restarted server is not, and is empty.
///
/// - primary restarted, backup current → the backup survived: its data wins;
/// - otherwise (backup restarted, both restarted and empty, or a link loss without restart) → the
///   primary's data wins.
///
/// Either way only buckets whose digests differ are sent; both empty means nothing to send.
pub fn decide(primary: &PeerHello, backup: &PeerHello) -> Plan {
    let source = if !primary.synced && backup.synced {
        Source::Backup
    } else {
        Source::Primary
    };
    let buckets = (0..BUCKETS)
        .filter(|&i| primary.digests[i] != backup.digests[i])
        .filter_map(BucketId::new)
        .collect();
    Plan { source, buckets }
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
    /// Set once this process reached `Sync`; never cleared. Decides reads and warm starts.
    synced_once: bool,
    /// Transitions not yet taken by `poll_transition`.
    transitions: Vec<Transition>,
}

impl Machine {
    /// A machine in `ColdStart`, with a store not known to be current.
    pub fn new(primary: bool) -> Machine {
        Machine {
            primary,
            state: State::ColdStart,
            synced_once: false,
            transitions: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the local store is known current (reached sync at least once in this process).
    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// Reads are answered only from a store known to be current.
    pub fn reads_allowed(&self) -> bool {
        self.synced_once
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

    /// Both hellos are known: returns the plan, and enters `Bootstrap` if buckets must be copied.
    /// With nothing to copy the machine stays in `WarmStart` until [`Machine::handle_synced`], which
    /// the driver calls at once (the primary after opening its lanes, so that `sync` in status
    /// always means writes are accepted).
    pub fn handle_hellos(&mut self, primary: &PeerHello, backup: &PeerHello) -> Plan {
        let plan = decide(primary, backup);
        if self.state != State::WarmStart || plan.buckets.is_empty() {
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

    /// Any transfer is verified and the lanes are open: steady state.
    pub fn handle_synced(&mut self) {
        let cause = match self.state {
            State::Bootstrap { .. } => "bootstrap verified by bucket digests",
            State::WarmStart => "warm start: both stores already identical",
            _ => return,
        };
        self.go(State::Sync, cause.into());
        self.synced_once = true;
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
mod tests {
    use super::*;
    use crate::store::Digest;

    fn hello(primary: bool, synced: bool, fill: u128) -> PeerHello {
        PeerHello {
            primary,
            run_id: 1,
            synced,
            keys: 0,
            digests: [Digest(fill); BUCKETS],
        }
    }

    #[test]
    fn who_holds_the_data() {
        // Restarted primary (not current), backup current: the backup survived.
        let p = decide(&hello(true, false, 0), &hello(false, true, 7));
        assert_eq!(p.source, Source::Backup);
        assert_eq!(p.buckets.len(), BUCKETS);
        // Restarted backup: primary's data.
        assert_eq!(
            decide(&hello(true, true, 7), &hello(false, false, 0)).source,
            Source::Primary
        );
        // Link loss without restart: primary's data, only differing buckets.
        let mut b = hello(false, true, 7);
        b.digests[3] = Digest(9);
        let p = decide(&hello(true, true, 7), &b);
        assert_eq!(
            p,
            Plan {
                source: Source::Primary,
                buckets: vec![BucketId::new(3).expect("3")]
            }
        );
        // Both restarted, both empty: nothing to send.
        assert!(decide(&hello(true, false, 0), &hello(false, false, 0))
            .buckets
            .is_empty());
    }

    #[test]
    fn lifecycle_and_permissions() {
        let mut m = Machine::new(true);
        assert!(!m.reads_allowed() && !m.writes_allowed());
        m.handle_link_up();
        let plan = m.handle_hellos(&hello(true, false, 0), &hello(false, true, 5));
        assert_eq!(plan.source, Source::Backup);
        assert_eq!(
            m.state(),
            &State::Bootstrap {
                sending: false,
                buckets: BUCKETS
            }
        );
        assert!(
            !m.reads_allowed(),
            "a restarted primary must not serve reads before it synced"
        );
        m.handle_synced();
        assert_eq!(m.state(), &State::Sync);
        assert!(m.reads_allowed() && m.writes_allowed());
        m.handle_link_lost("ack timeout".into());
        assert_eq!(m.state(), &State::ColdStart);
        assert!(
            m.reads_allowed(),
            "a current store stays readable after a link loss"
        );
        assert!(!m.writes_allowed());
        m.handle_shutdown();
        m.handle_link_up();
        assert_eq!(m.state(), &State::ShuttingDown, "shutting down is terminal");
        let names: Vec<_> = std::iter::from_fn(|| m.poll_transition())
            .map(|t| t.to.name())
            .collect();
        assert_eq!(
            names,
            [
                "warm_start",
                "bootstrap",
                "sync",
                "cold_start",
                "shutting_down"
            ]
        );
    }

    #[test]
    fn the_backup_never_accepts_writes_and_identical_stores_sync_at_once() {
        let mut m = Machine::new(false);
        m.handle_link_up();
        m.handle_hellos(&hello(true, false, 0), &hello(false, false, 0));
        assert_eq!(
            m.state(),
            &State::WarmStart,
            "nothing to copy: no bootstrap"
        );
        m.handle_synced();
        assert_eq!(m.state(), &State::Sync);
        assert!(m.reads_allowed());
        assert!(!m.writes_allowed());
    }
}
