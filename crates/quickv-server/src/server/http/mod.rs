//! The HTTP/JSON gateway: the classic key-value API and `/metrics`, beside the QUIC endpoint.
//!
//! QUIC is the fast path; this is the path for curl, browsers, Prometheus and the test tools that
//! speak the API quickv descends from. It is off unless `--http ADDR` (or `http = "…"` in the
//! config file) names a TCP address. Plain HTTP has no client authentication, so it may only
//! listen on loopback (checked in [`crate::config::ServerConfig::validate`]) and acts as `admin`
//! there; another address needs `--http-tls` — TLS with the pair's certificates, a client
//! certificate from the cluster CA *demanded* as on the QUIC side, and each request checked
//! against the certificate's role ([`access`]) — or the explicit, loudly logged `--http-insecure`.
//!
//! # Shape
//!
//! [`Listener::bind`] binds the TCP socket while the server is being set up (so a bad address
//! fails at start, and the socket accepts as soon as the server says it is listening).
//! [`serve`] runs on the server's tokio runtime, in the server's task tracker: it accepts
//! connections (at most [`max_connections`] at once), and drives each with hyper's HTTP/1.1
//! server. Plain HTTP waits for a free slot before accepting rather than accepting and dropping;
//! HTTPS takes its slot only after the TLS handshake, and unauthenticated connections in their
//! handshake get their own small budget, per source address, and a short timeout
//! ([`handshakes`]). When the node's
//! shutdown token fires — a signal, a QUIC `shutdown`, or `/kvman/shutdown` — it stops
//! accepting (the listening socket is closed as `serve` returns) and shuts each connection down
//! gracefully: the response in flight is finished, then the connection closes.
//!
//! Every request in flight holds a token of the server's tracker, so
//! [`crate::server::Server::run`]'s drain waits for their answers; the connections themselves
//! live in [`Release::connections`]. The answer to `/kvman/shutdown` is the exception: it is
//! written only once the server has released its ports ([`Release::ports_free`]), so a harness
//! that starts the next server the moment it has the answer finds the ports free (the classic
//! tester does exactly that).
//!
//! # The request path
//!
//! [`api`] turns each request into one [`quickv_proto::Op`] and hands it to
//! [`crate::server::router::handle`] — the very function every QUIC request goes through — so the
//! replication guarantees are the same by construction. A replicated write's answer
//! (`Handled::Later`) is awaited in the request's task. Keys and values are bounded by the
//! server's `limits` (checked before routing, as the QUIC decoder does), bodies by
//! [`api::max_body`], query strings by [`api::max_query`], headers by hyper's buffer (sized to
//! fit the query limit), and slow clients by a header-read timeout and the idle timeout.
//!
//! [`form`] decodes form bodies and query strings; [`metrics`] renders the Prometheus page.

pub mod access;
pub mod api;
pub mod form;
pub mod guard;
pub mod handshakes;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::pki::Access;
use crate::server::auth::{Closer, Security};
use crate::server::node::{Node, Stats};

/// How long a client may take to send a request's headers, from connect or from the end of the
/// previous response (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// hyper's own default read-buffer cap, in bytes; raised when long keys need longer query strings.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
/// The gateway serves this many times `max_connections` TCP connections at once: an HTTP/1.1
/// client needs one connection per request in flight (the classic tester opens 2000 at once),
/// where a QUIC client multiplexes. With the default `max_connections` (1024): 4096.
pub const CONNECTIONS_PER_QUIC_CONNECTION: usize = 4;
/// Listen backlog of the gateway's socket (the kernel caps it at `net.core.somaxconn`): a burst
/// of connects beyond the accept rate waits here instead of being retried after a dropped SYN.
const LISTEN_BACKLOG: u32 = 4096;

/// How many HTTP connections the gateway serves at once.
pub fn max_connections(config: &ServerConfig) -> usize {
    config
        .max_connections
        .saturating_mul(CONNECTIONS_PER_QUIC_CONNECTION)
}

/// Shared between the server's stop sequence and the gateway.
#[derive(Clone, Debug, Default)]
pub struct Release {
    /// Cancelled by the server once its QUIC and HTTP sockets are closed (or it gave up waiting
    /// for that); the answer to `/kvman/shutdown` waits for it.
    pub ports_free: CancellationToken,
    /// The gateway's connection tasks; the server waits for them (bounded) after the ports are
    /// free, so the shutdown answer is written before the process exits.
    pub connections: TaskTracker,
}

/// The gateway's bound TCP socket, made before the runtime serves it.
pub struct Listener {
    /// Bound and non-blocking, handed to tokio in [`serve`].
    socket: std::net::TcpListener,
    /// The bound address (the real port when asked for port 0).
    addr: SocketAddr,
    /// Present with `--http-tls`: the config loaded at start (a reload replaces it in the node's
    /// [`crate::server::auth::Security`], where connections take it from).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What every request passes before its role check (browsers, foreign `Host`, the token).
    guard: Arc<guard::Guard>,
}

impl Listener {
    /// Binds `config.http` if set (and loads the TLS certificates with `http_tls`).
    pub fn bind(config: &ServerConfig, security: &Security) -> Result<Option<Listener>> {
        let Some(addr) = config.http else {
            return Ok(None);
        };
        let socket = listen(addr).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (http): {e}"),
            ))
        })?;
        let tls = match config.http_tls {
            true => Some(security.https_config(config)?),
            false => None,
        };
        if config.http_insecure && !addr.ip().is_loopback() {
            warn!(
                %addr,
                "SERVING PLAIN HTTP ON A NON-LOOPBACK ADDRESS (--http-insecure): anyone who can \
                 reach this port can read, write, delete and shut down this server"
            );
        }
        let addr = socket.local_addr()?;
        Ok(Some(Listener {
            guard: Arc::new(guard::Guard::new(config, addr)?),
            addr,
            socket,
            tls,
        }))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS config loaded at bind time (`--http-tls`).
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }
}

impl std::fmt::Debug for Listener {
    /// The acceptor has no `Debug`; whether TLS is on is what matters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A non-blocking listening TCP socket (made inside the runtime) with `SO_REUSEADDR` (a restarted
/// server rebinds at once, whatever connections of the previous one linger) and a deep backlog
/// ([`LISTEN_BACKLOG`]).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Needs the runtime (as the QUIC endpoint does); handed back as a std socket, still
    // non-blocking, and registered again in `serve`.
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Accepts and serves HTTP connections until the node shuts down. Every request in flight holds a
/// token of `tracker`, so the server's drain waits for its answer; connection tasks go to
/// `release.connections`.
pub async fn serve(node: Arc<Node>, listener: Listener, tracker: TaskTracker, release: Release) {
    let Listener {
        socket,
        addr,
        tls,
        guard,
    } = listener;
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(%addr, reason = %e, "http gateway cannot start");
            return;
        }
    };
    let tls = tls.is_some();
    info!(%addr, tls, "http gateway serving");
    let slots = Arc::new(Semaphore::new(max_connections(&node.config)));
    let handshakes = Arc::new(handshakes::Handshakes::default());
    loop {
        // Plain HTTP takes its slot before accepting (a burst waits in the listen backlog, as the
        // classic tester expects); HTTPS only after the handshake (see `connection`).
        let slot = match tls {
            true => None,
            false => {
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    _ = node.shutdown.cancelled() => break,
                };
                let Ok(slot) = slot else { break };
                Some(slot)
            }
        };
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = node.shutdown.cancelled() => break,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(reason = %e, "http accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admission = match slot {
            Some(slot) => Admission::Slot(slot),
            None => match handshakes.begin(remote.ip()) {
                Some(pending) => Admission::Handshake(pending, slots.clone()),
                None => {
                    debug!(%remote, "https: too many handshakes in progress; connection closed");
                    continue;
                }
            },
        };
        Stats::bump(&node.stats.http_connections_total);
        let node = node.clone();
        let (tracker, gate, guard) = (tracker.clone(), release.clone(), guard.clone());
        release.connections.spawn(
            async move {
                let _open = Stats::open(&node.stats.http_connections);
                let serving = Serving {
                    guard,
                    tracker,
                    release: gate,
                };
                connection(node.clone(), stream, admission, serving).await;
            }
            .instrument(info_span!("http", %remote)),
        );
    }
    debug!("http gateway stopped accepting");
}

/// One connection: the optional TLS handshake, then HTTP/1.1. Plain HTTP acts as `admin` (it can
/// only listen on loopback unless `--http-insecure`); HTTPS gets the role of the client's
/// certificate, and is registered so a reload can close it if that certificate is revoked.
async fn connection(node: Arc<Node>, stream: TcpStream, admission: Admission, serving: Serving) {
    // Answers are small and written whole; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    let (in_handshake, slots) = match admission {
        Admission::Slot(_slot) => {
            let never = CancellationToken::new();
            return drive(node, stream, Access::Admin, never, serving).await;
        }
        Admission::Handshake(pending, slots) => (pending, slots),
    };
    // Taken per connection, so a reload's new certificates apply from the next connection on.
    let Some(config) = node.security.http_config() else {
        warn!("https gateway has no TLS config; dropping the connection");
        return;
    };
    let handshake = tokio::select! {
        // The server's one handshake timeout (QUIC and HTTPS alike, `--handshake-timeout-ms`): a
        // handshake holds a place of the small pre-handshake budget ([`handshakes`]) meanwhile.
        h = tokio::time::timeout(node.config.handshake_timeout, TlsAcceptor::from(config).accept(stream)) => h,
        _ = node.shutdown.cancelled() => return,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return debug!(reason = %e, "http tls handshake failed"),
        Err(_) => return debug!("http tls handshake timed out"),
    };
    // Authenticated: leave the pre-handshake budget, take a connection slot.
    drop(in_handshake);
    let slot = tokio::select! {
        slot = slots.acquire_owned() => slot,
        _ = node.shutdown.cancelled() => return,
    };
    let Ok(_slot) = slot else { return };
    let chain: Vec<_> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let revoked = CancellationToken::new();
    let (access, _open) = match node.security.admit(chain, Closer::Http(revoked.clone())) {
        Ok(admitted) => admitted,
        Err(refusal) => return warn!(reason = %refusal.reason, "https client refused"),
    };
    drive(node.clone(), stream, access, revoked, serving).await;
}

/// What lets a connection in: a connection slot (plain HTTP, taken before accepting), or a place
/// in the pre-handshake budget and the slots to take one from once authenticated (HTTPS).
enum Admission {
    /// Plain HTTP: the slot, held for the connection's life.
    Slot(OwnedSemaphorePermit),
    /// HTTPS: the handshake's place, and where the slot comes from after it.
    Handshake(handshakes::InHandshake, Arc<Semaphore>),
}

/// What every connection's requests share.
struct Serving {
    /// The checks before the role check.
    guard: Arc<guard::Guard>,
    /// The server's tracker: each request in flight holds a token, so the drain waits for it.
    tracker: TaskTracker,
    /// The stop sequence's handles.
    release: Release,
}

/// Serves HTTP/1.1 requests on `io` with the rights of `access` until the client closes, the node
/// shuts down, or `revoked` fires (the connection is then dropped at once).
async fn drive<I>(
    node: Arc<Node>,
    io: I,
    access: Access,
    revoked: CancellationToken,
    serving: Serving,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_requests = node.clone();
    let Serving {
        guard,
        tracker,
        release,
    } = serving;
    let service = service_fn(move |req| {
        let node = for_requests.clone();
        let in_flight = tracker.token();
        let release = release.clone();
        let guard = guard.clone();
        async move {
            if let Some(refused) = guard.refusal(&node, &req) {
                return Ok::<_, Infallible>(refused.map(http_body_util::Either::Left));
            }
            if let Some(refused) = access::refusal(&node, access, &req) {
                return Ok::<_, Infallible>(refused.map(http_body_util::Either::Left));
            }
            Ok::<_, Infallible>(api::respond(&node, req, in_flight, &release).await)
        }
    });
    let max_buf =
        HYPER_DEFAULT_MAX_BUF.max(api::max_query(&node.config.limits).saturating_add(8192));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_buf);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = revoked.cancelled() => return debug!("certificate revoked; connection dropped"),
        _ = node.shutdown.cancelled() => {
            // Finish the response in flight (e.g. the answer to /kvman/shutdown), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(reason = %e, "http connection ended with an error");
    }
}
