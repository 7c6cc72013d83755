//! The quickv client library: what an application depends on to talk to a quickv server.
//!
//! This crate carries no server: QUIC (quinn), TLS (rustls, ring), tokio with the few features it
//! uses, and the sans-IO wire protocol (`quickv-proto`, re-exported as [`protocol`]). Its modules:
//! [`tls`] loads the cluster's certificates and builds the client TLS config, [`net`] holds the
//! framed reader and batching writer of a stream. The server (`quickv`) re-exports this crate as
//! `quickv::client`.
//!
//! A [`Client`] holds one QUIC connection with a few long-lived bidirectional streams ("lanes").
//! Calls from any number of tasks are spread over the lanes round-robin and pipelined: each lane
//! has a writer task that batches queued requests into one write and a reader task that matches
//! answers to callers by request id, so answers may arrive in any order. `Client` is cheap to clone
//! and every clone shares the connection.
//!
//! Beyond one server: [`Client::connect_pair`] knows a primary and its backup and, if allowed by
//! [`ReadFrom`], answers [`Client::read`] from the backup while the primary is down, saying so in
//! [`Read::from`]. Every call has a deadline ([`ClientConfig::timeout`], [`Client::with_timeout`]);
//! dropping a call's future cancels it. [`Client::get_many`], [`Client::insert_many`] and
//! [`Client::pipeline`] put many requests in flight at once. [`Client::status`] is typed
//! ([`Status`]). docs/client.md explains read modes, deadlines, retries and the planned
//! exactly-once sessions.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use quickv_client::{Client, ClientConfig};
//! # use quickv::config::{Role, ServerConfig};
//! # // A throw-away standalone server on a free loopback port, with fresh certificates.
//! # let certs = tempfile::tempdir()?;
//! # quickv::tls::generate(certs.path(), &[], false)?;
//! # let mut cfg = ServerConfig::new(Role::Standalone, "127.0.0.1:0".parse()?);
//! # cfg.certs_dir = certs.path().to_path_buf();
//! # let server = quickv::server::Server::bind(cfg)?;
//! # let addr = server.local_addr()?.to_string();
//! # tokio::spawn(server.run(std::future::pending()));
//! # let certs_dir = certs.path();
//!
//! // `addr` is e.g. "127.0.0.1:4470"; `certs_dir` holds ca.pem, client.pem, client.key.
//! let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
//! client.insert("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! let old = client.delete("greeting").await?;
//! assert_eq!(&old[..], b"hello");
//! assert_eq!(client.get("greeting").await?, None);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::net::{BatchWriter, FramedReader};
use crate::protocol::{
    decode_response, encode_request, ErrorCode, Limits, Op, Reply, Request, SessionWrite,
    WriteStamp, PROTOCOL_VERSION,
};
use crate::tls::{CertPaths, Identity};

mod batch;
mod config;
pub mod net;
pub mod outcome;
mod status;
pub mod tls;

pub use batch::Pipeline;
pub use config::{
    ClientConfig, ClientConfigBuilder, ReadFrom, Source, DEFAULT_BACKOFF_MAX_MS,
    DEFAULT_BACKOFF_MIN_MS, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_STREAMS,
    DEFAULT_TIMEOUT_MS,
};
pub use status::Status;

/// The wire protocol the client speaks ([`Op`], [`Reply`], [`Limits`], …), re-exported so that an
/// application needs no second dependency.
pub use quickv_proto as protocol;

/// Longest [`Client::close`] waits for the close to reach the server.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Calls queued per lane before callers wait (backpressure).
const LANE_QUEUE: usize = 1024;
/// How long a write is retried when the call has no deadline ([`Client::without_timeout`]).
const RETRY_WINDOW_WITHOUT_DEADLINE: Duration = Duration::from_secs(60);
/// How long a pair client trusts the backup's `current` flag before asking again.
const BACKUP_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a call did not succeed. The first four are answers from the server about the operation;
/// the rest mean the call could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// `insert` of a key that exists.
    #[error("the key already exists")]
    Exists,
    /// `update`/`delete` of a key that does not exist.
    #[error("the key does not exist")]
    NotFound,
    /// The server refused the operation; it did not take effect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have taken effect (the connection died after it was sent, or its
    /// deadline passed before the answer came).
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// The client's certificate does not grant this operation (its role is too low); it did not
    /// take effect.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The server rejected the request as invalid.
    #[error("server error ({code}): {message}")]
    Server {
        /// Machine-readable kind.
        code: ErrorCode,
        /// The server's sentence.
        message: String,
    },
    /// Connecting, TLS, or the connection broke; the message is a plain sentence.
    #[error("{0}")]
    Connection(String),
    /// The server's answer did not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A read (or a call that changes nothing) got no answer within its deadline. Writes past
    /// their deadline are [`ClientError::Indeterminate`] instead.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    /// True when the server answered about the operation itself (exists, not found, unavailable,
    /// indeterminate, forbidden): the CLI exits 1 for these and 2 for everything else.
    ///
    /// ```
    /// use quickv_client::ClientError;
    /// assert!(ClientError::Exists.is_refusal());
    /// assert!(!ClientError::Timeout("no answer".into()).is_refusal());
    /// ```
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::Exists
                | ClientError::NotFound
                | ClientError::Unavailable(_)
                | ClientError::Indeterminate(_)
                | ClientError::Forbidden(_)
        )
    }
}

/// The answer of [`Client::read`]: the value (`None` if the key is absent) and which server gave
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, or `None` if the key is absent there.
    pub value: Option<Bytes>,
    /// The server that answered; [`Source::Backup`] only with [`ReadFrom::BackupIfPrimaryDown`]
    /// while the primary could not be reached.
    pub from: Source,
}

/// A connection to one quickv server, or to a primary/backup pair. Clone it freely; clones share
/// the connections.
///
/// If a connection is lost (server restarted, network cut), calls in flight fail — writes as
/// [`ClientError::Indeterminate`], since they may have been applied — and the next call dials
/// again by itself, waiting between failed dials with a bounded exponential backoff with jitter
/// ([`ClientConfig::backoff_min`]). A call is retried on a new connection only if it was never
/// sent.
///
/// Every call has a deadline ([`ClientConfig::timeout`], or [`Client::with_timeout`]), and
/// dropping a call's future cancels it: its slot is released at once and its late answer, if one
/// comes, is discarded without disturbing other calls.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    /// Deadline of each call made through this handle.
    timeout: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    /// Where writes and linearizable reads go.
    primary: Link,
    /// The pair's backup, for [`Client::read`] with [`ReadFrom::BackupIfPrimaryDown`].
    backup: Option<Link>,
    /// Streams, limits and timeouts.
    config: ClientConfig,
    /// Set by [`Client::close`]: no more reconnecting.
    closed: AtomicBool,
    /// When the backup last reported its store current (pair clients).
    backup_current_at: Mutex<Option<std::time::Instant>>,
    /// A background dial of the primary is under way (pair clients reading from the backup).
    primary_redialing: AtomicBool,
    /// This client's session id: random, stamped on every write with [`Inner::next_seq`] so a
    /// retried write is recognised by the server.
    session_id: u64,
    /// The last write sequence number handed out (the first write gets 1).
    next_seq: AtomicU64,
    /// Write attempts after the first (see [`Client::write_retries`]).
    write_retries: AtomicU64,
}

/// One server: its address, TLS settings and current connection.
#[derive(Debug)]
struct Link {
    /// Kept so the UDP socket lives as long as the client; every reconnection reuses it.
    endpoint: quinn::Endpoint,
    /// Where the server is, and the TLS server name to check.
    target: (SocketAddr, String),
    /// TLS settings, reused to reconnect.
    client_cfg: quinn::ClientConfig,
    /// The current connection and its lanes (`None` until the first dial succeeded); replaced
    /// when it is found dead.
    session: Mutex<Option<Arc<Session>>>,
    /// Serialises reconnection so concurrent callers dial once, and paces the dials.
    redial: tokio::sync::Mutex<Redial>,
    /// The last hello answer, e.g. "quickv 0.1.0 role=primary".
    server: Mutex<String>,
}

/// Reconnection pacing of one link.
#[derive(Debug, Default)]
struct Redial {
    /// The last failed dial: when it ended and why.
    last_failure: Option<(Instant, ClientError)>,
    /// No new dial before this instant (backoff).
    not_before: Option<Instant>,
    /// The next backoff step (before jitter).
    backoff: Duration,
}

/// One QUIC connection with its lanes.
#[derive(Debug)]
struct Session {
    /// The connection, to close it and to see whether it died.
    conn: quinn::Connection,
    /// One queue per lane.
    lanes: Vec<Lane>,
    /// Round-robin cursor over `lanes`.
    next_lane: AtomicUsize,
    /// Request ids, unique on the connection.
    next_id: AtomicU64,
}

/// One long-lived stream: its queue and the calls written on it and not yet answered.
#[derive(Debug)]
struct Lane {
    queue: mpsc::Sender<Call>,
    owed: Arc<Mutex<Owed>>,
}

impl Session {
    /// Opens the lanes on a fresh connection.
    async fn open(conn: quinn::Connection, config: &ClientConfig) -> Result<Session, ClientError> {
        let mut lanes = Vec::with_capacity(config.streams.max(1));
        for _ in 0..config.streams.max(1) {
            lanes.push(open_lane(&conn, config.limits).await?);
        }
        Ok(Session {
            conn,
            lanes,
            next_lane: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    /// Queues a call on the next lane; gives it back if the lane is gone (never sent).
    /// Returns the lane's owed calls and the request id, for cancelling.
    async fn send(&self, mut call: Call) -> Result<(Arc<Mutex<Owed>>, u64), Call> {
        let i = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        call.id = id;
        let lane = &self.lanes[i];
        lane.queue.send(call).await.map_err(|e| e.0)?;
        Ok((lane.owed.clone(), id))
    }

    fn dead(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Calls awaiting an answer whose callers still wait.
    fn in_flight(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| {
                l.owed
                    .lock()
                    .map(|o| o.calls.values().filter(|w| w.reply.is_some()).count())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A request waiting to be written.
struct Call {
    id: u64,
    op: Op,
    /// The write's session stamp, if it carries one.
    session: Option<SessionWrite>,
    reply: oneshot::Sender<Result<Reply, ClientError>>,
}

/// A call that was queued: where its answer comes, and how to cancel it if its caller goes away.
struct Pending {
    /// `None` once the answer came (or the guard was disarmed).
    rx: Option<oneshot::Receiver<Result<Reply, ClientError>>>,
    owed: Arc<Mutex<Owed>>,
    id: u64,
}

impl Pending {
    /// Waits for the answer.
    async fn answer(&mut self) -> Result<Reply, ClientError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(ClientError::Protocol("answer awaited twice".into()));
        };
        let outcome = rx.await;
        self.rx = None;
        outcome.map_err(|_| ClientError::Connection("the connection is closed".into()))?
    }
}

impl Drop for Pending {
    /// A caller that stops waiting (future dropped, deadline passed) cancels its call: the
    /// receiver goes first, so a writer that has not written it yet skips it; a call already
    /// written keeps only a tombstone so its late answer is recognised and discarded.
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            drop(rx);
            if let Ok(mut owed) = self.owed.lock() {
                if let Some(w) = owed.calls.get_mut(&self.id) {
                    w.reply = None;
                    w.gathered = Vec::new();
                }
            }
        }
    }
}

/// Requests written on a lane and not yet answered.
#[derive(Default)]
struct Owed {
    /// The calls written and not yet answered, by request id.
    calls: HashMap<u64, Waiting>,
    /// Set once the lane is dead; later calls fail with it at once.
    broken: Option<ClientError>,
}

impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owed")
            .field("calls", &self.calls.len())
            .field("broken", &self.broken)
            .finish()
    }
}

/// One call written on a lane and not yet answered.
struct Waiting {
    /// Where the answer goes; `None` once the caller cancelled (the answer is discarded).
    reply: Option<oneshot::Sender<Result<Reply, ClientError>>>,
    /// Writes become indeterminate, not failed, if the connection dies.
    is_write: bool,
    /// Dump entries from chunks received so far.
    gathered: Vec<(Bytes, Bytes)>,
}

impl Owed {
    /// Fails every call in flight: a write that was sent may have been applied, so it is
    /// indeterminate; anything else failed with `err`.
    fn fail_all(&mut self, err: ClientError) {
        for (
            _,
            Waiting {
                reply, is_write, ..
            },
        ) in self.calls.drain()
        {
            let Some(reply) = reply else { continue };
            let outcome = if is_write {
                Ok(Reply::Indeterminate(format!(
                    "the write was sent but no answer came: {err}"
                )))
            } else {
                Err(err.clone())
            };
            let _ = reply.send(outcome);
        }
        self.broken.get_or_insert(err);
    }
}

/// What a call past its deadline becomes: a write may have been applied.
fn past_deadline(is_write: bool, deadline: Duration) -> Result<Reply, ClientError> {
    if is_write {
        Ok(Reply::Indeterminate(format!(
            "no answer within the deadline of {deadline:?}; the write may have been applied"
        )))
    } else {
        Err(ClientError::Timeout(format!(
            "no answer within the deadline of {deadline:?}"
        )))
    }
}

/// A random number for backoff jitter (std's per-process random hash keys; no extra crate).
fn jitter_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

impl Link {
    /// Prepares a link to `addr` (resolves it, opens the UDP socket); does not dial.
    async fn new(addr: &str, client_cfg: quinn::ClientConfig) -> Result<Link, ClientError> {
        let (sock, name) = resolve(addr).await?;
        let bind: SocketAddr = if sock.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        Ok(Link {
            endpoint,
            target: (sock, name),
            client_cfg,
            session: Mutex::new(None),
            redial: tokio::sync::Mutex::new(Redial::default()),
            server: Mutex::new(String::new()),
        })
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current session, dialled (again) first if there is none or it is known dead.
    async fn session(&self, inner: &Inner) -> Result<Arc<Session>, ClientError> {
        match self.current() {
            Some(s) if !s.dead() => Ok(s),
            other => self.redial(other.as_ref(), inner).await,
        }
    }

    /// Replaces a dead (or missing) session — once, however many callers notice it — pacing the
    /// dials with the backoff.
    async fn redial(
        &self,
        dead: Option<&Arc<Session>>,
        inner: &Inner,
    ) -> Result<Arc<Session>, ClientError> {
        if inner.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Connection("the client was closed".into()));
        }
        let waiting_since = Instant::now();
        let mut redial = self.redial.lock().await;
        // Someone dialled and failed while we waited: share that answer instead of queueing up
        // one more connect timeout per caller.
        if let Some((when, err)) = redial.last_failure.as_ref() {
            if *when >= waiting_since {
                return Err(err.clone());
            }
            if let Some(not_before) = redial.not_before {
                let now = Instant::now();
                if now < not_before {
                    return Err(ClientError::Connection(format!(
                        "{err} (next attempt in {:?})",
                        not_before - now
                    )));
                }
            }
        }
        if let Some(current) = self.current() {
            let replaced = dead.is_none_or(|d| !Arc::ptr_eq(&current, d));
            if replaced && !current.dead() {
                return Ok(current);
            }
        }
        match self.dial(&inner.config).await {
            Ok(session) => {
                let fresh = Arc::new(session);
                *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
                *redial = Redial::default();
                Ok(fresh)
            }
            Err(err) => {
                let cfg = &inner.config;
                let step = redial.backoff.clamp(cfg.backoff_min, cfg.backoff_max);
                // "Equal jitter": between half and all of the step, so clients that lost the
                // same server do not all come back at the same instant.
                let half = step / 2;
                let spread = half.as_nanos().max(1) as u64;
                let wait = half + Duration::from_nanos(jitter_seed() % spread);
                let now = Instant::now();
                redial.not_before = Some(now + wait);
                redial.backoff = (step * 2).min(cfg.backoff_max);
                redial.last_failure = Some((now, err.clone()));
                Err(err)
            }
        }
    }

    /// Dials the server, opens the lanes and exchanges the hello, within the connect timeout.
    async fn dial(&self, config: &ClientConfig) -> Result<Session, ClientError> {
        let (sock, name) = &self.target;
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.client_cfg.clone(), *sock, name)
                .map_err(|e| ClientError::Connection(format!("cannot connect to {sock}: {e}")))?;
            let conn = connecting
                .await
                .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
            let session = Session::open(conn, config).await?;
            // The hello: a refused certificate (which TLS 1.3 reports only on first use) shows
            // up here, in plain words, rather than on the application's first call.
            let (tx, rx) = oneshot::channel();
            let hello = Call {
                id: 0,
                op: Op::Hello {
                    version: PROTOCOL_VERSION,
                },
                session: None,
                reply: tx,
            };
            if session.send(hello).await.is_err() {
                return Err(ClientError::Connection("the connection is closed".into()));
            }
            match rx
                .await
                .map_err(|_| ClientError::Connection("the connection is closed".into()))??
            {
                Reply::Hello { server, .. } => {
                    *self.server.lock().unwrap_or_else(|p| p.into_inner()) = server;
                    Ok(session)
                }
                other => Err(refusal(other)),
            }
        };
        tokio::time::timeout(config.connect_timeout, attempt)
            .await
            .map_err(|_| no_answer(&sock.to_string(), config))?
    }

    /// Queues one call (redialling once if the connection turns out gone before it was sent).
    async fn start(
        &self,
        op: Op,
        session: Option<SessionWrite>,
        inner: &Inner,
    ) -> Result<Pending, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut call = Call {
            id: 0,
            op,
            session,
            reply: tx,
        };
        let mut session = self.session(inner).await?;
        // At most one retry, and only of a call that never left this process.
        for attempt in 0..2 {
            match session.send(call).await {
                Ok((owed, id)) => {
                    return Ok(Pending {
                        rx: Some(rx),
                        owed,
                        id,
                    });
                }
                Err(unsent) if attempt == 0 => {
                    call = unsent;
                    session = self.redial(Some(&session), inner).await?;
                }
                Err(_) => break,
            }
        }
        Err(ClientError::Connection("the connection is closed".into()))
    }

    /// The role this server named in its last hello (`primary`, `backup`, `standalone`).
    fn role(&self) -> String {
        let hello = self.server.lock().unwrap_or_else(|p| p.into_inner());
        hello
            .split_whitespace()
            .find_map(|w| w.strip_prefix("role="))
            .unwrap_or_default()
            .to_string()
    }
}

impl Client {
    /// Connects, authenticates with the client certificate, and exchanges the protocol hello.
    ///
    /// Succeeds only after the server answered the hello, so a refused certificate (which TLS 1.3
    /// reports only on first use) is an error here, in plain words.
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let client_cfg = client_tls(config)?;
        Client::connect_with(addr, client_cfg, config).await
    }

    /// Connects with an explicit quinn client config (used to test refusals of bad certificates).
    pub async fn connect_with(
        addr: &str,
        client_cfg: quinn::ClientConfig,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let primary = Link::new(addr, client_cfg).await?;
        let client = Client::assemble(primary, None, config);
        client.inner.primary.session(&client.inner).await?;
        Ok(client)
    }

    /// Connects to a primary/backup pair. Writes, [`Client::get`], the batch calls and
    /// [`Client::status`] go to the primary; [`Client::read`] may go to the backup while the
    /// primary cannot be reached, if `config.read_from` is [`ReadFrom::BackupIfPrimaryDown`].
    ///
    /// Fails if a server answers with the wrong role (the addresses swapped), or if the primary
    /// cannot be reached — unless backup reads are allowed and the backup can be reached: then
    /// the client starts on the backup for reads and keeps dialling the primary (with backoff).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use quickv::config::{Role, ServerConfig};
    /// # let certs = tempfile::tempdir()?;
    /// # quickv::tls::generate(certs.path(), &[], false)?;
    /// # let free = || std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr());
    /// # let (primary_addr, backup_addr) = (free()?, free()?);
    /// # let start = |role, listen, peer| {
    /// #     let mut cfg = ServerConfig::new(role, listen);
    /// #     cfg.certs_dir = certs.path().to_path_buf();
    /// #     cfg.peer = Some(peer);
    /// #     quickv::server::Server::bind(cfg)
    /// # };
    /// # tokio::spawn(start(Role::Backup, backup_addr, primary_addr)?.run(std::future::pending()));
    /// # tokio::spawn(start(Role::Primary, primary_addr, backup_addr)?.run(std::future::pending()));
    /// # let (primary_addr, backup_addr) = (primary_addr.to_string(), backup_addr.to_string());
    /// use quickv_client::{Client, ClientConfig, ReadFrom, Source};
    ///
    /// let cfg = ClientConfig::builder(certs.path())
    ///     .read_from(ReadFrom::BackupIfPrimaryDown)
    ///     .build();
    /// let client = Client::connect_pair(&primary_addr, &backup_addr, &cfg).await?;
    /// # while client.status().await?.state != "sync" {
    /// #     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    /// # }
    /// client.insert("k", "v").await?;
    /// let read = client.read("k").await?;
    /// assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
    /// assert_eq!(read.from, Source::Primary); // the primary is up
    /// # Ok(()) }
    /// ```
    pub async fn connect_pair(
        primary: &str,
        backup: &str,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let client_cfg = client_tls(config)?;
        let primary_link = Link::new(primary, client_cfg.clone()).await?;
        let backup_link = Link::new(backup, client_cfg).await?;
        let client = Client::assemble(primary_link, Some(backup_link), config);
        let inner = &client.inner;
        let Some(backup_link) = inner.backup.as_ref() else {
            return Err(ClientError::Connection("no backup link".into()));
        };
        let (p, b) = tokio::join!(inner.primary.session(inner), backup_link.session(inner));
        let wrong_role = |addr: &str, link: &Link, want: &str| {
            let role = link.role();
            (role != want).then(|| {
                ClientError::Connection(format!(
                    "{addr} says it is a {role} server, not the pair's {want}: check the order of \
                     the two addresses"
                ))
            })
        };
        match p {
            Ok(_) => {
                if let Some(err) = wrong_role(primary, &inner.primary, "primary") {
                    return Err(err);
                }
            }
            Err(err) if config.read_from == ReadFrom::Primary || b.is_err() => return Err(err),
            Err(_) => {}
        }
        if b.is_ok() {
            if let Some(err) = wrong_role(backup, backup_link, "backup") {
                return Err(err);
            }
        }
        Ok(client)
    }

    fn assemble(primary: Link, backup: Option<Link>, config: &ClientConfig) -> Client {
        Client {
            inner: Arc::new(Inner {
                primary,
                backup,
                config: config.clone(),
                closed: AtomicBool::new(false),
                backup_current_at: Mutex::new(None),
                primary_redialing: AtomicBool::new(false),
                session_id: jitter_seed() ^ u64::from(std::process::id()).rotate_left(32),
                next_seq: AtomicU64::new(0),
                write_retries: AtomicU64::new(0),
            }),
            timeout: config.timeout,
        }
    }

    /// A handle on the same connections whose calls have deadline `timeout` instead of
    /// [`ClientConfig::timeout`].
    ///
    /// ```no_run
    /// # async fn f(client: quickv_client::Client) -> Result<(), quickv_client::ClientError> {
    /// use std::time::Duration;
    /// let value = client.with_timeout(Duration::from_millis(50)).get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout: Some(timeout),
        }
    }

    /// A handle on the same connections whose calls have no deadline.
    pub fn without_timeout(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout: None,
        }
    }

    /// The deadline of each call made through this handle.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The (primary) server's hello line, e.g. `quickv 0.1.0 role=primary`; empty if it was never
    /// reached.
    pub fn server_info(&self) -> String {
        self.inner
            .primary
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls written and still awaited by their callers, over every connection of this client.
    /// A call whose future was dropped no longer counts, even before its late answer arrives.
    pub fn in_flight(&self) -> usize {
        let links = std::iter::once(&self.inner.primary).chain(self.inner.backup.as_ref());
        links.filter_map(Link::current).map(|s| s.in_flight()).sum()
    }

    /// Sends one request to the primary and waits for its answer, within the deadline. A dump's
    /// chunks are merged into a single `DumpChunk { last: true }`. Errors here are transport
    /// errors and [`ClientError::Timeout`]; the reply is raw (a write past its deadline, or cut
    /// off by a lost connection, is `Reply::Indeterminate`).
    pub async fn call(&self, op: Op) -> Result<Reply, ClientError> {
        self.call_on(&self.inner.primary, op).await
    }

    async fn call_on(&self, link: &Link, op: Op) -> Result<Reply, ClientError> {
        let is_write = op.is_write();
        if is_write && self.inner.config.retry_writes && std::ptr::eq(link, &self.inner.primary) {
            return self.write_with_retries(op).await;
        }
        let work = async {
            let mut pending = link.start(op, None, &self.inner).await?;
            pending.answer().await
        };
        match self.timeout {
            None => work.await,
            Some(deadline) => match tokio::time::timeout(deadline, work).await {
                Ok(outcome) => outcome,
                Err(_) => past_deadline(is_write, deadline),
            },
        }
    }

    /// Write attempts this client resent with their session stamp because the first attempt's
    /// fate was unknown (shared by clones); a figure for logs and tests.
    pub fn write_retries(&self) -> u64 {
        self.inner.write_retries.load(Ordering::Relaxed)
    }

    /// This client's session id, stamped on every write (see [`ClientConfig::retry_writes`]).
    pub fn session_id(&self) -> u64 {
        self.inner.session_id
    }

    /// A write with a fresh (session, sequence) stamp, resent with the same stamp while its fate
    /// is unknown (lost connection, `Indeterminate`, a primary restarting) until the pair gives a
    /// definite answer or the deadline passes. See `docs/client.md`, "Sessions and retries".
    async fn write_with_retries(&self, op: Op) -> Result<Reply, ClientError> {
        let inner = &self.inner;
        let stamp = WriteStamp {
            session: inner.session_id,
            seq: inner.next_seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let budget = self.timeout.unwrap_or(RETRY_WINDOW_WITHOUT_DEADLINE);
        let first = Instant::now();
        let deadline = first + budget;
        // Set once an attempt may have reached the server: from then on only a definite answer
        // (or the deadline) ends the call, never a refusal that says nothing about that attempt.
        let mut maybe_applied = false;
        let mut pause = inner.config.backoff_min;
        let mut last = ClientError::Timeout(format!("no answer within the deadline of {budget:?}"));
        loop {
            let now = Instant::now();
            if now >= deadline {
                return match maybe_applied {
                    true => Ok(Reply::Indeterminate(format!(
                        "no definite answer within the deadline of {budget:?} ({last}); the                          write may have been applied"
                    ))),
                    false => Err(last),
                };
            }
            if maybe_applied {
                inner.write_retries.fetch_add(1, Ordering::Relaxed);
            }
            let session = Some(SessionWrite {
                stamp,
                age_ms: u32::try_from(now.duration_since(first).as_millis()).unwrap_or(u32::MAX),
            });
            let attempt = async {
                let mut pending = inner.primary.start(op.clone(), session, inner).await?;
                pending.answer().await
            };
            let outcome = match tokio::time::timeout(deadline - now, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    maybe_applied = true;
                    continue;
                }
            };
            match outcome {
                Ok(Reply::Indeterminate(why)) => {
                    maybe_applied = true;
                    last = ClientError::Indeterminate(why);
                }
                Ok(Reply::Unavailable(why)) if maybe_applied => {
                    last = ClientError::Unavailable(why);
                }
                // A call that never left this process: retried only if an earlier attempt may
                // have, otherwise reported at once as before.
                Err(err @ ClientError::Connection(_)) if maybe_applied => last = err,
                Ok(definite) => return Ok(definite),
                Err(other) => return Err(other),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(inner.config.backoff_max);
        }
    }

    /// Inserts a new key; fails with [`ClientError::Exists`] if it is present.
    pub async fn insert(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let op = Op::Insert {
            key: key.into(),
            value: value.into(),
        };
        expect_ok(self.call(op).await?)
    }

    /// Replaces the value of an existing key; fails with [`ClientError::NotFound`] if absent.
    pub async fn update(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let op = Op::Update {
            key: key.into(),
            value: value.into(),
        };
        expect_ok(self.call(op).await?)
    }

    /// Deletes a key and returns its old value; fails with [`ClientError::NotFound`] if absent.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        match self.call(Op::Delete { key: key.into() }).await? {
            Reply::Value(v) => Ok(v),
            other => Err(refusal(other)),
        }
    }

    /// Reads a key from the primary (linearizable); `None` if absent. Never goes to the backup:
    /// see [`Client::read`] for that.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        get_answer(self.call(Op::Get { key: key.into() }).await?)
    }

    /// Reads a key and says which server answered. Like [`Client::get`], except that on a pair
    /// client with [`ReadFrom::BackupIfPrimaryDown`] the read goes to the backup while the
    /// primary cannot be reached (no live connection, or the connection failed during this
    /// read) and the backup reports its store current; then `from` is [`Source::Backup`]. The
    /// primary is redialled in the background meanwhile. With [`ReadFrom::Primary`] (the
    /// default) this never reads from the backup.
    pub async fn read(&self, key: impl Into<Bytes>) -> Result<Read, ClientError> {
        let key = key.into();
        let inner = &self.inner;
        let backup = match (&inner.backup, inner.config.read_from) {
            (Some(b), ReadFrom::BackupIfPrimaryDown) => b,
            _ => {
                let value = self.get(key).await?;
                return Ok(Read {
                    value,
                    from: Source::Primary,
                });
            }
        };
        let why = match inner.primary.current() {
            Some(s) if !s.dead() => match self.call(Op::Get { key: key.clone() }).await {
                Err(ClientError::Connection(why)) => why,
                outcome => {
                    return Ok(Read {
                        value: get_answer(outcome?)?,
                        from: Source::Primary,
                    })
                }
            },
            _ => "no connection to the primary".to_string(),
        };
        self.redial_primary_in_background();
        self.check_backup_current(backup, &why).await?;
        let value = get_answer(self.call_on(backup, Op::Get { key }).await?)?;
        Ok(Read {
            value,
            from: Source::Backup,
        })
    }

    /// Starts one background dial of the primary, unless one is under way (the dial itself
    /// honours the backoff).
    fn redial_primary_in_background(&self) {
        if self.inner.primary_redialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _ = inner.primary.session(&inner).await;
            inner.primary_redialing.store(false, Ordering::Release);
        });
    }

    /// Reads from the backup are allowed only while it reports its store current; the answer is
    /// trusted for a second.
    async fn check_backup_current(&self, backup: &Link, why: &str) -> Result<(), ClientError> {
        let fresh = self
            .inner
            .backup_current_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < BACKUP_CHECK_EVERY);
        if fresh {
            return Ok(());
        }
        let status = match self.call_on(backup, Op::Status).await {
            Ok(Reply::Status(text)) => parse_status(&text)?,
            Ok(other) => return Err(refusal(other)),
            Err(err) => {
                return Err(ClientError::Connection(format!(
                    "neither server can be reached: the primary: {why}; the backup: {err}"
                )))
            }
        };
        if status.current != Some(true) {
            return Err(ClientError::Unavailable(format!(
                "the primary cannot be reached ({why}) and the backup's store is not known \
                 current (state {})",
                status.state
            )));
        }
        *self
            .inner
            .backup_current_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        Ok(())
    }

    /// Number of keys on the server.
    pub async fn count(&self) -> Result<u64, ClientError> {
        match self.call(Op::Count).await? {
            Reply::Count(n) => Ok(n),
            other => Err(refusal(other)),
        }
    }

    /// Every pair on the server, sorted by key.
    pub async fn dump(&self) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        match self.call(Op::Dump).await? {
            Reply::DumpChunk { mut entries, .. } => {
                entries.sort();
                Ok(entries)
            }
            other => Err(refusal(other)),
        }
    }

    /// The (primary) server's status document, typed; see [`Status`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Op::Status).await? {
            Reply::Status(text) => parse_status(&text),
            other => Err(refusal(other)),
        }
    }

    /// The backup's status document, on a pair client (`None` on a single-server client): its
    /// role, replication state and whether its store is current — what [`Client::read`] checks
    /// before reading there.
    pub async fn backup_status(&self) -> Result<Option<Status>, ClientError> {
        let Some(backup) = &self.inner.backup else {
            return Ok(None);
        };
        match self.call_on(backup, Op::Status).await? {
            Reply::Status(text) => parse_status(&text).map(Some),
            other => Err(refusal(other)),
        }
    }

    /// The (primary) server's status document as sent (JSON), e.g. to print it whole.
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self.status().await?.into_raw())
    }

    /// Round trip with an echoed payload.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        match self.call(Op::Ping(payload.into())).await? {
            Reply::Value(v) => Ok(v),
            other => Err(refusal(other)),
        }
    }

    /// Asks the server to stop gracefully.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        expect_ok(self.call(Op::Shutdown).await?)
    }

    /// Closes the connections now (calls in flight fail) and waits briefly until the servers
    /// have been told, so a short-lived process does not leave a half-open connection behind.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let links = std::iter::once(&self.inner.primary).chain(self.inner.backup.as_ref());
        for link in links {
            if let Some(session) = link.current() {
                session.conn.close(0u32.into(), b"client closed");
            }
            let _ = tokio::time::timeout(CLOSE_WAIT, link.endpoint.wait_idle()).await;
        }
    }
}

/// The client TLS settings of `config`.
fn client_tls(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    tls::client_config(
        &CertPaths::new(&config.certs_dir),
        Identity::Client,
        config.idle_timeout,
        config.idle_timeout / 3,
    )
    .map_err(|e| ClientError::Connection(e.to_string()))
}

fn parse_status(text: &str) -> Result<Status, ClientError> {
    let raw: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ClientError::Protocol(format!("status is not JSON: {e}")))?;
    Status::from_json(raw)
        .map_err(|e| ClientError::Protocol(format!("status lacks a field this client needs: {e}")))
}

/// The answer to a Get.
fn get_answer(reply: Reply) -> Result<Option<Bytes>, ClientError> {
    match reply {
        Reply::Value(v) => Ok(Some(v)),
        Reply::NotFound => Ok(None),
        other => Err(refusal(other)),
    }
}

fn no_answer(addr: &str, config: &ClientConfig) -> ClientError {
    ClientError::Connection(format!(
        "no answer from {addr} within {:?}: is the server running and reachable over UDP?",
        config.connect_timeout
    ))
}

fn expect_ok(reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(refusal(other)),
    }
}

/// Maps a non-success answer to its error.
fn refusal(reply: Reply) -> ClientError {
    match reply {
        Reply::Exists => ClientError::Exists,
        Reply::NotFound => ClientError::NotFound,
        Reply::Unavailable(r) => ClientError::Unavailable(r),
        Reply::Indeterminate(r) => ClientError::Indeterminate(r),
        Reply::Error {
            code: ErrorCode::Forbidden,
            message,
        } => ClientError::Forbidden(message),
        Reply::Error { code, message } => ClientError::Server { code, message },
        other => unexpected(other),
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {reply:?}"))
}

/// Resolves `host:port`; the host part is the TLS server name (IP literals work as IP SANs).
async fn resolve(addr: &str) -> Result<(SocketAddr, String), ClientError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok((sock, sock.ip().to_string()));
    }
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| ClientError::Connection(format!("{addr:?} is not HOST:PORT")))?;
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Connection(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Connection(format!("{addr} resolves to no address")))?;
    Ok((sock, host))
}

/// Opens one stream and starts its writer and reader tasks.
async fn open_lane(conn: &quinn::Connection, limits: Limits) -> Result<Lane, ClientError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
    let owed = Arc::new(Mutex::new(Owed::default()));
    let (tx, rx) = mpsc::channel(LANE_QUEUE);
    tokio::spawn(write_lane(send, rx, owed.clone(), conn.clone()));
    tokio::spawn(read_lane(recv, owed.clone(), limits, conn.clone()));
    Ok(Lane { queue: tx, owed })
}

/// Writes queued calls in batches, registering each before it is written.
async fn write_lane(
    send: quinn::SendStream,
    mut rx: mpsc::Receiver<Call>,
    owed: Arc<Mutex<Owed>>,
    conn: quinn::Connection,
) {
    let mut writer = BatchWriter::new(send);
    while let Some(first) = rx.recv().await {
        {
            let Ok(mut owed) = owed.lock() else { return };
            writer.batch(
                first,
                || rx.try_recv().ok(),
                |call, out| {
                    if let Some(err) = &owed.broken {
                        let _ = call.reply.send(Err(err.clone()));
                        return;
                    }
                    if call.reply.is_closed() {
                        // Cancelled before it was written: nothing to send.
                        return;
                    }
                    let id = call.id;
                    let is_write = call.op.is_write();
                    let request = Request {
                        id,
                        op: call.op,
                        session: call.session,
                    };
                    encode_request(&request, out);
                    owed.calls.insert(
                        id,
                        Waiting {
                            reply: Some(call.reply),
                            is_write,
                            gathered: Vec::new(),
                        },
                    );
                },
            );
        }
        if writer.is_empty() {
            let broken = owed.lock().map(|o| o.broken.is_some()).unwrap_or(true);
            if broken {
                // Only calls refused because the lane broke: close the queue, so later calls see
                // the lane gone and go to a new connection instead.
                return;
            }
            // Only cancelled calls: nothing to write.
            continue;
        }
        if let Err(e) = writer.flush().await {
            let err = match conn.close_reason() {
                Some(reason) => ClientError::Connection(tls::explain_connection_error(&reason)),
                None => ClientError::Connection(format!("cannot send: {e}")),
            };
            if let Ok(mut owed) = owed.lock() {
                owed.fail_all(err);
            }
            return;
        }
    }
    writer.finish();
}

/// Reads answers and hands each to its caller.
async fn read_lane(
    recv: quinn::RecvStream,
    owed: Arc<Mutex<Owed>>,
    limits: Limits,
    conn: quinn::Connection,
) {
    let mut reader = FramedReader::new(recv);
    let err = loop {
        match reader.fill().await {
            Ok(false) => {
                break ClientError::Connection(
                    "the server ended the stream (it may be shutting down)".into(),
                )
            }
            Ok(true) => {}
            Err(e) => {
                break match conn.close_reason() {
                    Some(reason) => ClientError::Connection(tls::explain_connection_error(&reason)),
                    None => ClientError::Connection(format!("connection lost: {e}")),
                }
            }
        }
        let decoded = deliver(reader.buffer(), &owed, &limits);
        if let Err(e) = decoded {
            break e;
        }
    };
    if let Ok(mut owed) = owed.lock() {
        owed.fail_all(err);
    }
}

/// Decodes every complete answer in `inbuf` and completes its call.
fn deliver(inbuf: &mut BytesMut, owed: &Mutex<Owed>, limits: &Limits) -> Result<(), ClientError> {
    let Ok(mut owed) = owed.lock() else {
        return Err(ClientError::Protocol("lane state poisoned".into()));
    };
    loop {
        let resp = match decode_response(inbuf, limits) {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(()),
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        if resp.id == 0 {
            // A stream-level complaint from the server (our bytes were unreadable).
            return Err(match resp.reply {
                Reply::Error { code, message } => ClientError::Server { code, message },
                other => unexpected(other),
            });
        }
        match resp.reply {
            Reply::DumpChunk {
                entries,
                last: false,
            } => {
                if let Some(Waiting {
                    reply: Some(_),
                    gathered,
                    ..
                }) = owed.calls.get_mut(&resp.id)
                {
                    gathered.extend(entries);
                }
            }
            reply => {
                let Some(Waiting {
                    reply: tx,
                    gathered,
                    ..
                }) = owed.calls.remove(&resp.id)
                else {
                    return Err(ClientError::Protocol(format!(
                        "answer to unknown request {}",
                        resp.id
                    )));
                };
                let reply = match reply {
                    Reply::DumpChunk { entries, .. } if !gathered.is_empty() => {
                        let mut all = gathered;
                        all.extend(entries);
                        Reply::DumpChunk {
                            entries: all,
                            last: true,
                        }
                    }
                    other => other,
                };
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(reply));
                }
            }
        }
    }
}
