//! The connections under [`crate::Client`]: a [`Link`] per server (its connection, redials with
//! backoff) and a [`Connection`] per QUIC connection with its long-lived streams ("pipes", in
//! `pipe.rs`), over which calls are spread round-robin.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::owed::Deadline;
use crate::pipe::{open_pipe, within, Call, Pending, Pipe, Queued, Sent, Unsent};
use quickv_net::tls;
use quickv_proto::{Op, Reply, WriteStamp, PROTOCOL_VERSION};

use crate::config::ClientConfig;
use crate::error::{no_answer, refusal, ClientError};

/// One server: its address, TLS settings and current connection.
#[derive(Debug)]
pub(crate) struct Link {
    /// Kept so the UDP socket lives as long as the client; every reconnection reuses it.
    pub(crate) endpoint: quinn::Endpoint,
    /// Where the server is, and the TLS server name to check.
    pub(crate) target: (SocketAddr, String),
    /// TLS settings, reused to reconnect.
    pub(crate) client_cfg: quinn::ClientConfig,
    /// The current connection and its pipes (`None` until the first dial succeeded); replaced
    /// when it is found dead.
    pub(crate) connection: Mutex<Option<Arc<Connection>>>,
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

/// One QUIC connection with its pipes.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The connection, to close it and to see whether it died.
    pub(crate) conn: quinn::Connection,
    /// One queue per pipe.
    pub(crate) pipes: Vec<Pipe>,
    /// Round-robin cursor over `pipes`.
    pub(crate) next_pipe: AtomicUsize,
}

impl Connection {
    /// Opens the pipes on a fresh connection.
    pub(crate) async fn open(
        conn: quinn::Connection,
        config: &ClientConfig,
    ) -> Result<Connection, ClientError> {
        let streams = config.streams.clamp(1, usize::from(u16::MAX));
        let mut pipes = Vec::with_capacity(streams);
        for i in 0..streams {
            // `streams` fits in u16 (clamped above); the index is part of every request id.
            pipes.push(open_pipe(&conn, config.limits, i as u16).await?);
        }
        Ok(Connection {
            conn,
            pipes,
            next_pipe: AtomicUsize::new(0),
        })
    }

    /// The pipe the next call goes to (round robin).
    pub(crate) fn pick(&self) -> usize {
        self.next_pipe.fetch_add(1, Ordering::Relaxed) % self.pipes.len()
    }

    /// Queues a call on pipe `i` (from [`Connection::pick`]), with its deadline (if any). Gives
    /// the call back if the pipe is gone (never sent), and says `Late` if the deadline passed
    /// while waiting for room in the pipe's queue. A call waits on the pipe it was given, never on another: a session-stamped
    /// write must not overtake, or be overtaken by, many later writes of its caller.
    pub(crate) async fn send_on(&self, i: usize, call: Call, due: Option<Deadline>) -> Sent {
        let shared = &self.pipes[i % self.pipes.len()].shared;
        let mut call = match shared.try_queue(call, due, None) {
            Queued::Yes(pending) => return Ok(pending),
            Queued::Gone(call) => return Err(Unsent::Gone(call)),
            Queued::Full(call) => call,
        };
        // The queue is full: wait for the writer to take it (registered before looking again,
        // so the wake-up cannot be missed), at most until the deadline.
        loop {
            let room = shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            call = match shared.try_queue(call, due, None) {
                Queued::Yes(pending) => return Ok(pending),
                Queued::Gone(call) => return Err(Unsent::Gone(call)),
                Queued::Full(call) => call,
            };
            if within(due, room).await.is_none() {
                return Err(Unsent::Late);
            }
        }
    }

    pub(crate) fn dead(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Calls awaiting an answer whose callers still wait.
    pub(crate) fn in_flight(&self) -> usize {
        self.pipes
            .iter()
            .map(|l| l.shared.state.lock().map(|s| s.owed.awaited()).unwrap_or(0))
            .sum()
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
            connection: Mutex::new(None),
            redial: tokio::sync::Mutex::new(Redial::default()),
            server: Mutex::new(String::new()),
        })
    }

    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current connection, dialled (again) first if there is none or it is known dead.
    /// `closed` is the client's: once set, nothing is dialled any more.
    pub(crate) async fn connection(
        &self,
        config: &ClientConfig,
        closed: &AtomicBool,
    ) -> Result<Arc<Connection>, ClientError> {
        match self.current() {
            Some(c) if !c.dead() => Ok(c),
            other => self.redial(other.as_ref(), config, closed).await,
        }
    }

    /// Replaces a dead (or missing) connection — once, however many callers notice it — pacing the
    /// dials with the backoff.
    pub(crate) async fn redial(
        &self,
        dead: Option<&Arc<Connection>>,
        config: &ClientConfig,
        closed: &AtomicBool,
    ) -> Result<Arc<Connection>, ClientError> {
        if closed.load(Ordering::Relaxed) {
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
        match self.dial(config).await {
            Ok(connection) => {
                let fresh = Arc::new(connection);
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
                *redial = Redial::default();
                Ok(fresh)
            }
            Err(err) => {
                let cfg = config;
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

    /// Dials the server, opens the pipes and exchanges the hello, within the connect timeout.
    pub(crate) async fn dial(&self, config: &ClientConfig) -> Result<Connection, ClientError> {
        let (sock, name) = &self.target;
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.client_cfg.clone(), *sock, name)
                .map_err(|e| ClientError::Connection(format!("cannot connect to {sock}: {e}")))?;
            let conn = connecting
                .await
                .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
            let connection = Connection::open(conn, config).await?;
            // The hello: a refused certificate (which TLS 1.3 reports only on first use) shows
            // up here, in plain words, rather than on the application's first call.
            let hello = Call {
                op: Op::Hello {
                    version: PROTOCOL_VERSION,
                },
                session: None,
            };
            // Bounded by the connect timeout around this whole attempt.
            let Ok(answer) = connection.send_on(connection.pick(), hello, None).await else {
                return Err(ClientError::Connection("the connection is closed".into()));
            };
            match answer.await? {
                Reply::Hello { server, .. } => {
                    *self.server.lock().unwrap_or_else(|p| p.into_inner()) = server;
                    Ok(connection)
                }
                other => Err(refusal(other)),
            }
        };
        tokio::time::timeout(config.connect_timeout, attempt)
            .await
            .map_err(|_| no_answer(&sock.to_string(), config))?
    }

    /// Queues one call (redialling once if the connection turns out gone before it was sent),
    /// waiting for a connection at most until `due`. A call whose deadline passes before it is
    /// queued is settled at once with its past-deadline outcome.
    ///
    /// The usual case (a live connection whose chosen pipe has room) queues synchronously; only
    /// the rest (no connection yet, a full queue, a dead pipe) enters [`Link::start_slow`],
    /// boxed, so that every call's future does not carry the redial path's state.
    pub(crate) async fn start(
        &self,
        op: Op,
        session: Option<(WriteStamp, Option<Instant>)>,
        config: &ClientConfig,
        closed: &AtomicBool,
        due: Option<Deadline>,
    ) -> Result<Pending, ClientError> {
        match self.try_start(Call { op, session }, closed, due, None) {
            Started::Now(started) => started,
            Started::Stalled(stalled) => {
                Box::pin(self.start_slow(stalled, config, closed, due)).await
            }
        }
    }

    /// [`Link::start`]'s synchronous part: queues the call on the current connection's next pipe
    /// if that pipe has room; otherwise says what the call must wait for ([`Stalled`]). With
    /// `waker` (the caller's), the `Pending` is primed (see `PipeShared::try_queue`).
    pub(crate) fn try_start(
        &self,
        call: Call,
        closed: &AtomicBool,
        due: Option<Deadline>,
        waker: Option<Waker>,
    ) -> Started {
        let Some(c) = self.current() else {
            return Started::Stalled(Stalled { call, chosen: None });
        };
        if closed.load(Ordering::Relaxed) {
            return Started::Now(Err(ClientError::Connection("the client was closed".into())));
        }
        let i = c.pick();
        match c.pipes[i].shared.try_queue(call, due, waker) {
            Queued::Yes(pending) => Started::Now(Ok(pending)),
            // Wait on this same pipe.
            Queued::Full(call) => Started::Stalled(Stalled {
                call,
                chosen: Some((c, i)),
            }),
            Queued::Gone(call) => Started::Stalled(Stalled { call, chosen: None }),
        }
    }

    /// [`Link::start`]'s slow path: wait for room on the pipe already chosen, or dial (or redial
    /// a dead connection) first.
    pub(crate) async fn start_slow(
        &self,
        Stalled { mut call, chosen }: Stalled,
        config: &ClientConfig,
        closed: &AtomicBool,
        due: Option<Deadline>,
    ) -> Result<Pending, ClientError> {
        let is_write = call.op.is_write();
        let (mut connection, mut pipe) = match chosen {
            Some(chosen) => chosen,
            None => {
                let stale = self.current();
                let redial = self.redial(stale.as_ref(), config, closed);
                match within(due, redial).await {
                    Some(c) => {
                        let c = c?;
                        let i = c.pick();
                        (c, i)
                    }
                    None => return Ok(late(due, is_write)),
                }
            }
        };
        // At most one retry, and only of a call that never left this process.
        for attempt in 0..2 {
            match connection.send_on(pipe, call, due).await {
                Ok(pending) => return Ok(pending),
                Err(Unsent::Late) => return Ok(late(due, is_write)),
                Err(Unsent::Gone(unsent)) if attempt == 0 => {
                    call = unsent;
                    let redial = self.redial(Some(&connection), config, closed);
                    connection = match within(due, redial).await {
                        Some(s) => s?,
                        None => return Ok(late(due, is_write)),
                    };
                    pipe = connection.pick();
                }
                Err(Unsent::Gone(..)) => break,
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

/// What [`Link::try_start`] did.
pub(crate) enum Started {
    /// The call is queued (or failed at once: the client was closed).
    Now(Result<Pending, ClientError>),
    /// The call must wait, for room or a connection.
    Stalled(Stalled),
}

/// A call [`Link::try_start`] could not queue at once, and what it waits for.
pub(crate) struct Stalled {
    /// The call, never sent.
    call: Call,
    /// The pipe whose queue was full, to wait on that same pipe (a session-stamped write must
    /// not overtake, or be overtaken by, many later writes of its caller); `None`: the call needs
    /// a (new) connection first.
    chosen: Option<(Arc<Connection>, usize)>,
}

/// A call settled without being queued: its deadline passed while it waited.
fn late(due: Option<Deadline>, is_write: bool) -> Pending {
    Pending::settled(match due {
        Some(d) => d.outcome(is_write),
        // `Late` comes only from waiting on a deadline.
        None => Err(ClientError::Timeout("no answer within the deadline".into())),
    })
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
