//! Redis as a bench target (cargo feature `redis`): the same workloads, mapped to the commands a
//! Redis user would send, over TLS with the same client certificate as quickv.
//!
//! | quickv | Redis | outcome |
//! |---|---|---|
//! | get | `GET k` | value → ok, nil → not found |
//! | insert | `SET k v NX` | OK → ok, nil → exists |
//! | update | `SET k v XX` | OK → ok, nil → not found |
//! | delete | `GETDEL k` | value → ok, nil → not found |
//! | ping | `PING payload` | echo → ok |
//!
//! With `--redis-wait N` every write is sent as a two-command pipeline `<write>; WAIT N <ms>` on the
//! same connection, and its latency covers both: this is what it takes for a Redis client to know
//! its write reached a replica, the guarantee quickv gives on every acknowledged write. A `WAIT`
//! that returns fewer than N replicas makes the write `indeterminate` (applied on the primary,
//! replication unconfirmed), as quickv would answer.
//!
//! Each multiplexed connection pipelines the commands of every worker that shares it, which is how
//! `--pipeline D` maps onto Redis. The client's own response timeout is off: `--timeout` applies
//! to both systems alike.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ClientTlsConfig, RedisError, TlsCertificates, Value};

use super::target::{ConnectOptions, Handle, Target};
use super::workload::LoadOp;
use quickv_net::tls::CertPaths;
use quickv_proto::Outcome;

/// Time allowed to open one connection (TCP + TLS + HELLO).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections to one Redis server.
pub struct RedisTarget {
    /// `connections × streams` multiplexed connections.
    conns: Vec<MultiplexedConnection>,
    /// Server version and role, from `INFO`.
    info: String,
    /// `WAIT` after writes: replicas to wait for and the timeout in ms.
    wait: Option<(u32, u64)>,
}

/// One worker's clone of one connection.
#[derive(Clone)]
pub struct RedisHandle {
    /// Shared with the other workers on the same connection.
    conn: MultiplexedConnection,
    /// `WAIT` after writes: replicas to wait for and the timeout in ms.
    wait: Option<(u32, u64)>,
}

impl RedisTarget {
    /// Opens the connections. `rediss://` uses TLS with `ca.pem` as the only root and
    /// `client.pem`/`client.key` as the client certificate; `redis://` is plain TCP.
    pub async fn connect(url: &str, opts: &ConnectOptions<'_>) -> anyhow::Result<RedisTarget> {
        let client = if url.starts_with("rediss://") {
            redis::Client::build_with_tls(url, tls_certificates(opts.certs_dir)?)
        } else {
            redis::Client::open(url)
        }
        .with_context(|| format!("bad Redis URL {url}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let n = opts.connections.max(1) * opts.streams.max(1);
        let attempts = (0..n).map(|_| client.get_multiplexed_async_connection_with_config(&config));
        let mut conns = futures_util::future::try_join_all(attempts)
            .await
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        let info = match conns.first_mut() {
            Some(conn) => describe(conn).await,
            None => String::new(),
        };
        Ok(RedisTarget {
            conns,
            info,
            wait: opts.redis_wait.map(|n| (n, opts.redis_wait_ms)),
        })
    }
}

impl Target for RedisTarget {
    type Handle = RedisHandle;

    /// Version, role and replica count, e.g. `redis 7.0.15 role=master replicas=1`.
    fn server_info(&self) -> String {
        self.info.clone()
    }

    fn handle(&self, worker: usize) -> RedisHandle {
        RedisHandle {
            conn: self.conns[worker % self.conns.len()].clone(),
            wait: self.wait,
        }
    }

    /// Nothing to say: dropping the multiplexed connections closes them.
    async fn close(self) {}
}

impl Handle for RedisHandle {
    /// No: the driver bounds each call with `--timeout` (the client's own response timeout is
    /// off).
    fn bounds_its_calls(&self) -> bool {
        false
    }

    /// Sends one operation (plus `WAIT` for writes when asked) and classifies the answer.
    async fn execute(
        &mut self,
        kind: LoadOp,
        key: Bytes,
        value: Bytes,
    ) -> (Outcome, Option<String>) {
        let mut cmd = match kind {
            LoadOp::Get => redis::cmd("GET"),
            LoadOp::Insert | LoadOp::Update => redis::cmd("SET"),
            LoadOp::Delete => redis::cmd("GETDEL"),
            LoadOp::Ping => redis::cmd("PING"),
        };
        match kind {
            LoadOp::Get | LoadOp::Delete => {
                cmd.arg(&key[..]);
            }
            LoadOp::Insert => {
                cmd.arg(&key[..]).arg(&value[..]).arg("NX");
            }
            LoadOp::Update => {
                cmd.arg(&key[..]).arg(&value[..]).arg("XX");
            }
            LoadOp::Ping => {
                cmd.arg(&value[..]);
            }
        }
        match self.wait {
            Some((replicas, ms)) if kind.is_write() => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd).cmd("WAIT").arg(replicas).arg(ms);
                match pipe.query_async::<Vec<Value>>(&mut self.conn).await {
                    Ok(values) => match &values[..] {
                        [write, acked] => {
                            let outcome = classify(kind, write);
                            if outcome.0 != Outcome::Ok {
                                return outcome;
                            }
                            match acked {
                                Value::Int(n) if *n >= i64::from(replicas) => (Outcome::Ok, None),
                                Value::Int(n) => (
                                    Outcome::Indeterminate,
                                    Some(format!(
                                        "WAIT {replicas} {ms} saw {n} replica(s) acknowledge"
                                    )),
                                ),
                                other => (
                                    Outcome::Error,
                                    Some(format!("unexpected WAIT answer {other:?}")),
                                ),
                            }
                        }
                        other => (
                            Outcome::Error,
                            Some(format!("pipeline answered {} values, not 2", other.len())),
                        ),
                    },
                    Err(e) => classify_error(&e),
                }
            }
            _ => match cmd.query_async::<Value>(&mut self.conn).await {
                Ok(value) => classify(kind, &value),
                Err(e) => classify_error(&e),
            },
        }
    }

    /// `SET k v` for the preload phase (no `WAIT`: reads go to the primary).
    async fn preload(&mut self, key: Bytes, value: Bytes) -> (Outcome, Option<String>) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key[..]).arg(&value[..]);
        match cmd.query_async::<Value>(&mut self.conn).await {
            Ok(value) => classify(LoadOp::Update, &value),
            Err(e) => classify_error(&e),
        }
    }
}

/// Reads the CA and the client certificate for mutual TLS.
fn tls_certificates(dir: &Path) -> anyhow::Result<TlsCertificates> {
    let paths = CertPaths::new(dir);
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(TlsCertificates {
        client_tls: Some(ClientTlsConfig {
            client_cert: read(paths.client_cert())?,
            client_key: read(paths.client_key())?,
        }),
        root_cert: Some(read(paths.ca_cert())?),
    })
}

/// `redis VERSION role=ROLE replicas=N` from `INFO server` and `INFO replication`.
async fn describe(conn: &mut MultiplexedConnection) -> String {
    let mut info = redis::cmd("INFO");
    info.arg("server").arg("replication");
    let text: String = info.query_async(conn).await.unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "redis {} role={} replicas={}",
        field("redis_version"),
        field("role"),
        field("connected_slaves")
    )
}

/// Maps one command's answer to an [`Outcome`] (see the module table).
fn classify(kind: LoadOp, value: &Value) -> (Outcome, Option<String>) {
    let is_ok =
        matches!(value, Value::Okay) || matches!(value, Value::SimpleString(s) if s == "OK");
    match (kind, value) {
        (LoadOp::Get | LoadOp::Delete | LoadOp::Ping, Value::BulkString(_)) => (Outcome::Ok, None),
        (LoadOp::Ping, Value::SimpleString(_)) => (Outcome::Ok, None),
        (LoadOp::Insert | LoadOp::Update, _) if is_ok => (Outcome::Ok, None),
        (LoadOp::Insert, Value::Nil) => (Outcome::Exists, None),
        (LoadOp::Get | LoadOp::Update | LoadOp::Delete, Value::Nil) => (Outcome::NotFound, None),
        (_, Value::ServerError(e)) => server_error(e.code(), &format!("{e:?}")),
        (_, other) => (
            Outcome::Error,
            Some(format!("unexpected answer to {kind}: {other:?}")),
        ),
    }
}

fn classify_error(e: &RedisError) -> (Outcome, Option<String>) {
    if e.is_timeout() {
        return (Outcome::Timeout, Some(e.to_string()));
    }
    match e.code() {
        Some(code) => server_error(code, &e.to_string()),
        None => (Outcome::Unreachable, Some(e.to_string())),
    }
}

/// Redis error codes that mean "refused, did not take effect, try later" count as unavailable,
/// like quickv's answer in the same situations; everything else is an error.
fn server_error(code: &str, message: &str) -> (Outcome, Option<String>) {
    let outcome = match code {
        "NOREPLICAS" | "MASTERDOWN" | "LOADING" | "TRYAGAIN" | "BUSY" | "READONLY" => {
            Outcome::Unavailable
        }
        _ => Outcome::Error,
    };
    (outcome, Some(message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_like_quickvs() {
        let bulk = Value::BulkString(b"v".to_vec());
        assert_eq!(classify(LoadOp::Get, &bulk).0, Outcome::Ok);
        assert_eq!(classify(LoadOp::Get, &Value::Nil).0, Outcome::NotFound);
        assert_eq!(classify(LoadOp::Insert, &Value::Okay).0, Outcome::Ok);
        assert_eq!(classify(LoadOp::Insert, &Value::Nil).0, Outcome::Exists);
        assert_eq!(classify(LoadOp::Update, &Value::Nil).0, Outcome::NotFound);
        assert_eq!(classify(LoadOp::Delete, &bulk).0, Outcome::Ok);
        assert_eq!(classify(LoadOp::Get, &Value::Int(3)).0, Outcome::Error);
        assert_eq!(server_error("NOREPLICAS", "x").0, Outcome::Unavailable);
        assert_eq!(server_error("ERR", "x").0, Outcome::Error);
    }
}
