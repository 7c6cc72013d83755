//! What the backup's link machine ([`crate::backup_link::BackupLink`]) is configured with and
//! what it asks of its driver: its settings, the ids of the jobs it tracks, its events.

use std::collections::BTreeSet;
use std::time::Duration;

use quickv_proto::peer::LaneMark;

use crate::store::BucketId;
use crate::transfer::BucketJob;

/// A peer connection, numbered by the driver (never reused within a process).
pub type ConnId = u64;

/// A job that writes the store outside the lanes, tagged with the link generation it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    /// The link generation that started it.
    pub generation: u64,
    /// Its number, unique in this value's life.
    pub seq: u64,
}

/// The jobs a link machine started that have not reported done, each tagged with its link's
/// generation (the fence both machines keep: a newer link opens only once no older job runs).
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    running: BTreeSet<JobId>,
    last_seq: u64,
}

impl Jobs {
    /// Starts a job of link `generation` and returns its id.
    pub(crate) fn start(&mut self, generation: u64) -> JobId {
        self.last_seq += 1;
        let id = JobId {
            generation,
            seq: self.last_seq,
        };
        self.running.insert(id);
        id
    }

    /// Records `id` as done; false if it was not running (a repeated or unknown report).
    pub(crate) fn finish(&mut self, id: JobId) -> bool {
        self.running.remove(&id)
    }

    /// Whether a job of a link older than `generation` still runs.
    pub(crate) fn older_than(&self, generation: u64) -> bool {
        self.running.iter().any(|j| j.generation < generation)
    }

    /// How many jobs run.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }
}

/// The backup's settings for its link.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// This process's run id (sent in the hello).
    pub run_id: u64,
    /// The pair's identity (sent in the hello).
    pub pair: u64,
    /// How long a live link must have been silent before a primary that is not current may
    /// replace it ([`crate::state::may_supersede`]).
    pub live_grace: Duration,
    /// How long without a link before reads are fenced (the ack timeout).
    pub silence: Duration,
    /// How long one step of the opening may wait for the primary (a transfer message, the ack
    /// of our snapshot) before the link is declared stalled.
    pub step: Duration,
    /// How long a stopping backup keeps applying after its goodbye.
    pub drain: Duration,
    /// How long a refused connection stays open so that its goodbye can reach the primary.
    pub close_grace: Duration,
}

/// What the driver must do, besides transmitting.
#[derive(Debug)]
pub enum LinkEvent {
    /// Close this connection, saying why.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the close frame and the log.
        reason: String,
    },
    /// Check and install a received bucket off the runtime ([`BucketJob::apply`]), then report
    /// [`crate::backup_link::BackupLink::handle_job_done`] with `id`, whatever happens to the connection meanwhile.
    Apply {
        /// The job's id.
        id: JobId,
        /// The bucket.
        job: BucketJob,
    },
    /// Our data wins (the primary restarted): send these buckets on the connection's control
    /// stream, `TransferDone` last, then report [`crate::backup_link::BackupLink::handle_snapshot_sent`].
    SendSnapshot {
        /// The connection.
        conn: ConnId,
        /// The buckets, in order.
        buckets: Vec<BucketId>,
    },
    /// A connection was admitted as the live link.
    Admitted {
        /// The connection.
        conn: ConnId,
        /// Its generation (fences the older links' appliers).
        generation: u64,
        /// The link's epoch.
        epoch: u64,
        /// The primary's run id.
        peer_run_id: u64,
    },
    /// The transfer (if any) is over: accept the connection's data streams, applying with this
    /// generation and marking writes with `mark`.
    Running {
        /// The connection.
        conn: ConnId,
        /// Its generation.
        generation: u64,
        /// What each applied write is marked with (primary run id, epoch).
        mark: LaneMark,
    },
    /// A transfer of this many buckets ended verified (for the counters).
    TransferVerified {
        /// Buckets in the transfer.
        buckets: usize,
    },
    /// The live link ended (for the log).
    Lost {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: String,
    },
}
