//! Authorization by certificate role, and the TLS state a server can reload.
//!
//! Mutual TLS authenticates: a connection exists only if its client certificate chains to the
//! cluster CA and is not revoked. This module authorizes: each request is checked against the
//! [`Access`] the certificate grants ([`crate::pki::access_of`]) before it reaches the router, so
//! a refused request never takes effect. `hello` is allowed to everyone (it only negotiates the
//! version); `read` allows get, count, dump, status and ping; `write` adds insert, update and
//! delete; `admin` adds shutdown. The plain-HTTP gateway, which can only listen on loopback
//! (unless `--http-insecure`), acts as `admin`.
//!
//! [`Security`] holds what a SIGHUP reloads besides the QUIC endpoint's own config (which quinn
//! swaps for new connections): the HTTPS gateway's TLS config, and the registry of open client
//! connections with their certificates, so that a reload can close those whose certificate is now
//! revoked (or no longer chains to the CA bundle).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pki::Access;
use quickv_proto::{ErrorCode, Op, Reply};

/// Application close code for a connection whose certificate was revoked (or is no longer
/// trusted) at a reload.
pub const CLOSE_REVOKED: u32 = 4;
/// Application close code for a connection whose certificate carries a role we do not know.
pub const CLOSE_BAD_ROLE: u32 = 5;

/// The role an operation needs; `None` for `hello`, which everyone may send.
pub fn required(op: &Op) -> Option<Access> {
    match op {
        Op::Hello { .. } => None,
        Op::Ping(_) | Op::Get { .. } | Op::Count | Op::Dump | Op::Status => Some(Access::Read),
        Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. } => Some(Access::Write),
        Op::Shutdown => Some(Access::Admin),
    }
}

/// The `forbidden` answer for `op` when `access` does not allow it; `None` when it does.
pub fn refusal(access: Access, op: &Op) -> Option<Reply> {
    let need = required(op)?;
    (access < need).then(|| Reply::Error {
        code: ErrorCode::Forbidden,
        message: forbidden_sentence(access, op.name(), need),
    })
}

/// The sentence of a refusal, shared by QUIC and HTTP.
pub fn forbidden_sentence(access: Access, op: &str, need: Access) -> String {
    format!("{op} needs the {need} role; this client's certificate has {access}")
}

/// Reloadable TLS state and the open authenticated connections of one server.
#[derive(Debug, Default)]
pub struct Security {
    /// The HTTPS gateway's current TLS config (`None` without `--http-tls`); each new connection
    /// takes the config current when it is accepted.
    http: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// Open client connections by registration number, with the certificates they presented.
    live: Mutex<HashMap<u64, LiveClient>>,
    /// Next registration number.
    next: AtomicU64,
    /// Successful reloads since start (shown in `status`, so a tool can tell a reload happened).
    pub reloads: AtomicU64,
    /// Reloads that failed (the old certificates stay in use).
    pub reload_failures: AtomicU64,
    /// Connections closed by a reload because their certificate was revoked or no longer trusted.
    pub closed_revoked: AtomicU64,
    /// Requests refused because the certificate's role did not allow them.
    pub forbidden: AtomicU64,
}

/// One open client connection: its certificate chain and how to close it.
#[derive(Debug)]
struct LiveClient {
    /// End entity first, as presented in the handshake.
    chain: Vec<CertificateDer<'static>>,
    /// How to end it.
    closer: Closer,
}

/// How a registered connection is closed.
#[derive(Debug)]
pub enum Closer {
    /// A QUIC client connection: closed with [`CLOSE_REVOKED`] and a sentence.
    Quic(quinn::Connection),
    /// An HTTPS connection: its task stops serving when the token is cancelled.
    Http(CancellationToken),
}

impl Security {
    /// The HTTPS gateway's current TLS config.
    pub fn http_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the HTTPS gateway's TLS config (new connections only).
    pub fn set_http_config(&self, config: Arc<rustls::ServerConfig>) {
        *self.http.write().unwrap_or_else(PoisonError::into_inner) = Some(config);
    }

    /// Registers an open connection until the returned guard drops.
    pub fn register(
        &self,
        chain: Vec<CertificateDer<'static>>,
        closer: Closer,
    ) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, LiveClient { chain, closer });
        Registration { security: self, id }
    }

    /// Counts a refused request.
    pub fn count_forbidden(&self) {
        self.forbidden.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-checks every open connection's certificate with `verifier` (built from the files just
    /// reloaded) and closes those it refuses; returns how many were closed.
    pub fn recheck(&self, verifier: &dyn ClientCertVerifier) -> usize {
        let now = UnixTime::now();
        let mut closed = 0;
        for client in self.lock().values() {
            let Some((end_entity, intermediates)) = client.chain.split_first() else {
                continue;
            };
            let Err(e) = verifier.verify_client_cert(end_entity, intermediates, now) else {
                continue;
            };
            let reason = match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
                    "certificate revoked".to_string()
                }
                other => format!("certificate no longer trusted: {other}"),
            };
            info!(%reason, "closing a client connection after a certificate reload");
            match &client.closer {
                Closer::Quic(conn) => conn.close(CLOSE_REVOKED.into(), reason.as_bytes()),
                Closer::Http(token) => token.cancel(),
            }
            closed += 1;
        }
        self.closed_revoked
            .fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }

    /// Counts a reload's outcome and logs it.
    pub fn note_reload(&self, result: &crate::error::Result<usize>) {
        match result {
            Ok(closed) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                info!(
                    closed,
                    "reloaded certificates, CA bundle and CRL (new connections use them)"
                );
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                warn!(reason = %e, "certificate reload failed; still using the previous ones");
            }
        }
    }

    /// The `certificates` part of `status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "reloads": self.reloads.load(Ordering::Relaxed),
            "reload_failures": self.reload_failures.load(Ordering::Relaxed),
            "closed_revoked": self.closed_revoked.load(Ordering::Relaxed),
            "authenticated_connections": self.lock().len(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveClient>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a connection in the registry; removes it when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    /// The registry.
    security: &'a Security,
    /// The connection's registration number.
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.security.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn each_role_allows_exactly_its_operations() {
        let key = Bytes::from_static(b"k");
        let ops = [
            (Op::Hello { version: 1 }, None),
            (Op::Ping(Bytes::new()), Some(Access::Read)),
            (Op::Get { key: key.clone() }, Some(Access::Read)),
            (Op::Count, Some(Access::Read)),
            (Op::Dump, Some(Access::Read)),
            (Op::Status, Some(Access::Read)),
            (
                Op::Insert {
                    key: key.clone(),
                    value: key.clone(),
                },
                Some(Access::Write),
            ),
            (
                Op::Update {
                    key: key.clone(),
                    value: key.clone(),
                },
                Some(Access::Write),
            ),
            (Op::Delete { key: key.clone() }, Some(Access::Write)),
            (Op::Shutdown, Some(Access::Admin)),
        ];
        for (op, need) in ops {
            assert_eq!(required(&op), need, "{}", op.name());
            for access in [Access::Read, Access::Write, Access::Admin] {
                let refused = refusal(access, &op);
                let allowed = need.is_none_or(|n| access >= n);
                assert_eq!(refused.is_none(), allowed, "{access} {}", op.name());
                if let Some(Reply::Error { code, message }) = refused {
                    assert_eq!(code, ErrorCode::Forbidden);
                    assert!(message.contains(op.name()), "{message}");
                }
            }
        }
    }
}
