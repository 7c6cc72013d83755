//! What the primary's link machine ([`crate::primary_link::PrimaryLink`]) is configured with and
//! what it asks of its driver, and the data streams' own path (acks and mismatch reports go
//! straight to the lanes, without the machine's lock: [`on_data`]).

use std::time::{Duration, Instant};

use quickv_proto::peer::{LaneMark, PeerMsg};

use crate::backup_events::{ConnId, JobId};
use crate::commit_point::Settled;
use crate::lanes::Lanes;
use crate::resync::ResyncPlan;
use crate::store::{BucketId, Store};
use crate::transfer::BucketJob;

/// The primary's settings for its link.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// This process's run id (sent in the hello; the lanes' mark).
    pub run_id: u64,
    /// The pair's identity (sent in the hello).
    pub pair: u64,
    /// No ack progress for this long while something is outstanding: the link is dead (F5).
    pub ack_timeout: Duration,
    /// How long one step of the opening (the backup's hello, its marks, a transfer message, the
    /// transfer's ack) may wait, and how long a resync may go unacknowledged.
    pub step: Duration,
    /// Interval of the digest checks of every lane.
    pub check_every: Duration,
    /// How long a graceful stop waits for a backup that is not current to verify its bootstrap
    /// (F7): the pair's only full copy is here until it does.
    pub drain: Duration,
    /// First redial delay after a lost link (or a dial that failed); doubled up to
    /// `backoff_max` while dials keep failing.
    pub backoff_min: Duration,
    /// Longest redial delay.
    pub backoff_max: Duration,
}

/// What the driver must do, besides transmitting on the control stream.
#[derive(Debug)]
pub enum PrimaryEvent {
    /// Dial the backup; report [`crate::primary_link::PrimaryLink::handle_connected`] (or
    /// `handle_dial_failed`).
    Dial,
    /// A connection became the live link (for the counters and status).
    Linked {
        /// The connection.
        conn: ConnId,
    },
    /// The backup's hello was admitted (for status: whom we are linked with).
    Answered {
        /// The backup's run id.
        peer_run_id: u64,
        /// The link's epoch.
        epoch: u64,
    },
    /// The writes of the previous link whose acks were lost were settled (for logs and counters).
    Settled(Settled),
    /// Send a snapshot of these buckets on the connection's control stream, `TransferDone` last,
    /// then report [`crate::primary_link::PrimaryLink::handle_snapshot_sent`].
    SendSnapshot {
        /// The connection.
        conn: ConnId,
        /// The buckets, in order.
        buckets: Vec<BucketId>,
    },
    /// Check and install a bucket received from the backup off the runtime
    /// ([`BucketJob::apply`]), then report `handle_job_done` with `id`, whatever happens to the
    /// connection meanwhile.
    Apply {
        /// The job's id.
        id: JobId,
        /// The bucket.
        job: BucketJob,
    },
    /// Open the data streams of the connection and the lanes on them
    /// ([`Lanes::enable_marked`] with `mark`), then report `handle_lanes_open` (or
    /// `handle_conn_closed` if that failed).
    OpenLanes {
        /// The connection.
        conn: ConnId,
        /// The mark of every write of the link (this primary's run id, the link's epoch).
        mark: LaneMark,
    },
    /// A transfer of this many buckets ended verified (`received`: the backup's data came here).
    TransferVerified {
        /// Buckets in the transfer.
        buckets: usize,
        /// Which way it went.
        received: bool,
    },
    /// This many digest checks were sent.
    DigestChecks(u64),
    /// Close this connection, saying why.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the close frame and the log.
        reason: String,
    },
    /// The live link ended (for the log and status).
    Lost {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: String,
    },
}

/// What one message on a data stream of lanes generation `link` leads to ([`on_data`]).
#[derive(Debug)]
pub enum DataStep {
    /// Handled (an ack applied).
    Done,
    /// The backup's digest of `bucket` differed; `plan` is the resync to build off the runtime
    /// ([`ResyncPlan::build`]) and queue with [`Lanes::finish_resync`] (`None`: the lane is
    /// closed, already resyncing, or the link superseded).
    Mismatch {
        /// The lane.
        bucket: BucketId,
        /// The resync to build.
        plan: Option<ResyncPlan>,
    },
    /// The lanes are open on a newer link: this stream's reader ends.
    Superseded,
    /// The link failed (a bad ack, an unexpected message): the reader ends and reports
    /// `handle_conn_closed` with this cause.
    Failed(String),
}

/// A message on a data stream of lanes generation `link`: acks go straight to the lanes (no lock
/// of the link machine on this path, so the write path keeps its lock-light shape); a mismatch
/// pauses its lane for a resync. The server's stream readers and the simulator call it.
pub fn on_data(lanes: &Lanes, store: &Store, link: u64, msg: PeerMsg, now: Instant) -> DataStep {
    match msg {
        PeerMsg::Ack { bucket, offset } => {
            match lanes.handle_ack_on(link, store, bucket, offset, now) {
                Ok(true) => DataStep::Done,
                Ok(false) => DataStep::Superseded,
                Err(e) => DataStep::Failed(e),
            }
        }
        PeerMsg::Mismatch { bucket, .. } => DataStep::Mismatch {
            bucket,
            plan: lanes.begin_resync(link, bucket),
        },
        other => DataStep::Failed(format!("unexpected {other:?} on a data stream")),
    }
}
