//! The call machinery under [`crate::Client`]: a [`Link`] per server (its connection, redials
//! with backoff), a [`Session`] per QUIC connection with its long-lived streams ("lanes"), and the
//! writer and reader task of each lane that pipeline requests and hand answers back by id.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::net::{BatchWriter, FramedReader};
use crate::owed::{Answer, Deadline, Owed};
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
}

/// One long-lived stream of a session: what its callers, writer, reader and deadline sweeper
/// share. Dropping it (with its session) lets the writer finish the stream.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) shared: Arc<LaneShared>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.ready.notify_one();
    }
}

/// What a stream's callers, writer, reader and deadline sweeper share.
#[derive(Debug)]
pub(crate) struct LaneShared {
    /// The calls in flight and the requests waiting to be written, under one lock: a caller
    /// takes it once to register and queue its call.
    pub(crate) state: Mutex<LaneState>,
    /// Wakes the writer: the queue went from empty to not empty, the lane closed or died.
    pub(crate) ready: Notify,
    /// Wakes callers waiting for room in a full queue (backpressure), or for the lane's death.
    pub(crate) room: Notify,
    /// Wakes the sweeper: a call came with an earlier deadline than it sleeps until, or the
    /// stream died.
    pub(crate) sweep: Notify,
}

/// The locked part of a [`LaneShared`].
#[derive(Debug)]
pub(crate) struct LaneState {
    /// The calls queued or written and not yet answered, by request id.
    pub(crate) owed: Owed,
    /// Requests waiting for the writer, in call order (at most [`LANE_QUEUE`]).
    pub(crate) queue: Vec<Queued>,
    /// Set when the session let go of the lane: the writer finishes the stream once the queue
    /// is written.
    pub(crate) closed: bool,
}

impl LaneShared {
    /// Fails every call in flight or queued, and stops the writer and the sweeper.
    fn fail_all(&self, err: ClientError) {
        if let Ok(mut state) = self.state.lock() {
            state.owed.fail_all(err);
            state.queue.clear();
        }
        self.ready.notify_one();
        self.room.notify_waiters();
        self.sweep.notify_one();
    }

    /// Registers and queues a call if there is room; gives it back if the queue is full.
    fn try_queue(
        self: &Arc<Self>,
        call: Call,
        reply: Answer,
        due: Option<Deadline>,
    ) -> Result<Sent, (Call, Answer)> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(Err(Unsent::Gone(call, reply)));
        };
        if state.closed {
            return Ok(Err(Unsent::Gone(call, reply)));
        }
        if state.queue.len() >= LANE_QUEUE && state.owed.broken.is_none() {
            return Err((call, reply));
        }
        let (id, wake_sweeper) = match state.owed.register(reply, call.op.is_write(), due) {
            Ok(registered) => registered,
            Err(reply) => return Ok(Err(Unsent::Gone(call, reply))),
        };
        let wake_writer = state.queue.is_empty();
        state.queue.push(Queued { id, call });
        drop(state);
        if wake_writer {
            self.ready.notify_one();
        }
        if wake_sweeper {
            self.sweep.notify_one();
        }
        Ok(Ok((self.clone(), id)))
    }
}

impl Session {
    /// Opens the lanes on a fresh connection.
    pub(crate) async fn open(
        conn: quinn::Connection,
        config: &ClientConfig,
    ) -> Result<Session, ClientError> {
        let streams = config.streams.clamp(1, usize::from(u16::MAX));
        let mut lanes = Vec::with_capacity(streams);
        for i in 0..streams {
            // `streams` fits in u16 (clamped above); the index is part of every request id.
            lanes.push(open_lane(&conn, config.limits, i as u16).await?);
        }
        Ok(Session {
            conn,
            lanes,
            next_lane: AtomicUsize::new(0),
        })
    }

    /// Queues a call on the next lane, with its deadline (if any). Gives the call back if the
    /// lane is gone (never sent), and says `Late` if the deadline passed while waiting for room
    /// in the lane's queue. Returns the lane and the request id, for cancelling.
    pub(crate) async fn send(&self, call: Call, reply: Answer, due: Option<Deadline>) -> Sent {
        let i = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let shared = &self.lanes[i].shared;
        let (mut call, mut reply) = match shared.try_queue(call, reply, due) {
            Ok(queued) => return queued,
            Err(full) => full,
        };
        // The queue is full: wait for the writer to take it (registered before looking again,
        // so the wake-up cannot be missed), at most until the deadline.
        loop {
            let room = shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            (call, reply) = match shared.try_queue(call, reply, due) {
                Ok(queued) => return queued,
                Err(full) => full,
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
        self.lanes
            .iter()
            .map(|l| l.shared.state.lock().map(|s| s.owed.awaited()).unwrap_or(0))
            .sum()
    }
}

/// A request to be written.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) op: Op,
    /// The write's session stamp, if it carries one, and when a retried write was first sent
    /// (`None` on a first attempt): its age is taken when the frame is written, so time spent
    /// waiting for a connection counts (the server must never think a retry younger than it is).
    pub(crate) session: Option<(WriteStamp, Option<Instant>)>,
}

/// A call in a lane's queue: its slot's request id and the request.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) id: u64,
    pub(crate) call: Call,
}

/// What [`Session::send`] did: the call's lane and request id (to cancel it), or why not.
pub(crate) type Sent = Result<(Arc<LaneShared>, u64), Unsent>;

/// Why [`Session::send`] did not queue a call.
pub(crate) enum Unsent {
    /// The lane is gone: the call (and its answer channel) can go to a new connection.
    Gone(Call, Answer),
    /// The deadline passed while waiting for room in the lane's queue.
    Late,
}

/// Awaits `work`, giving up (`None`) at the deadline. Used only where a call may wait (for a
/// connection, for room in a queue); the answer itself is bounded by the lane's sweeper.
pub(crate) async fn within<F: std::future::Future>(
    due: Option<Deadline>,
    work: F,
) -> Option<F::Output> {
    match due {
        None => Some(work.await),
        Some(d) => tokio::time::timeout_at(d.at, work).await.ok(),
    }
}

/// A call that was queued: where its answer comes, and how to cancel it if its caller goes away.
pub(crate) struct Pending {
    /// `None` once the answer came (or the call never went out).
    pub(crate) rx: Option<oneshot::Receiver<Result<Reply, ClientError>>>,
    /// The lane and request id, to cancel; `None` for a call settled without being queued.
    pub(crate) slot: Option<(Arc<LaneShared>, u64)>,
    /// The outcome of a call that was never queued (its deadline passed while it waited).
    pub(crate) settled: Option<Result<Reply, ClientError>>,
}

impl Pending {
    /// Waits for the answer.
    pub(crate) async fn answer(&mut self) -> Result<Reply, ClientError> {
        if let Some(outcome) = self.settled.take() {
            return outcome;
        }
        let Some(rx) = self.rx.as_mut() else {
            return Err(ClientError::Protocol("answer awaited twice".into()));
        };
        let outcome = rx.await;
        self.rx = None;
        outcome.map_err(|_| ClientError::Connection("the connection is closed".into()))?
    }
}

impl Drop for Pending {
    /// A caller that stops waiting (future dropped) cancels its call: a writer that has not
    /// written it yet skips it; a call already written keeps only a tombstone so its late answer
    /// is recognised and discarded.
    fn drop(&mut self) {
        if let (Some(rx), Some((lane, id))) = (self.rx.take(), self.slot.as_ref()) {
            drop(rx);
            if let Ok(mut state) = lane.state.lock() {
                state.owed.cancel(*id);
            }
        }
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
                op: Op::Hello {
                    version: PROTOCOL_VERSION,
                },
                session: None,
            };
            // Bounded by the connect timeout around this whole attempt.
            if session.send(hello, tx, None).await.is_err() {
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

    /// Queues one call (redialling once if the connection turns out gone before it was sent),
    /// waiting for a connection at most until `due`. A call whose deadline passes before it is
    /// queued is settled at once with its past-deadline outcome.
    pub(crate) async fn start(
        &self,
        op: Op,
        session: Option<(WriteStamp, Option<Instant>)>,
        inner: &Inner,
        due: Option<Deadline>,
    ) -> Result<Pending, ClientError> {
        let (tx, rx) = oneshot::channel();
        let is_write = op.is_write();
        let late = |d: Option<Deadline>| Pending {
            rx: None,
            slot: None,
            settled: d.map(|d| d.outcome(is_write)),
        };
        let mut call = Call { op, session };
        let mut reply = tx;
        // The usual case, a session, without a timer. A dead one is noticed by its lanes, which
        // then refuse the call (below: redial).
        let mut session = match self.current() {
            Some(_) if inner.closed.load(Ordering::Relaxed) => {
                return Err(ClientError::Connection("the client was closed".into()))
            }
            Some(s) => s,
            None => match within(due, self.redial(None, inner)).await {
                Some(s) => s?,
                None => return Ok(late(due)),
            },
        };
        // At most one retry, and only of a call that never left this process.
        for attempt in 0..2 {
            match session.send(call, reply, due).await {
                Ok((lane, id)) => {
                    return Ok(Pending {
                        rx: Some(rx),
                        slot: Some((lane, id)),
                        settled: None,
                    });
                }
                Err(Unsent::Late) => return Ok(late(due)),
                Err(Unsent::Gone(unsent, back)) if attempt == 0 => {
                    (call, reply) = (unsent, back);
                    session = match within(due, self.redial(Some(&session), inner)).await {
                        Some(s) => s?,
                        None => return Ok(late(due)),
                    };
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

/// Opens stream number `index` and starts its writer, reader and deadline sweeper tasks.
pub(crate) async fn open_lane(
    conn: &quinn::Connection,
    limits: Limits,
    index: u16,
) -> Result<Lane, ClientError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connection(tls::explain_connection_error(&e)))?;
    let shared = Arc::new(LaneShared {
        state: Mutex::new(LaneState {
            owed: Owed::new(index),
            queue: Vec::new(),
            closed: false,
        }),
        ready: Notify::new(),
        room: Notify::new(),
        sweep: Notify::new(),
    });
    tokio::spawn(write_lane(send, shared.clone(), conn.clone()));
    tokio::spawn(read_lane(recv, shared.clone(), limits, conn.clone()));
    tokio::spawn(sweep_lane(shared.clone()));
    Ok(Lane { shared })
}

/// Writes queued calls in batches: takes the whole queue per wake-up, marks each call written
/// (skipping those whose callers stopped waiting), encodes and writes them.
pub(crate) async fn write_lane(
    send: quinn::SendStream,
    shared: Arc<LaneShared>,
    conn: quinn::Connection,
) {
    let mut writer = BatchWriter::new(send);
    let mut taken: Vec<Queued> = Vec::new();
    loop {
        let (was_full, closed) = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            if state.owed.broken.is_some() {
                // Every queued call was failed with the lane; later calls see it broken and go
                // to a new connection.
                return;
            }
            std::mem::swap(&mut state.queue, &mut taken);
            let was_full = taken.len() >= LANE_QUEUE;
            let owed = &mut state.owed;
            taken.retain(|q| owed.writing(q.id));
            (was_full, state.closed)
        };
        if was_full {
            shared.room.notify_waiters();
        }
        if taken.is_empty() {
            if closed {
                writer.finish();
                return;
            }
            shared.ready.notified().await;
            continue;
        }
        let mut items = taken.drain(..);
        while let Some(first) = items.next() {
            writer.batch(first, || items.next(), encode_queued);
            if let Err(e) = writer.flush().await {
                let err = match conn.close_reason() {
                    Some(reason) => ClientError::Connection(tls::explain_connection_error(&reason)),
                    None => ClientError::Connection(format!("cannot send: {e}")),
                };
                drop(items);
                shared.fail_all(err);
                return;
            }
        }
    }
}

/// Encodes one queued request; a retried write's age is taken now, as it is written.
fn encode_queued(Queued { id, call }: Queued, out: &mut BytesMut) {
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
}

/// Reads answers and hands each to its caller.
pub(crate) async fn read_lane(
    recv: quinn::RecvStream,
    shared: Arc<LaneShared>,
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
        let decoded = deliver(reader.buffer(), &shared.state, &limits);
        if let Err(e) = decoded {
            break e;
        }
    };
    shared.fail_all(err);
}

/// Completes the calls of a lane that are past their deadline: sleeps until the earliest
/// deadline in flight (one timer per lane, not one per call), and ends when the lane dies.
pub(crate) async fn sweep_lane(shared: Arc<LaneShared>) {
    loop {
        let next = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            if state.owed.broken.is_some() {
                return;
            }
            state.owed.expire(Instant::now())
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.sweep.notified() => {}
                }
            }
            None => shared.sweep.notified().await,
        }
    }
}

/// Decodes every complete answer in `inbuf` and completes its call.
pub(crate) fn deliver(
    inbuf: &mut BytesMut,
    state: &Mutex<LaneState>,
    limits: &Limits,
) -> Result<(), ClientError> {
    let Ok(mut state) = state.lock() else {
        return Err(ClientError::Protocol("lane state poisoned".into()));
    };
    let owed = &mut state.owed;
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
            } => owed.gather(resp.id, entries)?,
            reply => owed.complete(resp.id, reply)?,
        }
    }
}
