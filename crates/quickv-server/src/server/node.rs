//! The state one server process shares between its connections: config, store, identity, counters and
//! the stop signal.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quickv_proto::status::Status;
use tokio_util::sync::CancellationToken;

use crate::config::{Role, ServerConfig};
use crate::replication::Replication;
use crate::server::metrics::OpMetrics;
use quickv_core::store::Store;

/// Shared by every connection of a server; cheap to clone through `Arc`.
#[derive(Debug)]
pub struct Node {
    /// The configuration the server was started with.
    pub config: ServerConfig,
    /// The table itself.
    pub store: Arc<Store>,
    /// Random identity of this process, so a peer can tell a restart from a reconnect.
    pub run_id: u64,
    /// When the process started, for `uptime` in status.
    pub started: Instant,
    /// Cancelled when the server should stop (signal, `shutdown` op); everything watches it.
    pub shutdown: CancellationToken,
    /// Counters shown in `status` and on the metrics page.
    pub stats: Stats,
    /// Answered requests by operation and outcome, and latency histograms (QUIC and HTTP alike).
    pub metrics: OpMetrics,
    /// Replication, for a primary or a backup; `None` for a standalone server.
    pub repl: Option<Arc<Replication>>,
    /// Reloadable TLS state, open authenticated connections, and refusal counters.
    pub security: crate::server::auth::Security,
    /// Handshakes in progress, client connections per certificate, the peer's reserve.
    pub admission: crate::server::admission::Admission,
    /// One permit per dump being sent (QUIC and HTTP), `max_dumps` in all.
    pub dump_slots: Arc<tokio::sync::Semaphore>,
}

/// Monotonic counters; relaxed atomics because they are only read for reporting.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client connections currently open.
    pub connections: AtomicU64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Frames rejected as malformed or over a limit.
    pub bad_frames: AtomicU64,
    /// Times a stream stopped being read, or a dump stopped producing, because the unwritten
    /// answers of the stream (or of its connection) reached their byte cap: clients that do not
    /// read what they asked for.
    pub stream_pauses: AtomicU64,
    /// Client request streams currently open (QUIC).
    pub streams: AtomicU64,
    /// Client request streams opened since start (QUIC).
    pub streams_total: AtomicU64,
    /// HTTP gateway connections currently open.
    pub http_connections: AtomicU64,
    /// HTTP gateway connections accepted since start.
    pub http_connections_total: AtomicU64,
    /// HTTP responses sent, by status class: index 0 is 1xx … index 4 is 5xx.
    pub http_responses: [AtomicU64; 5],
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one to a gauge and takes it back off when the guard drops, however the task ends.
    pub fn open(gauge: &AtomicU64) -> Open<'_> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Open(gauge)
    }
}

/// A unit held in a gauge (an open stream, an open connection); see [`Stats::open`].
#[derive(Debug)]
pub struct Open<'a>(&'a AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    /// A fresh node with an empty store, and the TLS state loaded for `config`.
    pub fn new(config: ServerConfig, security: crate::server::auth::Security) -> Node {
        let sessions = config.sessions.within_memory(config.max_memory);
        let store = Arc::new(Store::with_session_limits(
            sessions,
            std::time::Instant::now(),
        ));
        store.presize(config.expected_keys);
        let run_id = fresh_run_id();
        let dump_slots = Arc::new(tokio::sync::Semaphore::new(config.max_dumps));
        let repl = match config.role {
            Role::Standalone => None,
            Role::Primary | Role::Backup => {
                Some(Replication::new(store.clone(), config.clone(), run_id))
            }
        };
        Node {
            config,
            store,
            run_id,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            stats: Stats::default(),
            metrics: OpMetrics::default(),
            repl,
            security,
            admission: Default::default(),
            dump_slots,
        }
    }
}

/// A run id unlikely to repeat across restarts: time and pid mixed through the store hash.
fn fresh_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{nanos}:{}", std::process::id());
    xxhash_rust::xxh3::xxh3_64(seed.as_bytes())
}

impl Node {
    /// The `status` document, built once per ask: the `status` op and `GET /kvman/status` send it
    /// as JSON, `/metrics` renders it. Relaxed loads, and one short lock for the replication
    /// machine on a pair.
    pub fn status(&self) -> Status {
        let s = &self.stats;
        let mut status = Status::default();
        status.role = self.config.role.as_str().to_string();
        status.state = "serving".to_string();
        status.keys = self.store.count();
        status.listen = self.config.listen.to_string();
        status.peer = self.config.peer.map(|p| p.to_string());
        status.http = self.config.http.map(|a| a.to_string());
        status.run_id = format!("{:016x}", self.run_id);
        status.version = env!("CARGO_PKG_VERSION").to_string();
        status.uptime_s = self.started.elapsed().as_secs();
        status.connections = s.connections.load(Relaxed);
        status.connections_total = s.connections_total.load(Relaxed);
        status.connections_refused = s.connections_refused.load(Relaxed);
        status.requests = s.requests.load(Relaxed);
        status.bad_frames = s.bad_frames.load(Relaxed);
        status.stream_pauses = s.stream_pauses.load(Relaxed);
        status.handshakes_pending = self.admission.pending() as u64;
        status.forbidden = self.security.forbidden.load(Relaxed);
        status.certificates = self.security.status();
        status.sessions = self.store.sessions().usage();
        if let Some(repl) = &self.repl {
            repl.fill_status(&mut status);
        }
        status
    }
}
