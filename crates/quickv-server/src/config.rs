//! Typed configuration. Every default lives here, in one place, with its unit.
//!
//! A server is configured by flags, optionally on top of a TOML file (`--config quickv.toml`) that
//! names both servers of a pair, so the same file can be copied to both hosts:
//!
//! ```toml
//! certs = "certs"                 # directory with ca.pem, server.pem/key, client.pem/key
//! # state_dir = "/var/lib/quickv"  # where each server keeps its epoch file (default: certs)
//! [primary]
//! listen = "10.0.0.1:4470"
//! http = "127.0.0.1:8080"        # optional HTTP/JSON gateway and /metrics (TCP); off if absent
//! # http_tls = true               # HTTPS with client certificates (needed off loopback) ...
//! # http_insecure = true          # ... or plain HTTP off loopback anyway (unauthenticated)
//! [backup]
//! listen = "10.0.0.2:4471"
//! [tls]                           # optional; every default is the strict one
//! # tls12 = true                  # TLS 1.2 too on the HTTPS gateway
//! # allow_roleless = true         # client certificates without a role count as admin
//! # allow_crl_removal = true      # an absent or empty crl.pem may lift revocation
//! # http_token = "http.token"     # plain gateway: Authorization: Bearer from this 0600 file
//! [limits]                        # all optional
//! max_key = 65536
//! max_value = 16777216
//! expected_keys = 10000000        # size the store for this many keys at start (hint)
//! ```
//! With `--role primary` the server listens on `primary.listen` and peers with `backup.listen`, and the
//! other way round with `--role backup`. Flags given on the command line win over the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use quickv_core::store::sessions::SessionLimits;
use quickv_proto::Limits;

/// Where the local primary listens by default (UDP).
pub const DEFAULT_PRIMARY_ADDR: &str = "127.0.0.1:4470";
/// Where the local backup listens by default (UDP).
pub const DEFAULT_BACKUP_ADDR: &str = "127.0.0.1:4471";
/// Default certificate directory, relative to the working directory.
pub const DEFAULT_CERTS_DIR: &str = "certs";
/// Default cap on concurrent client connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on concurrently open bidirectional streams per connection.
pub const DEFAULT_MAX_STREAMS: u32 = 256;
/// Default cap on requests in flight (read but not yet answered) per stream; reading pauses above it.
pub const DEFAULT_MAX_INFLIGHT_PER_STREAM: usize = 4096;
/// Default cap on the bytes of answers one stream holds encoded but not yet written (4 MiB). Past
/// it the server stops reading that stream until the client reads; one answer may go over it.
pub const DEFAULT_MAX_QUEUED_BYTES_PER_STREAM: usize = 4 * 1024 * 1024;
/// Default cap on the bytes of answers one connection holds encoded but not yet written, over all
/// its streams (32 MiB); past it every stream of the connection stops being read.
pub const DEFAULT_MAX_QUEUED_BYTES_PER_CONNECTION: usize = 32 * 1024 * 1024;
/// Default number of dumps (QUIC and HTTP) a server sends at once; more are refused `unavailable`.
pub const DEFAULT_MAX_DUMPS: usize = 8;
/// Default cap on QUIC handshakes in progress (from validated addresses); more are refused.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;
/// Default time a QUIC handshake may take before it is dropped, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
/// Default number of handshakes in progress from which a new client must prove its address with
/// a QUIC Retry first (0: always).
pub const DEFAULT_RETRY_ABOVE_PENDING: usize = 0;
/// Default cap on client connections holding the same certificate.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 256;
/// Default idle timeout of a connection with no traffic at all, in milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Default keep-alive interval on every connection, in milliseconds (well under the idle timeout).
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 5_000;
/// Default keep-alive interval of the peer link, in milliseconds.
pub const DEFAULT_PEER_KEEP_ALIVE_MS: u64 = 250;
/// Default idle timeout of the peer link, in milliseconds: a silent peer is declared lost after this.
pub const DEFAULT_PEER_IDLE_TIMEOUT_MS: u64 = 1_000;
/// Default time the primary waits for the backup's ack of a write before leaving sync, in milliseconds.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 1_000;
/// Default number of peer data streams the 32 lanes share (lane b on stream b mod n). One stream
/// batches best on a machine where the link is latency-bound; more avoid head-of-line blocking
/// across lanes on a lossy network. See docs/benchmarks.md for the measurement.
pub const DEFAULT_PEER_STREAMS: usize = 1;
/// Default time a stream may hold a partial frame before it is closed (slowloris), in milliseconds.
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 10_000;
/// Default time a graceful shutdown waits for in-flight work before closing anyway, in milliseconds.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// The address suggested for the HTTP gateway (`--http`). The gateway is off unless an address is
/// given; loopback because plain HTTP has no client authentication (see `--http-tls`).
pub const SUGGESTED_HTTP_ADDR: &str = "127.0.0.1:8080";

/// The part a server plays in a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A single server with no peer: serves reads and writes on its own.
    Standalone,
    /// Serves client writes; every write is acknowledged by the backup before the client hears back.
    Primary,
    /// Applies the primary's writes; serves reads and admin ops, refuses client writes.
    Backup,
}

impl Role {
    /// The lowercase name used in flags, config, logs and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Role> {
        match s {
            "standalone" => Ok(Role::Standalone),
            "primary" => Ok(Role::Primary),
            "backup" => Ok(Role::Backup),
            other => Err(Error::Config(format!(
                "unknown role {other:?}: expected standalone, primary or backup"
            ))),
        }
    }
}

/// Everything a server process needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Standalone, primary or backup.
    pub role: Role,
    /// UDP address the QUIC endpoint binds (clients and the peer link share it; ALPN tells them apart).
    pub listen: SocketAddr,
    /// The other server of the pair; required for primary and backup.
    pub peer: Option<SocketAddr>,
    /// Directory holding `ca.pem`, `server.pem`, `server.key` (and client certs for tools).
    pub certs_dir: PathBuf,
    /// Frame, key and value size limits enforced before allocation.
    pub limits: Limits,
    /// Concurrent client connections accepted; more are refused at the handshake.
    pub max_connections: usize,
    /// Concurrent bidirectional streams a client may open on one connection (QUIC flow control).
    pub max_streams: u32,
    /// Requests in flight per stream before the server stops reading that stream (backpressure).
    pub max_inflight_per_stream: usize,
    /// Bytes of answers a stream may hold encoded and unwritten before the server stops reading
    /// it (backpressure in bytes: a client that does not read pins at most this plus one answer).
    pub max_queued_bytes_per_stream: usize,
    /// The same cap over all the streams of one connection.
    pub max_queued_bytes_per_connection: usize,
    /// Dumps sent at once by this server (QUIC and HTTP); each holds one bucket's entry handles
    /// and one chunk. More are answered `unavailable`.
    pub max_dumps: usize,
    /// QUIC handshakes in progress at once; more are refused (`CONNECTION_REFUSED`). Counted apart
    /// from established connections.
    pub max_pending_handshakes: usize,
    /// A handshake not completed within this time is dropped (it frees its pending slot).
    pub handshake_timeout: Duration,
    /// From this many handshakes in progress, a client whose address is not yet validated gets a
    /// QUIC Retry first (address validation, RFC 9000 §8.1); 0 = always.
    pub retry_above_pending: usize,
    /// Client connections one certificate may hold at once (counted by the exact certificate).
    pub max_connections_per_identity: usize,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval sent on client connections.
    pub keep_alive: Duration,
    /// Keep-alive interval on the peer link; must be well under `peer_idle_timeout`.
    pub peer_keep_alive: Duration,
    /// Silence after which the peer link is declared lost.
    pub peer_idle_timeout: Duration,
    /// How long the primary waits for the backup's ack before leaving sync.
    pub ack_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight work.
    pub drain_timeout: Duration,
    /// Peer data streams the primary opens for the 32 lanes (1..=32).
    pub peer_streams: usize,
    /// A stream that started a frame and did not finish it within this time is closed (slow or
    /// stalled senders must not pin buffers). Idle streams between frames are fine: clients keep
    /// long-lived streams, bounded by `max_streams`.
    pub frame_timeout: Duration,
    /// Writes that add data are refused (`unavailable`) once the stored keys and values exceed
    /// this many bytes; reads and deletes go on. `None` = no limit.
    pub max_memory: Option<u64>,
    /// TCP address of the HTTP/JSON gateway and `/metrics`; `None` (the default) serves no HTTP.
    pub http: Option<SocketAddr>,
    /// Serve the gateway over TLS with the pair's certificates, demanding a client certificate
    /// from the cluster CA, like the QUIC side. Off by default (plain HTTP, meant for loopback).
    pub http_tls: bool,
    /// Allow plain HTTP on a non-loopback address (unauthenticated: anyone who reaches the port is
    /// `admin`). Off by default: without it or `http_tls`, a non-loopback `http` is refused.
    pub http_insecure: bool,
    /// Bounds of the session tables that make retried writes exactly-once (answers kept per
    /// session and bucket, sessions per client and bucket, idle age, bytes in all and per client,
    /// largest removed value kept); see `store::sessions` and `docs/client.md`. Defaults: 64
    /// answers, 4096 sessions, 10 minutes, 64 MiB (at most half of `max_memory`), 16 MiB, 1 KiB.
    pub sessions: SessionLimits,
    /// Keys the store's maps are sized for at start (0: grow from empty). A sizing hint, not a
    /// limit: it moves flurry's table-growth copies out of the first inserts (docs/benchmarks.md).
    pub expected_keys: usize,
    /// How strict the identity checks are; every default fails closed (docs/security.md).
    pub tls: TlsPolicy,
    /// Directory of this server's state file (the replication epoch, which must survive a
    /// restart so that a stale primary stays refused); `None`: the certificate directory. See
    /// [`ServerConfig::epoch_file`].
    pub state_dir: Option<PathBuf>,
}

/// The identity rules a server applies, each default the strict one; the flags loosen them for
/// deployments that need it (docs/security.md, "Fail closed").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Accept client certificates without a role unit, as `admin` (deployments from before roles;
    /// `--allow-roleless`). Off: such a certificate is refused after the handshake.
    pub allow_roleless: bool,
    /// Offer TLS 1.2 besides 1.3 on the HTTPS gateway (`--tls12`; QUIC is 1.3 by definition).
    /// Off: under TLS 1.2 the client certificate would travel in clear.
    pub tls12: bool,
    /// Let a reload lift the CRL: an absent or empty `crl.pem` after one was loaded
    /// (`--allow-crl-removal`). Off: such a reload fails and the CRL in force stays.
    pub allow_crl_removal: bool,
    /// Plain HTTP gateway only: a file (mode 0600, no group or other access) holding a token
    /// every request must send as `Authorization: Bearer TOKEN` (`--http-token FILE`).
    pub http_token: Option<PathBuf>,
}

impl ServerConfig {
    /// A config with every default, for the given role and address.
    pub fn new(role: Role, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            role,
            listen,
            peer: None,
            certs_dir: PathBuf::from(DEFAULT_CERTS_DIR),
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams: DEFAULT_MAX_STREAMS,
            max_inflight_per_stream: DEFAULT_MAX_INFLIGHT_PER_STREAM,
            max_queued_bytes_per_stream: DEFAULT_MAX_QUEUED_BYTES_PER_STREAM,
            max_queued_bytes_per_connection: DEFAULT_MAX_QUEUED_BYTES_PER_CONNECTION,
            max_dumps: DEFAULT_MAX_DUMPS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            retry_above_pending: DEFAULT_RETRY_ABOVE_PENDING,
            max_connections_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            keep_alive: Duration::from_millis(DEFAULT_KEEP_ALIVE_MS),
            peer_keep_alive: Duration::from_millis(DEFAULT_PEER_KEEP_ALIVE_MS),
            peer_idle_timeout: Duration::from_millis(DEFAULT_PEER_IDLE_TIMEOUT_MS),
            ack_timeout: Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS),
            drain_timeout: Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS),
            peer_streams: DEFAULT_PEER_STREAMS,
            frame_timeout: Duration::from_millis(DEFAULT_FRAME_TIMEOUT_MS),
            max_memory: None,
            http: None,
            http_tls: false,
            http_insecure: false,
            sessions: SessionLimits::default(),
            expected_keys: 0,
            tls: TlsPolicy::default(),
            state_dir: None,
        }
    }

    /// The file holding this server's replication epoch: `epoch-<role>-<ip>_<port>` in
    /// `state_dir` (default: the certificate directory), one per role and listen address, so the
    /// two servers of a pair may share a directory.
    pub fn epoch_file(&self) -> PathBuf {
        let dir = self.state_dir.as_deref().unwrap_or(&self.certs_dir);
        let ip = self.listen.ip().to_string().replace([':', '.'], "-");
        dir.join(format!(
            "epoch-{}-{ip}_{}",
            self.role.as_str(),
            self.listen.port()
        ))
    }

    /// Checks the combination of settings; a primary or backup needs a peer distinct from itself.
    pub fn validate(&self) -> Result<()> {
        match (self.role, self.peer) {
            (Role::Standalone, Some(_)) => Err(Error::Config(
                "a standalone server has no peer; drop --peer or pick --role primary|backup".into(),
            )),
            (Role::Primary | Role::Backup, None) => Err(Error::Config(format!(
                "a {} needs --peer ADDR (the other server of the pair)",
                self.role
            ))),
            (_, Some(peer)) if peer == self.listen => Err(Error::Config(format!(
                "--peer {peer} is this server's own --listen address"
            ))),
            _ if self.max_streams == 0 || self.max_connections == 0 => Err(Error::Config(
                "max-streams and max-connections must be at least 1".into(),
            )),
            _ if [
                self.max_queued_bytes_per_stream,
                self.max_queued_bytes_per_connection,
                self.max_dumps,
                self.max_pending_handshakes,
                self.max_connections_per_identity,
            ]
            .contains(&0) =>
            {
                Err(Error::Config(
                    "max-queued-bytes-per-stream, max-queued-bytes-per-connection, max-dumps, \
                     max-pending-handshakes and max-connections-per-identity must be at least 1"
                        .into(),
                ))
            }
            _ if !(1..=quickv_core::store::BUCKETS).contains(&self.peer_streams) => {
                Err(Error::Config(format!(
                    "peer-streams {} is out of range: the 32 lanes share 1 to {} data streams",
                    self.peer_streams,
                    quickv_core::store::BUCKETS
                )))
            }
            // The peer link's control stream plus its data streams must fit the per-connection
            // stream limit, or the primary would wait for stream credit that never comes.
            _ if self.peer_streams as u64 + 1 > u64::from(self.max_streams) => {
                Err(Error::Config(format!(
                    "peer-streams {} needs max-streams of at least {} (one control stream plus the data streams)",
                    self.peer_streams,
                    self.peer_streams + 1
                )))
            }
            _ if self.http_tls && self.http.is_none() => Err(Error::Config(
                "--http-tls needs --http ADDR (the gateway's TCP address)".into(),
            )),
            _ if self.http_tls && self.http_insecure => Err(Error::Config(
                "--http-tls and --http-insecure contradict each other; pick one".into(),
            )),
            _ if self.tls.http_token.is_some() && (self.http.is_none() || self.http_tls) => {
                Err(Error::Config(
                    "--http-token guards the plain HTTP gateway: it needs --http ADDR, and not \
                     --http-tls (whose client certificates already authenticate)"
                        .into(),
                ))
            }
            _ if self
                .http
                .is_some_and(|a| !a.ip().is_loopback() && !self.http_tls && !self.http_insecure) =>
            {
                Err(Error::Config(format!(
                    "refusing to serve plain HTTP on {}: plain HTTP has no authentication, so it may \
                     only listen on loopback (127.0.0.1, ::1). Use --http-tls to require client \
                     certificates, or --http-insecure to accept the risk",
                    self.http.map(|a| a.to_string()).unwrap_or_default()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The TOML file that describes a pair (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Certificate directory; relative paths are taken from the working directory.
    pub certs: Option<PathBuf>,
    /// Directory of the servers' state files (the replication epoch); default: `certs`.
    pub state_dir: Option<PathBuf>,
    /// The primary's addresses.
    pub primary: Option<NodeSection>,
    /// The backup's addresses.
    pub backup: Option<NodeSection>,
    /// Optional size limits.
    pub limits: Option<LimitsSection>,
    /// Optional timeouts in milliseconds.
    pub timeouts: Option<TimeoutsSection>,
    /// Optional loosening of the identity rules (both servers); see [`TlsPolicy`].
    pub tls: Option<TlsSection>,
}

/// `[tls]`: the fail-closed identity rules a pair may loosen (docs/security.md); absent = strict.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Offer TLS 1.2 on the HTTPS gateway (`--tls12`).
    pub tls12: Option<bool>,
    /// Take client certificates without a role as `admin` (`--allow-roleless`).
    pub allow_roleless: Option<bool>,
    /// Let a reload lift the CRL (`--allow-crl-removal`).
    pub allow_crl_removal: Option<bool>,
    /// Bearer-token file of the plain HTTP gateway (`--http-token`).
    pub http_token: Option<PathBuf>,
}

/// One server's section of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Address this server binds and its peer dials.
    pub listen: SocketAddr,
    /// TCP address of this server's HTTP gateway; absent = no HTTP.
    pub http: Option<SocketAddr>,
    /// Whether that gateway speaks TLS with mandatory client certificates.
    pub http_tls: Option<bool>,
    /// Whether plain HTTP may listen on a non-loopback address (see `ServerConfig::http_insecure`).
    pub http_insecure: Option<bool>,
}

/// `[limits]`: sizes in bytes and counts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest key accepted, in bytes.
    pub max_key: Option<usize>,
    /// Largest value accepted, in bytes.
    pub max_value: Option<usize>,
    /// Concurrent client connections.
    pub max_connections: Option<usize>,
    /// Concurrent streams per connection.
    pub max_streams: Option<u32>,
    /// Bytes of keys+values above which writes are refused.
    pub max_memory: Option<u64>,
    /// Keys the store is sized for at start (a hint, not a limit).
    pub expected_keys: Option<usize>,
    /// Bytes of unwritten answers per stream before it is no longer read.
    pub max_queued_bytes_per_stream: Option<usize>,
    /// Bytes of unwritten answers per connection before it is no longer read.
    pub max_queued_bytes_per_connection: Option<usize>,
    /// Dumps sent at once.
    pub max_dumps: Option<usize>,
    /// QUIC handshakes in progress at once.
    pub max_pending_handshakes: Option<usize>,
    /// Handshakes in progress from which a QUIC Retry is demanded (0: always).
    pub retry_above_pending: Option<usize>,
    /// Client connections per certificate.
    pub max_connections_per_identity: Option<usize>,
}

/// `[timeouts]`: all in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Client connection idle timeout.
    pub idle_ms: Option<u64>,
    /// Backup ack timeout.
    pub ack_ms: Option<u64>,
    /// Peer link idle timeout.
    pub peer_idle_ms: Option<u64>,
    /// Partial-frame (slowloris) timeout.
    pub frame_ms: Option<u64>,
    /// QUIC handshake timeout.
    pub handshake_ms: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Builds a server config for `role` from the file alone.
    pub fn server_config(&self, role: Role) -> Result<ServerConfig> {
        let addr_of = |section: &Option<NodeSection>, name: &str| {
            section.as_ref().map(|s| s.listen).ok_or_else(|| {
                Error::Config(format!("the config file has no [{name}] listen address"))
            })
        };
        let (listen, peer) = match role {
            Role::Primary => (
                addr_of(&self.primary, "primary")?,
                Some(addr_of(&self.backup, "backup")?),
            ),
            Role::Backup => (
                addr_of(&self.backup, "backup")?,
                Some(addr_of(&self.primary, "primary")?),
            ),
            Role::Standalone => (addr_of(&self.primary, "primary")?, None),
        };
        let mut cfg = ServerConfig::new(role, listen);
        cfg.peer = peer;
        let own = match role {
            Role::Backup => &self.backup,
            Role::Primary | Role::Standalone => &self.primary,
        };
        if let Some(section) = own {
            cfg.http = section.http;
            cfg.http_tls = section.http_tls.unwrap_or(false);
            cfg.http_insecure = section.http_insecure.unwrap_or(false);
        }
        if let Some(dir) = &self.certs {
            cfg.certs_dir = dir.clone();
        }
        cfg.state_dir = self.state_dir.clone();
        if let Some(t) = &self.tls {
            cfg.tls = TlsPolicy {
                tls12: t.tls12.unwrap_or(false),
                allow_roleless: t.allow_roleless.unwrap_or(false),
                allow_crl_removal: t.allow_crl_removal.unwrap_or(false),
                http_token: t.http_token.clone(),
            };
        }
        if let Some(l) = &self.limits {
            cfg.limits = Limits::new(
                l.max_key.unwrap_or(cfg.limits.max_key),
                l.max_value.unwrap_or(cfg.limits.max_value),
            );
            cfg.max_connections = l.max_connections.unwrap_or(cfg.max_connections);
            cfg.max_streams = l.max_streams.unwrap_or(cfg.max_streams);
            cfg.max_memory = l.max_memory.or(cfg.max_memory);
            cfg.expected_keys = l.expected_keys.unwrap_or(cfg.expected_keys);
            cfg.max_queued_bytes_per_stream = l
                .max_queued_bytes_per_stream
                .unwrap_or(cfg.max_queued_bytes_per_stream);
            cfg.max_queued_bytes_per_connection = l
                .max_queued_bytes_per_connection
                .unwrap_or(cfg.max_queued_bytes_per_connection);
            cfg.max_dumps = l.max_dumps.unwrap_or(cfg.max_dumps);
            cfg.max_pending_handshakes = l
                .max_pending_handshakes
                .unwrap_or(cfg.max_pending_handshakes);
            cfg.retry_above_pending = l.retry_above_pending.unwrap_or(cfg.retry_above_pending);
            cfg.max_connections_per_identity = l
                .max_connections_per_identity
                .unwrap_or(cfg.max_connections_per_identity);
        }
        if let Some(t) = &self.timeouts {
            let ms = Duration::from_millis;
            cfg.idle_timeout = t.idle_ms.map(ms).unwrap_or(cfg.idle_timeout);
            cfg.ack_timeout = t.ack_ms.map(ms).unwrap_or(cfg.ack_timeout);
            cfg.peer_idle_timeout = t.peer_idle_ms.map(ms).unwrap_or(cfg.peer_idle_timeout);
            cfg.frame_timeout = t.frame_ms.map(ms).unwrap_or(cfg.frame_timeout);
            cfg.handshake_timeout = t.handshake_ms.map(ms).unwrap_or(cfg.handshake_timeout);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
