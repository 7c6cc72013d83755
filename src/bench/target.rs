//! The systems under test, behind one interface, so quickv and Redis share the load model.
//!
//! A [`Target`] is a set of connections; a [`Handle`] is one worker's cheap clone of one of them.
//! Both are traits: this file has quickv's implementation, `redis_target.rs` Redis's, and the
//! driver picks one by [`TargetSpec`] once per run.
//! The mapping of concurrency onto each system:
//!
//! | flag | quickv | Redis |
//! |---|---|---|
//! | `--connections C` | C QUIC connections | — |
//! | `--streams S` | S long-lived streams per connection | C × S TCP+TLS connections |
//! | `--pipeline D` | D requests in flight per stream | D commands in flight per connection |
//!
//! so `C × S × D` requests are in flight on both. (quickv's client spreads calls over its streams
//! round-robin, so D per stream holds on average.)

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::workload::LoadOp;
use quickv_client::{Client, ClientConfig, ClientError, Read, ReadFrom};
use quickv_proto::{Op, Outcome, Reply};

/// What to connect to, parsed from `--target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A quickv server at `HOST:PORT`.
    Quickv(String),
    /// A Redis server: the `redis://` or `rediss://` URL as given.
    Redis(String),
}

impl TargetSpec {
    /// `redis://…`/`rediss://…` is Redis; anything else is a quickv `HOST:PORT` (an optional
    /// `quic://` prefix is accepted and dropped).
    pub fn parse(s: &str) -> TargetSpec {
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            TargetSpec::Redis(s.to_owned())
        } else {
            TargetSpec::Quickv(s.strip_prefix("quic://").unwrap_or(s).to_owned())
        }
    }

    /// `quickv` or `redis`, for reports.
    pub fn system(&self) -> &'static str {
        match self {
            TargetSpec::Quickv(_) => "quickv",
            TargetSpec::Redis(_) => "redis",
        }
    }

    /// The `HOST:PORT` part.
    pub fn host_port(&self) -> &str {
        match self {
            TargetSpec::Quickv(addr) => addr,
            TargetSpec::Redis(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                rest.split(['/', '?']).next().unwrap_or(rest)
            }
        }
    }

    /// Refuses any target that does not resolve to loopback only. The generator can saturate a
    /// link and a server; pointing it anywhere else by mistake is not a benchmark. Redis URLs
    /// without a port use 6379.
    pub fn check_loopback(&self) -> Result<(), String> {
        let host_port = self.host_port();
        let with_port = if matches!(self, TargetSpec::Redis(_)) && !has_port(host_port) {
            format!("{host_port}:6379")
        } else {
            host_port.to_owned()
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{with_port} resolves to no address"));
        }
        if let Some(remote) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(format!(
                "{with_port} resolves to {remote}, which is not a loopback address: \
                 quickv bench only sends load to this machine (127.0.0.0/8 or ::1)"
            ));
        }
        Ok(())
    }
}

/// True when `host_port` ends in a port (`host:1`, `[::1]:1`), false for a bare host or `[::1]`.
fn has_port(host_port: &str) -> bool {
    match host_port.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        None => host_port.contains(':'),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Connections to one system under test. The driver is generic over it, so each system's
/// requests are dispatched statically; [`QuickvTarget`] is quickv's, `redis_target::RedisTarget`
/// Redis's (feature `redis`).
pub trait Target: Send + Sync + 'static {
    /// One worker's way to send requests.
    type Handle: Handle;

    /// Who answered, e.g. `quickv 0.1.0 role=standalone` or `redis 7.0.15 role=master`.
    fn server_info(&self) -> String;

    /// The handle worker `worker` uses: workers are spread evenly over the connections.
    fn handle(&self, worker: usize) -> Self::Handle;

    /// Closes the connections politely, so servers log clean disconnects.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// One worker's way to send requests; cheap to clone. Every answer is classified into an
/// [`Outcome`] and, for failing outcomes, a message that explains it.
pub trait Handle: Clone + Send + 'static {
    /// True when every [`Handle::execute`] ends by the run's `--timeout` on its own (quickv: the
    /// client's deadline, a read as `timeout`, a write as `indeterminate`), so the driver need
    /// not wrap it in a timer of its own.
    fn bounds_its_calls(&self) -> bool;

    /// Sends one request of `kind` on `key` (with `value` for writes; ping echoes `value`) and
    /// classifies the answer.
    fn execute(
        &mut self,
        kind: LoadOp,
        key: Bytes,
        value: Bytes,
    ) -> impl Future<Output = (Outcome, Option<String>)> + Send;

    /// Stores `key` = `value` for the preload phase.
    fn preload(
        &mut self,
        key: Bytes,
        value: Bytes,
    ) -> impl Future<Output = (Outcome, Option<String>)> + Send;
}

/// How to open a [`Target`], from the run's config.
#[derive(Clone, Debug)]
pub struct ConnectOptions<'a> {
    /// Directory with `ca.pem`, `client.pem`, `client.key` (used for both systems).
    pub certs_dir: &'a Path,
    /// QUIC connections (quickv).
    pub connections: usize,
    /// Streams per connection (quickv), or connections per `--connections` (Redis).
    pub streams: usize,
    /// `Some(n)`: follow every Redis write with `WAIT n <redis_wait_ms>`.
    pub redis_wait: Option<u32>,
    /// The `WAIT` timeout, milliseconds.
    pub redis_wait_ms: u64,
    /// Deadline of each request (`--timeout`): quickv clients keep it themselves (no timer per
    /// call), so the driver adds none of its own ([`Handle::bounds_its_calls`]).
    pub timeout: Duration,
    /// quickv: the pair's backup (`--backup`), and where gets go (`--read-from`): with
    /// [`ReadFrom::Any`] each connection is a pair client and gets take turns between the two
    /// servers ([`Client::read`]); writes always go to the primary.
    pub backup: Option<(&'a str, ReadFrom)>,
}

/// quickv: one [`Client`] per `--connections`, each with `--streams` streams (per server, for a
/// pair).
pub struct QuickvTarget {
    /// The connections.
    clients: Vec<Client>,
    /// Gets go through [`Client::read`] (a pair client spreading reads), not to the primary.
    spread_reads: bool,
}

impl QuickvTarget {
    /// Opens every connection to the server at `addr` (and to the backup, if
    /// [`ConnectOptions::backup`] is set) concurrently, or fails with the first error.
    pub async fn connect(addr: &str, opts: &ConnectOptions<'_>) -> anyhow::Result<QuickvTarget> {
        let mut config = ClientConfig::new(opts.certs_dir);
        config.streams = opts.streams.max(1);
        config.timeout = Some(opts.timeout);
        let backup = opts.backup.filter(|(_, from)| *from != ReadFrom::Primary);
        if let Some((_, read_from)) = backup {
            config.read_from = read_from;
        }
        let attempts = (0..opts.connections.max(1)).map(|_| async {
            match backup {
                Some((backup, _)) => Client::connect_pair(addr, backup, &config).await,
                None => Client::connect(addr, &config).await,
            }
        });
        let clients = futures_util::future::try_join_all(attempts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to quickv at {addr}: {e}"))?;
        Ok(QuickvTarget {
            clients,
            spread_reads: backup.is_some(),
        })
    }
}

/// One worker's clone of a quickv [`Client`], and whether its gets may go to either server.
#[derive(Clone, Debug)]
pub struct QuickvHandle {
    /// The connection (to one server or to the pair).
    client: Client,
    /// Gets go through [`Client::read`] ([`ConnectOptions::backup`]).
    spread_reads: bool,
}

impl Target for QuickvTarget {
    type Handle = QuickvHandle;

    fn server_info(&self) -> String {
        self.clients
            .first()
            .map(|c| c.server_info().to_owned())
            .unwrap_or_default()
    }

    fn handle(&self, worker: usize) -> QuickvHandle {
        QuickvHandle {
            client: self.clients[worker % self.clients.len()].clone(),
            spread_reads: self.spread_reads,
        }
    }

    async fn close(self) {
        for c in self.clients {
            c.close().await;
        }
    }
}

impl Handle for QuickvHandle {
    fn bounds_its_calls(&self) -> bool {
        true
    }

    async fn execute(
        &mut self,
        kind: LoadOp,
        key: Bytes,
        value: Bytes,
    ) -> (Outcome, Option<String>) {
        if kind == LoadOp::Get && self.spread_reads {
            // Boxed: a pair read's state (two servers, the backup check) is several times a
            // plain call's, and every request's future would carry it.
            return match Box::pin(self.client.read(key)).await {
                Ok(Read { value: Some(_), .. }) => (Outcome::Ok, None),
                Ok(Read { value: None, .. }) => (Outcome::NotFound, None),
                Err(e) => (Outcome::from(&e), Some(e.to_string())),
            };
        }
        let op = match kind {
            LoadOp::Get => Op::Get { key },
            LoadOp::Insert => Op::Insert { key, value },
            LoadOp::Update => Op::Update { key, value },
            LoadOp::Delete => Op::Delete { key },
            LoadOp::Ping => Op::Ping(value),
        };
        classify_quickv(kind, self.client.call(op).await)
    }

    /// An insert: an `exists` answer means a previous run left the key there, which is as good.
    async fn preload(&mut self, key: Bytes, value: Bytes) -> (Outcome, Option<String>) {
        classify_quickv(
            LoadOp::Insert,
            self.client.call(Op::Insert { key, value }).await,
        )
    }
}

/// Maps a quickv answer to an [`Outcome`].
fn classify_quickv(kind: LoadOp, answer: Result<Reply, ClientError>) -> (Outcome, Option<String>) {
    match answer {
        Ok(Reply::Ok) if matches!(kind, LoadOp::Insert | LoadOp::Update) => (Outcome::Ok, None),
        Ok(Reply::Value(_)) if matches!(kind, LoadOp::Get | LoadOp::Delete | LoadOp::Ping) => {
            (Outcome::Ok, None)
        }
        Ok(Reply::NotFound) if kind != LoadOp::Insert && kind != LoadOp::Ping => {
            (Outcome::NotFound, None)
        }
        Ok(Reply::Exists) if kind == LoadOp::Insert => (Outcome::Exists, None),
        Ok(Reply::Unavailable(why)) => (Outcome::Unavailable, Some(why)),
        Ok(Reply::Indeterminate(why)) => (Outcome::Indeterminate, Some(why)),
        Ok(Reply::Error { code, message }) => (
            Outcome::of_error(code),
            Some(format!("server error ({code}): {message}")),
        ),
        Ok(other) => (
            Outcome::Error,
            Some(format!("unexpected answer to {kind}: {other:?}")),
        ),
        Err(e) => (Outcome::from(&e), Some(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_scheme() {
        assert_eq!(
            TargetSpec::parse("127.0.0.1:4470"),
            TargetSpec::Quickv("127.0.0.1:4470".into())
        );
        assert_eq!(
            TargetSpec::parse("quic://[::1]:4470"),
            TargetSpec::Quickv("[::1]:4470".into())
        );
        let redis = TargetSpec::parse("rediss://user:pw@127.0.0.1:6380/0");
        assert_eq!(redis.system(), "redis");
        assert_eq!(redis.host_port(), "127.0.0.1:6380");
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(TargetSpec::parse("127.0.0.1:4470").check_loopback().is_ok());
        assert!(TargetSpec::parse("127.0.0.2:4470").check_loopback().is_ok());
        assert!(TargetSpec::parse("[::1]:4470").check_loopback().is_ok());
        assert!(TargetSpec::parse("rediss://127.0.0.1")
            .check_loopback()
            .is_ok());
        assert!(TargetSpec::parse("10.0.0.1:4470").check_loopback().is_err());
        assert!(TargetSpec::parse("rediss://192.168.1.1:6379")
            .check_loopback()
            .is_err());
        assert!(TargetSpec::parse("not an address")
            .check_loopback()
            .is_err());
    }

    #[test]
    fn quickv_answers_are_classified() {
        let ok = |k, r| classify_quickv(k, Ok(r)).0;
        assert_eq!(ok(LoadOp::Insert, Reply::Ok), Outcome::Ok);
        assert_eq!(ok(LoadOp::Insert, Reply::Exists), Outcome::Exists);
        assert_eq!(ok(LoadOp::Get, Reply::NotFound), Outcome::NotFound);
        assert_eq!(
            ok(LoadOp::Update, Reply::Unavailable("x".into())),
            Outcome::Unavailable
        );
        assert_eq!(
            ok(LoadOp::Delete, Reply::Indeterminate("x".into())),
            Outcome::Indeterminate
        );
        // An answer of the wrong shape is an error, not a success.
        assert_eq!(ok(LoadOp::Get, Reply::Ok), Outcome::Error);
        let err = classify_quickv(LoadOp::Get, Err(ClientError::Connection("gone".into())));
        assert_eq!(err, (Outcome::Unreachable, Some("gone".into())));
    }
}
