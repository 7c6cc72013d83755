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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::net::{BatchWriter, FramedReader};
use crate::protocol::{
    decode_response, encode_request, ErrorCode, Limits, Op, Reply, Request, PROTOCOL_VERSION,
};
use crate::tls::{CertPaths, Identity};

pub mod net;
pub mod tls;

/// The wire protocol the client speaks ([`Op`], [`Reply`], [`Limits`], …), re-exported so that an
/// application needs no second dependency.
pub use quickv_proto as protocol;

/// Default number of long-lived streams per client connection.
pub const DEFAULT_STREAMS: usize = 4;
/// Default time allowed for the QUIC/TLS handshake plus the hello, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default idle timeout, in milliseconds: a server silent this long (dead, partitioned) fails the
/// calls in flight (writes as indeterminate). Keep-alives go out at a third of it.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5_000;
/// Longest [`Client::close`] waits for the close to reach the server.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Calls queued per lane before callers wait (backpressure).
const LANE_QUEUE: usize = 1024;

/// How to reach and authenticate to a server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Directory with `ca.pem`, `client.pem` and `client.key`.
    pub certs_dir: PathBuf,
    /// Long-lived streams to open; requests are spread over them.
    pub streams: usize,
    /// Time allowed to connect and exchange the hello.
    pub connect_timeout: Duration,
    /// Connection idle timeout (keep-alives are sent at a third of it).
    pub idle_timeout: Duration,
    /// Size limits applied to answers.
    pub limits: Limits,
}

impl ClientConfig {
    /// Defaults with certificates from `certs_dir`.
    pub fn new(certs_dir: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            certs_dir: certs_dir.into(),
            streams: DEFAULT_STREAMS,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            limits: Limits::default(),
        }
    }
}

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
    /// The write may or may not have taken effect.
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
}

impl ClientError {
    /// True when the server answered about the operation itself (exists, not found, unavailable,
    /// indeterminate, forbidden): the CLI exits 1 for these and 2 for everything else.
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

/// A connection to one quickv server. Clone it freely; clones share the connection.
///
/// If the connection is lost (server restarted, network cut), calls in flight fail — writes as
/// [`ClientError::Indeterminate`], since they may have been applied — and the next call dials
/// again by itself. A call is retried on a new connection only if it was never sent.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Kept so the UDP socket lives as long as the client; every reconnection reuses it.
    endpoint: quinn::Endpoint,
    /// Where the server is, and the TLS server name to check.
    target: (SocketAddr, String),
    /// TLS settings, reused to reconnect.
    client_cfg: quinn::ClientConfig,
    /// Streams, limits and timeouts.
    config: ClientConfig,
    /// The current connection and its lanes; replaced when it is found dead.
    session: std::sync::Mutex<Arc<Session>>,
    /// Serialises reconnection so concurrent callers dial once; holds the last failed dial, so
    /// callers that waited behind it get its answer at once.
    redial: tokio::sync::Mutex<Option<(tokio::time::Instant, ClientError)>>,
    /// Set by [`Client::close`]: no more reconnecting.
    closed: std::sync::atomic::AtomicBool,
    /// The hello answer, e.g. "quickv 0.1.0 role=primary"; set once the hello is answered.
    server: OnceLock<String>,
}

/// One QUIC connection with its lanes.
#[derive(Debug)]
struct Session {
    /// The connection, to close it and to see whether it died.
    conn: quinn::Connection,
    /// One queue per lane.
    lanes: Vec<mpsc::Sender<Call>>,
    /// Round-robin cursor over `lanes`.
    next_lane: AtomicUsize,
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
        })
    }

    /// Queues a call on the next lane; gives it back if the lane is gone (never sent).
    async fn send(&self, call: Call) -> Result<(), Call> {
        let i = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].send(call).await.map_err(|e| e.0)
    }

    fn dead(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}

/// A request waiting to be written.
struct Call {
    op: Op,
    reply: oneshot::Sender<Result<Reply, ClientError>>,
}

/// Requests written on a lane and not yet answered.
#[derive(Default)]
struct Owed {
    /// The calls written and not yet answered, by request id.
    calls: HashMap<u64, Waiting>,
    /// Set once the lane is dead; later calls fail with it at once.
    broken: Option<ClientError>,
}

/// One call written on a lane and not yet answered.
struct Waiting {
    /// Where the answer goes.
    reply: oneshot::Sender<Result<Reply, ClientError>>,
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

impl Client {
    /// Connects, authenticates with the client certificate, and exchanges the protocol hello.
    ///
    /// Succeeds only after the server answered the hello, so a refused certificate (which TLS 1.3
    /// reports only on first use) is an error here, in plain words.
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let client_cfg = tls::client_config(
            &CertPaths::new(&config.certs_dir),
            Identity::Client,
            config.idle_timeout,
            config.idle_timeout / 3,
        )
        .map_err(|e| ClientError::Connection(e.to_string()))?;
        Client::connect_with(addr, client_cfg, config).await
    }

    /// Connects with an explicit quinn client config (used to test refusals of bad certificates).
    pub async fn connect_with(
        addr: &str,
        client_cfg: quinn::ClientConfig,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let (sock, name) = resolve(addr).await?;
        let bind: SocketAddr = if sock.is_ipv4() {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| ClientError::Connection("bad bind".into()))?
        } else {
            "[::]:0"
                .parse()
                .map_err(|_| ClientError::Connection("bad bind".into()))?
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        let target = (sock, name);
        let session = dial(&endpoint, &target, &client_cfg, config).await?;
        let client = Client {
            inner: Arc::new(Inner {
                endpoint,
                target,
                client_cfg,
                config: config.clone(),
                session: std::sync::Mutex::new(Arc::new(session)),
                redial: tokio::sync::Mutex::new(None),
                closed: std::sync::atomic::AtomicBool::new(false),
                server: OnceLock::new(),
            }),
        };
        let hello = async {
            match client
                .call(Op::Hello {
                    version: PROTOCOL_VERSION,
                })
                .await?
            {
                Reply::Hello { server, .. } => {
                    let _ = client.inner.server.set(server);
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        };
        tokio::time::timeout(config.connect_timeout, hello)
            .await
            .map_err(|_| no_answer(addr, config))??;
        Ok(client)
    }

    /// The server's hello line, e.g. `quickv 0.1.0 role=primary`.
    pub fn server_info(&self) -> &str {
        self.inner
            .server
            .get()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Sends one request and waits for its answer. A dump's chunks are merged into a single
    /// `DumpChunk { last: true }`. Errors here are transport errors only; the reply is raw.
    pub async fn call(&self, op: Op) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut call = Call { op, reply: tx };
        let mut session = self.session().await?;
        // At most one retry, and only of a call that never left this process.
        for attempt in 0..2 {
            match session.send(call).await {
                Ok(()) => break,
                Err(unsent) if attempt == 0 => {
                    call = unsent;
                    session = self.redial(&session).await?;
                }
                Err(_) => return Err(ClientError::Connection("the connection is closed".into())),
            }
        }
        rx.await
            .map_err(|_| ClientError::Connection("the connection is closed".into()))?
    }

    /// The session in use (maybe dead; see [`Client::session`]).
    fn current_session(&self) -> Arc<Session> {
        self.inner
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current session, redialled first if it is known dead.
    async fn session(&self) -> Result<Arc<Session>, ClientError> {
        let current = self.current_session();
        if current.dead() {
            return self.redial(&current).await;
        }
        Ok(current)
    }

    /// Replaces a dead session (once, however many callers notice it).
    async fn redial(&self, dead: &Arc<Session>) -> Result<Arc<Session>, ClientError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(ClientError::Connection("the client was closed".into()));
        }
        let waiting_since = tokio::time::Instant::now();
        let mut last_failure = self.inner.redial.lock().await;
        // Someone dialled and failed while we waited: share that answer instead of queueing up
        // one more connect timeout per caller.
        if let Some((when, err)) = last_failure.as_ref() {
            if *when >= waiting_since {
                return Err(err.clone());
            }
        }
        let current = self.current_session();
        if !Arc::ptr_eq(&current, dead) && !current.dead() {
            return Ok(current);
        }
        let inner = &self.inner;
        match dial(
            &inner.endpoint,
            &inner.target,
            &inner.client_cfg,
            &inner.config,
        )
        .await
        {
            Ok(session) => {
                let fresh = Arc::new(session);
                *inner.session.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                *last_failure = None;
                Ok(fresh)
            }
            Err(err) => {
                *last_failure = Some((tokio::time::Instant::now(), err.clone()));
                Err(err)
            }
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

    /// Reads a key; `None` if absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.call(Op::Get { key: key.into() }).await? {
            Reply::Value(v) => Ok(Some(v)),
            Reply::NotFound => Ok(None),
            other => Err(refusal(other)),
        }
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

    /// The server's status document.
    pub async fn status(&self) -> Result<serde_json::Value, ClientError> {
        match self.call(Op::Status).await? {
            Reply::Status(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("status is not JSON: {e}"))),
            other => Err(refusal(other)),
        }
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

    /// Closes the connection now (calls in flight fail) and waits briefly until the server has
    /// been told, so a short-lived process does not leave a half-open connection behind.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let session = self.current_session();
        session.conn.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(CLOSE_WAIT, self.inner.endpoint.wait_idle()).await;
    }
}

/// Dials the server and opens the lanes, within the connect timeout.
async fn dial(
    endpoint: &quinn::Endpoint,
    (sock, name): &(SocketAddr, String),
    client_cfg: &quinn::ClientConfig,
    config: &ClientConfig,
) -> Result<Session, ClientError> {
    let attempt = async {
        let connecting = endpoint
            .connect_with(client_cfg.clone(), *sock, name)
            .map_err(|e| ClientError::Connection(format!("cannot connect to {sock}: {e}")))?;
        let conn = connecting
            .await
            .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
        Session::open(conn, config).await
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| no_answer(&sock.to_string(), config))?
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
async fn open_lane(
    conn: &quinn::Connection,
    limits: Limits,
) -> Result<mpsc::Sender<Call>, ClientError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
    let owed = Arc::new(Mutex::new(Owed::default()));
    let (tx, rx) = mpsc::channel(LANE_QUEUE);
    tokio::spawn(write_lane(send, rx, owed.clone(), conn.clone()));
    tokio::spawn(read_lane(recv, owed, limits, conn.clone()));
    Ok(tx)
}

/// Writes queued calls in batches, registering each before it is written.
async fn write_lane(
    send: quinn::SendStream,
    mut rx: mpsc::Receiver<Call>,
    owed: Arc<Mutex<Owed>>,
    conn: quinn::Connection,
) {
    let mut next_id: u64 = 1;
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
                    let id = next_id;
                    next_id += 1;
                    let is_write = call.op.is_write();
                    encode_request(&Request { id, op: call.op }, out);
                    owed.calls.insert(
                        id,
                        Waiting {
                            reply: call.reply,
                            is_write,
                            gathered: Vec::new(),
                        },
                    );
                },
            );
        }
        if writer.is_empty() {
            // Only calls refused because the lane broke: close the queue, so later calls see the
            // lane gone and go to a new connection instead.
            return;
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
                if let Some(Waiting { gathered, .. }) = owed.calls.get_mut(&resp.id) {
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
                let _ = tx.send(Ok(reply));
            }
        }
    }
}
