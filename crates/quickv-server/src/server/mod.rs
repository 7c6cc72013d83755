//! The server: a QUIC endpoint whose connections are client connections (ALPN `quickv/1`) or the peer
//! link (ALPN `quickv-peer/3`).
//!
//! [`Server::bind`] opens the endpoint (and the HTTP gateway's TCP socket when configured, see
//! [`http`]); [`Server::run`] accepts until the `shutdown` future completes (production
//! passes ctrl-c/SIGTERM, tests their own) or a client sends `shutdown` (QUIC or HTTP).
//! Stopping is graceful: no new connections or requests are taken, answers already owed are
//! delivered (bounded by `drain_timeout`), then every connection is closed with application code
//! [`conn::CLOSE_SHUTDOWN`] and the endpoint waits until idle (bounded). Then the ports are
//! released — the UDP socket and the gateway's TCP listener are closed, which [`Server::run`]
//! checks by binding the UDP address itself — and only then is `/kvman/shutdown` answered: a
//! harness that starts the next server as soon as it has that answer finds the ports free.
//!
//! A client connection gets the role of its certificate ([`auth`]); every request is authorized
//! before it is routed. On SIGHUP the server reloads its certificate, key, CA bundle and CRL
//! ([`reload_certificates`]): new connections use them, open ones stay, except those whose
//! certificate the new files refuse (a revoked client), which are closed.

pub mod admission;
pub mod auth;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod node;
pub mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::server::admission::{Pending, Verdict};
use crate::server::node::{Node, Stats};
use crate::tls::{self, TransportLimits};
use quickv_net::tls::{explain_connection_error, CertPaths};
use quickv_proto::PEER_ALPN;

pub use node::Node as ServerNode;

/// A bound server, ready to run.
pub struct Server {
    /// The shared state of this process.
    node: Arc<Node>,
    /// The QUIC endpoint (one UDP socket for clients and the peer link).
    endpoint: quinn::Endpoint,
    /// The HTTP gateway's bound socket, when `config.http` asks for one.
    http: Option<http::Listener>,
}

impl Server {
    /// Loads certificates and binds the UDP socket (and the gateway's TCP socket, if configured).
    pub fn bind(mut config: ServerConfig) -> Result<Server> {
        config.validate()?;
        let paths = CertPaths::new(&config.certs_dir);
        let security = auth::Security::load(&config)?;
        let server_cfg = security.quic_config(&paths, transport_limits(&config))?;
        let endpoint = quinn::Endpoint::server(server_cfg, config.listen).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen),
            ))
        })?;
        let http = http::Listener::bind(&config, &security)?;
        // With port 0 the config would say ":0"; status should show where the gateway really is.
        if let Some(h) = &http {
            config.http = Some(h.local_addr());
        }
        let node = Arc::new(Node::new(config, security));
        if let Some(repl) = &node.repl {
            repl.restore_epoch()?;
        }
        if let Some(tls) = http.as_ref().and_then(http::Listener::tls_config) {
            node.security.set_http_config(tls);
        }
        Ok(Server {
            node,
            endpoint,
            http,
        })
    }

    /// The HTTP gateway's bound address, if it is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(http::Listener::local_addr)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The shared state, for embedding and tests.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` completes or a client asks the server to stop, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Server {
            node,
            endpoint,
            http,
        } = self;
        let tracker = TaskTracker::new();
        let release = http::Release::default();
        let listen = endpoint.local_addr()?;
        info!(role = %node.config.role, %listen, "serving");
        if let Some(repl) = &node.repl {
            repl.start(endpoint.clone());
        }
        // Both owned by this function: aborted when it returns (the sweeper also ends itself at
        // shutdown), so neither outlives the server it serves.
        let _reloader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reload_on_hangup(
            node.clone(),
            endpoint.clone(),
        )));
        let _sweeper = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sweep_sessions(
            node.store.clone(),
            node.shutdown.clone(),
        )));
        // The gateway's accept loop and its requests in flight join the same tracker, so the
        // drain below covers HTTP requests too (and ends after its listener is closed).
        if let Some(listener) = http {
            tracker.spawn(http::serve(
                node.clone(),
                listener,
                tracker.clone(),
                release.clone(),
            ));
        }
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                _ = &mut shutdown => break,
                _ = node.shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let remote = incoming.remote_address();
            let validated = incoming.remote_address_validated();
            match node.admission.initial(&node.config, remote, validated) {
                Verdict::Retry if incoming.may_retry() => {
                    // Stateless: nothing is kept until the client comes back with the token.
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                }
                Verdict::Retry => incoming.ignore(),
                Verdict::Refuse => {
                    Stats::bump(&node.stats.connections_refused);
                    debug!(%remote, "handshake refused: max_pending_handshakes reached");
                    incoming.refuse();
                }
                Verdict::Handshake(slot) => {
                    tracker.spawn(accept(node.clone(), incoming, slot));
                }
            }
        }
        info!("shutting down: draining in-flight requests");
        node.shutdown.cancel();
        if let Some(repl) = &node.repl {
            repl.begin_shutdown();
        }
        tracker.close();
        if tokio::time::timeout(node.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!("drain timeout passed; closing connections with requests still in flight");
        }
        // Connections are drained (their replicated writes were acked or failed); now tell the peer.
        if let Some(repl) = &node.repl {
            repl.finish_shutdown().await;
        }
        endpoint.close(
            conn::CLOSE_SHUTDOWN.into(),
            conn::SHUTDOWN_REASON.as_bytes(),
        );
        // The close frames go out at once; waiting out every connection's draining period (3 PTOs,
        // seconds on an idle link) would only delay the exit, so bound it.
        let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
        release_udp(endpoint, listen).await;
        // The gateway's listener closed when its accept loop ended (the drain waited for it).
        release.ports_free.cancel();
        // Let the gateway write the shutdown's answer before the process goes.
        release.connections.close();
        let _ = tokio::time::timeout(CLOSE_LINGER, release.connections.wait()).await;
        info!("stopped");
        Ok(())
    }
}

/// How often the certificate files are checked for changes (modification times only).
pub const CERT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the certificates on every SIGHUP, and when the modification time of `ca.pem`,
/// `server.pem`, `server.key` or `crl.pem` changes (checked every [`CERT_POLL_INTERVAL`]), until
/// the server stops (see [`reload_certificates`]). A failed reload (say, a file caught half
/// copied) is retried when the files change again, or on the next SIGHUP.
async fn reload_on_hangup(node: Arc<Node>, endpoint: quinn::Endpoint) {
    let paths = CertPaths::new(&node.config.certs_dir);
    let mut seen = cert_stamps(&paths);
    #[cfg(unix)]
    let mut hangup = {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(reason = %e, "cannot listen for SIGHUP; certificate files are still watched");
                None
            }
        }
    };
    let mut poll = tokio::time::interval(CERT_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<bool>();
        let stamps = tokio::select! {
            got = hup => {
                if !got { break }
                cert_stamps(&paths)
            }
            _ = poll.tick() => {
                let now = cert_stamps(&paths);
                if now == seen { continue }
                now
            }
            _ = node.shutdown.cancelled() => break,
        };
        seen = stamps;
        let result = reload_certificates(&node, &endpoint);
        node.security.note_reload(&result);
    }
}

/// Modification times of the files a reload reads (`None` for an absent file).
fn cert_stamps(paths: &CertPaths) -> Vec<Option<std::time::SystemTime>> {
    [
        paths.ca_cert(),
        paths.server_cert(),
        paths.server_key(),
        paths.crl(),
    ]
    .iter()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

/// Reloads the server certificate and key, the CA bundle and the CRL from the certificate
/// directory: new QUIC and HTTPS connections use them; open connections (and the peer link) go on,
/// except client connections whose certificate the new files refuse (revoked, or no longer from a
/// CA of the bundle), which are closed. Returns how many were closed. Nothing changes on error.
pub fn reload_certificates(node: &Node, endpoint: &quinn::Endpoint) -> Result<usize> {
    let limits = transport_limits(&node.config);
    node.security.reload(&node.config, limits, endpoint)
}

fn transport_limits(config: &ServerConfig) -> TransportLimits {
    TransportLimits {
        max_streams: config.max_streams,
        idle_timeout: config.idle_timeout,
        keep_alive: config.keep_alive,
    }
}

/// Completes the handshake (within `handshake_timeout`, holding its pending slot only that
/// long) and dispatches on ALPN.
async fn accept(node: Arc<Node>, incoming: quinn::Incoming, pending: Pending) {
    let remote = incoming.remote_address();
    let handshake = async { incoming.accept()?.await };
    let conn = match tokio::time::timeout(node.config.handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            warn!(%remote, reason = %explain_connection_error(&e), "handshake failed");
            return;
        }
        // Dropping the handshake closes it: its state and its slot are freed now.
        Err(_) => {
            debug!(%remote, timeout = ?node.config.handshake_timeout, "handshake timed out");
            return;
        }
    };
    drop(pending);
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(p) if p == PEER_ALPN => {
            if let Err(why) = peer_allowed(&node, &conn) {
                warn!(%remote, reason = why, "peer link refused");
                conn.close(CLOSE_PEER_REFUSED.into(), why.as_bytes());
                return;
            }
            if let Some(repl) = node.repl.clone() {
                crate::replication::backup::serve(repl, conn, node.shutdown.clone()).await;
            }
        }
        _ => serve_client(node, conn, remote).await,
    }
}

/// Sweeps idle session records on a timer (`Sessions::sweep_period`), so the records of a bucket
/// that gets no more writes still go; ends when the server stops.
async fn sweep_sessions(
    store: Arc<quickv_core::store::Store>,
    stop: tokio_util::sync::CancellationToken,
) {
    let period = store.sessions().sweep_period();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let dropped = store.sessions().sweep(std::time::Instant::now());
                if dropped > 0 {
                    debug!(dropped, "idle session records swept");
                }
            }
            _ = stop.cancelled() => break,
        }
    }
}

/// Takes a client slot (the server's and the certificate's), then serves the connection.
async fn serve_client(node: Arc<Node>, conn: quinn::Connection, remote: SocketAddr) {
    let chain = tls::peer_certificates(&conn);
    let identity = chain
        .first()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let holder = node.clone();
    // The identity first (role, CRL in force now; registered for later reloads), then a slot.
    let closer = auth::Closer::Quic(conn.clone());
    let (access, _open) = match holder.security.admit(chain, closer) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            warn!(%remote, reason = %refusal.reason, "client refused");
            conn.close(refusal.code.into(), refusal.reason.as_bytes());
            return;
        }
    };
    let _slot = match holder
        .admission
        .client(&holder.config, &holder.stats.connections, &identity)
    {
        Ok(slot) => slot,
        Err(reason) => {
            Stats::bump(&node.stats.connections_refused);
            warn!(%remote, %reason, "connection refused");
            conn.close(CLOSE_BUSY.into(), reason.as_bytes());
            return;
        }
    };
    Stats::bump(&node.stats.connections_total);
    conn::serve_connection(node, conn, access).await;
}

/// Gives up the endpoint's UDP port: connections still draining hold the socket, so the endpoint
/// is moved to a throwaway socket twice (quinn keeps the previous one until traffic arrives on
/// the new), then the port is checked by binding it — the only reliable sign that it is free —
/// until [`PORT_RELEASE_LIMIT`].
async fn release_udp(endpoint: quinn::Endpoint, listen: SocketAddr) {
    let throwaway = SocketAddr::new(listen.ip(), 0);
    for _ in 0..2 {
        if let Ok(socket) = std::net::UdpSocket::bind(throwaway) {
            let _ = endpoint.rebind(socket);
        }
    }
    drop(endpoint);
    let deadline = tokio::time::Instant::now() + PORT_RELEASE_LIMIT;
    loop {
        match std::net::UdpSocket::bind(listen) {
            Ok(probe) => {
                drop(probe);
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                warn!(%listen, reason = %e, "the UDP port is still held; exiting anyway");
                return;
            }
            Err(_) => tokio::time::sleep(PORT_PROBE_INTERVAL).await,
        }
    }
}

/// Longest a stopping server checks for its UDP port to be released.
const PORT_RELEASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between two checks of the UDP port.
const PORT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a stopping server lingers for its close frames to be delivered.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(300);

/// Application close code for a refused peer link.
pub const CLOSE_PEER_REFUSED: u32 = 3;

pub use admission::CLOSE_BUSY;

/// Only a backup accepts the peer link, and only from the holder of the pair's server certificate
/// (a client certificate from the same CA cannot pose as the primary).
fn peer_allowed(node: &Node, conn: &quinn::Connection) -> Result<(), &'static str> {
    if node.config.role != crate::config::Role::Backup {
        return Err("only a backup accepts a peer link");
    }
    let own = tls::own_server_cert(&CertPaths::new(&node.config.certs_dir))
        .map_err(|_| "cannot read our own server certificate")?;
    match tls::peer_certificates(conn).first() {
        Some(cert) if *cert == own => Ok(()),
        _ => Err("the peer's certificate is not this pair's server certificate"),
    }
}
