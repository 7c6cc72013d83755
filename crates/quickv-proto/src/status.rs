//! [`Status`]: the server's status document, typed once for both sides.
//!
//! The server fills a [`Status`] and sends it as JSON (the answer to `status`, `GET /kvman/status`);
//! its `/metrics` page renders the same value; the client parses the JSON back into it. The JSON
//! field names are the Rust field names, and every field is listed in docs/operations.md ("The
//! status document"), which external clients implement from.
//!
//! With the `serde` feature the types implement `Serialize` and `Deserialize`. Parsing is lenient
//! the way a client talking to another server version must be: fields this version does not know
//! are ignored, and only `role`, `state` and `keys` are required (a missing counter reads 0). The
//! replication part is present exactly on the two servers of a pair.

use crate::peer::ReplOffset;

/// The server's `status` document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Status {
    /// `primary`, `backup` or `standalone`.
    pub role: String,
    /// The replication state (`cold_start`, `warm_start`, `bootstrap`, `sync`, `shutting_down`,
    /// docs/replication.md) on a pair, `serving` on a standalone server.
    pub state: String,
    /// Entries in the store.
    pub keys: u64,
    /// The client address the server listens on (QUIC, UDP).
    #[cfg_attr(feature = "serde", serde(default))]
    pub listen: String,
    /// The peer's address on a pair, `None` (JSON `null`) on a standalone server.
    #[cfg_attr(feature = "serde", serde(default))]
    pub peer: Option<String>,
    /// The HTTP gateway's address, `None` when it is off.
    #[cfg_attr(feature = "serde", serde(default))]
    pub http: Option<String>,
    /// This process's run id (16 hex digits); changes on every restart.
    #[cfg_attr(feature = "serde", serde(default))]
    pub run_id: String,
    /// The server's version.
    #[cfg_attr(feature = "serde", serde(default))]
    pub version: String,
    /// Seconds since the process started.
    #[cfg_attr(feature = "serde", serde(default))]
    pub uptime_s: u64,
    /// Established client connections (QUIC).
    #[cfg_attr(feature = "serde", serde(default))]
    pub connections: u64,
    /// Client connections accepted since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub connections_total: u64,
    /// Client connections refused at a cap (handshakes included), since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub connections_refused: u64,
    /// Requests answered since start (QUIC).
    #[cfg_attr(feature = "serde", serde(default))]
    pub requests: u64,
    /// Frames rejected as malformed or over a limit, since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub bad_frames: u64,
    /// Times a stream stopped being read (or a dump stopped producing) because the answers its
    /// client had not read reached their byte cap, since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub stream_pauses: u64,
    /// QUIC handshakes in progress.
    #[cfg_attr(feature = "serde", serde(default))]
    pub handshakes_pending: u64,
    /// Requests refused because the client's role does not allow them, since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub forbidden: u64,
    /// Certificate reloads and the revocation list in force.
    #[cfg_attr(feature = "serde", serde(default))]
    pub certificates: CertificateStatus,
    /// How full the exactly-once session tables are.
    #[cfg_attr(feature = "serde", serde(default))]
    pub sessions: SessionUsage,
    /// Replication figures, on the two servers of a pair only; in the JSON they are fields of the
    /// document itself, not an object of their own.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub replication: Option<ReplicationStatus>,
}

impl Status {
    /// True on the primary of a pair.
    pub fn is_primary(&self) -> bool {
        self.role == "primary"
    }

    /// True on the backup of a pair.
    pub fn is_backup(&self) -> bool {
        self.role == "backup"
    }

    /// Whether this store is known current: `Some` on a pair only.
    pub fn current(&self) -> Option<bool> {
        self.replication.as_ref().map(|r| r.current)
    }

    /// Whether the peer link is up: `Some` on a pair only.
    pub fn link_up(&self) -> Option<bool> {
        self.replication.as_ref().map(|r| r.link_up)
    }
}

/// The replication part of [`Status`] (a pair's servers only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ReplicationStatus {
    /// Whether the peer link is up.
    pub link_up: bool,
    /// The peer's run id (16 hex digits), `None` before the first link.
    #[cfg_attr(feature = "serde", serde(default))]
    pub peer_run_id: Option<String>,
    /// Whether this store is known to hold the pair's data (false right after a restart until a
    /// verified bootstrap or equal digests). A pair client reads from the backup only while this
    /// is true there.
    pub current: bool,
    /// Why reads are refused, `None` while they are served.
    #[cfg_attr(feature = "serde", serde(default))]
    pub read_refusal: Option<String>,
    /// The latest link both servers agreed on, persisted across restarts.
    #[cfg_attr(feature = "serde", serde(default))]
    pub epoch: u64,
    /// The latest state change, `None` before the first.
    #[cfg_attr(feature = "serde", serde(default))]
    pub last_transition: Option<LastTransition>,
    /// Writes sent to the backup and not yet acknowledged, all lanes (0 on the backup).
    #[cfg_attr(feature = "serde", serde(default))]
    pub lag: u64,
    /// Per-lane offsets, indexed by bucket.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lanes: Vec<LaneStatus>,
    /// Peer links established since start.
    #[cfg_attr(feature = "serde", serde(default))]
    pub links: u64,
    /// Bootstraps (transfers of at least one bucket) completed.
    #[cfg_attr(feature = "serde", serde(default))]
    pub bootstraps: u64,
    /// Buckets copied by bootstraps.
    #[cfg_attr(feature = "serde", serde(default))]
    pub buckets_transferred: u64,
    /// Single-bucket resyncs after a digest mismatch.
    #[cfg_attr(feature = "serde", serde(default))]
    pub resyncs: u64,
    /// Bucket digest checks sent (primary) or verified (backup).
    #[cfg_attr(feature = "serde", serde(default))]
    pub digest_checks: u64,
    /// Digest checks that found a difference.
    #[cfg_attr(feature = "serde", serde(default))]
    pub digest_mismatches: u64,
    /// Buckets whose running digest or count disagreed with their contents at a mismatch and were
    /// recounted (an internal error, logged as such).
    #[cfg_attr(feature = "serde", serde(default))]
    pub totals_repaired: u64,
    /// The 32 bucket digests, in hex, indexed by bucket; equal on both servers when idle.
    #[cfg_attr(feature = "serde", serde(default))]
    pub digests: Vec<String>,
}

/// One lane (one bucket's replication log) in [`ReplicationStatus::lanes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LaneStatus {
    /// Last offset sent (primary) or applied (backup), on the current link.
    pub offset: ReplOffset,
    /// Last offset acknowledged (primary) or applied (backup).
    pub acked: ReplOffset,
    /// Writes waiting for the backup's ack (always 0 on the backup).
    pub pending: u64,
}

impl LaneStatus {
    /// A lane's figures.
    pub fn new(offset: ReplOffset, acked: ReplOffset, pending: u64) -> LaneStatus {
        LaneStatus {
            offset,
            acked,
            pending,
        }
    }
}

/// The latest replication state change, in [`ReplicationStatus::last_transition`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LastTransition {
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// Why, in words.
    pub cause: String,
}

impl LastTransition {
    /// A state change.
    pub fn new(from: impl Into<String>, to: impl Into<String>, cause: impl Into<String>) -> Self {
        LastTransition {
            from: from.into(),
            to: to.into(),
            cause: cause.into(),
        }
    }
}

/// `status.certificates`: certificate reloads (SIGHUP or changed files) and the CRL in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct CertificateStatus {
    /// Reloads that succeeded.
    pub reloads: u64,
    /// Reloads that failed (the previous files stay in force).
    pub reload_failures: u64,
    /// Connections closed because a reload no longer trusted their certificate.
    pub closed_revoked: u64,
    /// Connections refused because the certificate's identity is not allowed as a client.
    pub refused_identities: u64,
    /// Authenticated client connections open (QUIC and HTTPS).
    pub authenticated_connections: u64,
    /// Revoked certificates listed, over every CRL.
    pub crl_entries: u64,
    /// The number of the highest CRL in force, `None` without one.
    pub crl_number: Option<CrlNumber>,
}

/// A CRL number: an integer up to 20 octets, sent as a JSON number when it fits a `u64` and as
/// its decimal text otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(untagged))]
pub enum CrlNumber {
    /// A number that fits.
    Number(u64),
    /// A larger number, in decimal.
    Text(String),
}

impl std::fmt::Display for CrlNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrlNumber::Number(n) => write!(f, "{n}"),
            CrlNumber::Text(t) => f.write_str(t),
        }
    }
}

/// `status.sessions`: how full the exactly-once session tables are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct SessionUsage {
    /// Remembered answers.
    pub records: u64,
    /// Sessions with records, counted per bucket.
    pub sessions: u64,
    /// Client identities with a table, counted per bucket.
    pub identities: u64,
    /// Bytes charged to the tables (counted toward `max_memory`).
    pub bytes: u64,
    /// The budget of all tables, in bytes.
    pub budget_bytes: u64,
    /// Sessions evicted to stay inside a byte or count limit, since start.
    pub evicted: u64,
    /// Sessions dropped as idle, since start.
    pub swept: u64,
    /// Deletes recorded as "applied, value not kept", since start.
    pub values_not_kept: u64,
}
