//! The server: a QUIC endpoint whose connections are client sessions (ALPN `quickv/1`) or the peer
//! link (ALPN `quickv-peer/1`).
//!
//! [`Server::bind`] opens the endpoint (and the HTTP gateway's TCP socket when configured, see
//! [`crate::http`]); [`Server::run`] accepts until the `shutdown` future completes (production
//! passes ctrl-c/SIGTERM, tests their own) or a client sends `shutdown` (QUIC or HTTP).
//! Stopping is graceful: no new connections or requests are taken, answers already owed are
//! delivered (bounded by `drain_timeout`), then every connection is closed with application code
//! [`session::CLOSE_SHUTDOWN`] and the endpoint waits until idle.

pub mod metrics;
pub mod node;
pub mod router;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::http;
use crate::server::node::{Node, Stats};
use crate::tls::{self, CertPaths, TransportLimits};

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
        let server_cfg = tls::server_config(
            &paths,
            TransportLimits {
                max_streams: config.max_streams,
                idle_timeout: config.idle_timeout,
                keep_alive: config.keep_alive,
            },
        )?;
        let endpoint = quinn::Endpoint::server(server_cfg, config.listen).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen),
            ))
        })?;
        let http = http::Listener::bind(&config)?;
        // With port 0 the config would say ":0"; status should show where the gateway really is.
        if let Some(h) = &http {
            config.http = Some(h.local_addr());
        }
        Ok(Server {
            node: Arc::new(Node::new(config)),
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
        info!(role = %node.config.role, listen = %endpoint.local_addr()?, "serving");
        if let Some(repl) = &node.repl {
            repl.start(endpoint.clone());
        }
        // The gateway's tasks join the same tracker, so the drain below covers HTTP requests too.
        if let Some(listener) = http {
            tracker.spawn(http::serve(node.clone(), listener, tracker.clone()));
        }
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                _ = &mut shutdown => break,
                _ = node.shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let open = node
                .stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed);
            // On a backup, a few slots beyond the clients' budget keep room for the peer link
            // (ALPN is only known after the handshake; a client past the budget is closed then,
            // see `accept`). Other roles accept no peer link and refuse at the handshake.
            let reserve = match node.config.role {
                crate::config::Role::Backup => PEER_SLOTS,
                _ => 0,
            };
            if open >= node.config.max_connections as u64 + reserve {
                Stats::bump(&node.stats.connections_refused);
                warn!(remote = %incoming.remote_address(), open, "connection refused: max_connections reached");
                incoming.refuse();
                continue;
            }
            // Counted from the first packet, so a burst of handshakes cannot overshoot the cap.
            node.stats
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let node = node.clone();
            tracker.spawn(async move {
                accept(node.clone(), incoming).await;
                node.stats
                    .connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
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
        // Sessions are drained (their replicated writes were acked or failed); now tell the peer.
        if let Some(repl) = &node.repl {
            repl.finish_shutdown().await;
        }
        endpoint.close(session::CLOSE_SHUTDOWN.into(), b"server shutting down");
        // The close frames go out at once; waiting out every connection's draining period (3 PTOs,
        // seconds on an idle link) would only delay the exit, so bound it.
        let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
        info!("stopped");
        Ok(())
    }
}

/// Completes the handshake and dispatches on ALPN.
async fn accept(node: Arc<Node>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%remote, reason = %tls::explain_connection_error(&e), "handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(p) if p == tls::PEER_ALPN => {
            // The peer link has its own budget: it gives back the client slot it was counted in.
            let _peer = PeerSlot::take(&node.stats);
            if let Err(why) = peer_allowed(&node, &conn) {
                warn!(%remote, reason = why, "peer link refused");
                conn.close(CLOSE_PEER_REFUSED.into(), why.as_bytes());
                return;
            }
            if let Some(repl) = node.repl.clone() {
                crate::replication::backup::serve(repl, conn, node.shutdown.clone()).await;
            }
        }
        _ => {
            let open = node
                .stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed);
            if open > node.config.max_connections as u64 {
                Stats::bump(&node.stats.connections_refused);
                warn!(%remote, open, "connection refused: max_connections reached");
                conn.close(
                    CLOSE_BUSY.into(),
                    b"max_connections reached; try again later",
                );
                return;
            }
            Stats::bump(&node.stats.connections_total);
            session::serve_connection(node, conn).await;
        }
    }
}

/// Connections admitted to the handshake beyond `max_connections`, reserved for the peer link (a
/// restarted primary redials while its old connection may still be open).
const PEER_SLOTS: u64 = 2;

/// A peer link's connection, moved out of the client gauge for as long as it lives.
struct PeerSlot<'a>(&'a Stats);

impl<'a> PeerSlot<'a> {
    fn take(stats: &'a Stats) -> PeerSlot<'a> {
        stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        PeerSlot(stats)
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        // Given back so that the accept loop's own decrement balances.
        self.0
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long a stopping server lingers for its close frames to be delivered.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(300);

/// Application close code for a refused peer link.
pub const CLOSE_PEER_REFUSED: u32 = 3;

/// Application close code for a client connection past `max_connections` (the few slots kept for
/// the peer link let it finish its handshake first).
pub const CLOSE_BUSY: u32 = 4;

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

/// The `status` document: JSON with at least `role`, `state`, `keys`.
pub fn status_json(node: &Node) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &node.stats;
    let mut doc = serde_json::json!({
        "role": node.config.role.as_str(),
        "state": "serving",
        "keys": node.store.count(),
        "listen": node.config.listen.to_string(),
        "peer": node.config.peer.map(|p| p.to_string()),
        "http": node.config.http.map(|a| a.to_string()),
        "run_id": format!("{:016x}", node.run_id),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": node.started.elapsed().as_secs(),
        "connections": s.connections.load(Relaxed),
        "connections_total": s.connections_total.load(Relaxed),
        "connections_refused": s.connections_refused.load(Relaxed),
        "requests": s.requests.load(Relaxed),
        "bad_frames": s.bad_frames.load(Relaxed),
    });
    if let (Some(repl), Some(obj)) = (&node.repl, doc.as_object_mut()) {
        if let serde_json::Value::Object(extra) = repl.status() {
            obj.extend(extra);
        }
    }
    doc
}
