//! The call machinery under [`crate::Client`]: a [`Link`] per server (its connection, redials
//! with backoff), a [`Session`] per QUIC connection with its long-lived streams ("lanes"), and the
//! writer and reader task of each lane that pipeline requests and hand answers back by id.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::net::{BatchWriter, FramedReader};
use crate::protocol::{
    decode_response, encode_request, Limits, Op, Reply, Request, SessionWrite, WriteStamp,
    PROTOCOL_VERSION,
};
use crate::{no_answer, refusal, tls, unexpected, ClientConfig, ClientError, Inner, LANE_QUEUE};

/// One server: its address, TLS settings and current connection.
#[derive(Debug)]
pub(crate) struct Link {
    /// Kept so the UDP socket lives as long as the client; every reconnection reuses it.
    pub(crate) endpoint: quinn::Endpoint,
    /// Where the server is, and the TLS server name to check.
    pub(crate) target: (SocketAddr, String),
    /// TLS settings, reused to reconnect.
    pub(crate) client_cfg: quinn::ClientConfig,
    /// The current connection and its lanes (`None` until the first dial succeeded); replaced
    /// when it is found dead.
    pub(crate) session: Mutex<Option<Arc<Session>>>,
    /// Serialises reconnection so concurrent callers dial once, and paces the dials.
    pub(crate) redial: tokio::sync::Mutex<Redial>,
    /// The last hello answer, e.g. "quickv 0.1.0 role=primary".
    pub(crate) server: Mutex<String>,
}

/// Reconnection pacing of one link.
#[derive(Debug, Default)]
pub(crate) struct Redial {
    /// The last failed dial: when it ended and why.
    pub(crate) last_failure: Option<(Instant, ClientError)>,
    /// No new dial before this instant (backoff).
    pub(crate) not_before: Option<Instant>,
    /// The next backoff step (before jitter).
    pub(crate) backoff: Duration,
}

/// One QUIC connection with its lanes.
#[derive(Debug)]
pub(crate) struct Session {
    /// The connection, to close it and to see whether it died.
    pub(crate) conn: quinn::Connection,
    /// One queue per lane.
    pub(crate) lanes: Vec<Lane>,
    /// Round-robin cursor over `lanes`.
    pub(crate) next_lane: AtomicUsize,
    /// Request ids, unique on the connection.
    pub(crate) next_id: AtomicU64,
}

/// One long-lived stream: its queue and the calls written on it and not yet answered.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) queue: mpsc::Sender<Call>,
    pub(crate) owed: Arc<Mutex<Owed>>,
}

impl Session {
    /// Opens the lanes on a fresh connection.
    pub(crate) async fn open(
        conn: quinn::Connection,
        config: &ClientConfig,
    ) -> Result<Session, ClientError> {
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
    pub(crate) async fn send(&self, mut call: Call) -> Result<(Arc<Mutex<Owed>>, u64), Call> {
        let i = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        call.id = id;
        let lane = &self.lanes[i];
        lane.queue.send(call).await.map_err(|e| e.0)?;
        Ok((lane.owed.clone(), id))
    }

    pub(crate) fn dead(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Calls awaiting an answer whose callers still wait.
    pub(crate) fn in_flight(&self) -> usize {
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
pub(crate) struct Call {
    pub(crate) id: u64,
    pub(crate) op: Op,
    /// The write's session stamp, if it carries one, and when a retried write was first sent
    /// (`None` on a first attempt): its age is taken when the frame is written, so time spent
    /// waiting for a connection counts (the server must never think a retry younger than it is).
    pub(crate) session: Option<(WriteStamp, Option<Instant>)>,
    pub(crate) reply: oneshot::Sender<Result<Reply, ClientError>>,
}

/// A call that was queued: where its answer comes, and how to cancel it if its caller goes away.
pub(crate) struct Pending {
    /// `None` once the answer came (or the guard was disarmed).
    pub(crate) rx: Option<oneshot::Receiver<Result<Reply, ClientError>>>,
    pub(crate) owed: Arc<Mutex<Owed>>,
    pub(crate) id: u64,
}

impl Pending {
    /// Waits for the answer.
    pub(crate) async fn answer(&mut self) -> Result<Reply, ClientError> {
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
pub(crate) struct Owed {
    /// The calls written and not yet answered, by request id.
    pub(crate) calls: HashMap<u64, Waiting>,
    /// Set once the lane is dead; later calls fail with it at once.
    pub(crate) broken: Option<ClientError>,
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
pub(crate) struct Waiting {
    /// Where the answer goes; `None` once the caller cancelled (the answer is discarded).
    pub(crate) reply: Option<oneshot::Sender<Result<Reply, ClientError>>>,
    /// Writes become indeterminate, not failed, if the connection dies.
    pub(crate) is_write: bool,
    /// Dump entries from chunks received so far.
    pub(crate) gathered: Vec<(Bytes, Bytes)>,
}

impl Owed {
    /// Fails every call in flight: a write that was sent may have been applied, so it is
    /// indeterminate; anything else failed with `err`.
    pub(crate) fn fail_all(&mut self, err: ClientError) {
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
pub(crate) fn past_deadline(is_write: bool, deadline: Duration) -> Result<Reply, ClientError> {
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
pub(crate) fn jitter_seed() -> u64 {
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
    pub(crate) async fn new(
        addr: &str,
        client_cfg: quinn::ClientConfig,
    ) -> Result<Link, ClientError> {
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

    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current session, dialled (again) first if there is none or it is known dead.
    pub(crate) async fn session(&self, inner: &Inner) -> Result<Arc<Session>, ClientError> {
        match self.current() {
            Some(s) if !s.dead() => Ok(s),
            other => self.redial(other.as_ref(), inner).await,
        }
    }

    /// Replaces a dead (or missing) session — once, however many callers notice it — pacing the
    /// dials with the backoff.
    pub(crate) async fn redial(
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
    pub(crate) async fn dial(&self, config: &ClientConfig) -> Result<Session, ClientError> {
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
    pub(crate) async fn start(
        &self,
        op: Op,
        session: Option<(WriteStamp, Option<Instant>)>,
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
    pub(crate) fn role(&self) -> String {
        let hello = self.server.lock().unwrap_or_else(|p| p.into_inner());
        hello
            .split_whitespace()
            .find_map(|w| w.strip_prefix("role="))
            .unwrap_or_default()
            .to_string()
    }
}

/// Resolves `host:port`; the host part is the TLS server name (IP literals work as IP SANs).
pub(crate) async fn resolve(addr: &str) -> Result<(SocketAddr, String), ClientError> {
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
pub(crate) async fn open_lane(
    conn: &quinn::Connection,
    limits: Limits,
) -> Result<Lane, ClientError> {
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
pub(crate) async fn write_lane(
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
                        session: call.session.map(|(stamp, since)| SessionWrite {
                            stamp,
                            age_ms: since.map_or(0, |t| {
                                u32::try_from(t.elapsed().as_millis()).unwrap_or(u32::MAX)
                            }),
                        }),
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
pub(crate) async fn read_lane(
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
pub(crate) fn deliver(
    inbuf: &mut BytesMut,
    owed: &Mutex<Owed>,
    limits: &Limits,
) -> Result<(), ClientError> {
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
