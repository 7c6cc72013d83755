//! Authorization by certificate role, and the TLS state a server can reload.
//!
//! Mutual TLS authenticates: a connection exists only if its client certificate chains to the
//! cluster CA and is not revoked. [`Security::admit`] then decides, once per connection and after
//! the handshake, whether the certificate is a client identity at all — a server certificate is
//! accepted only on the peer link, a certificate without a role only with `--allow-roleless` — and
//! re-verifies it against the CRL in force *at that moment*, under the lock a reload's re-check
//! takes, so a handshake that straddles a reload cannot slip through. This module also authorizes:
//! each request is checked against the [`Access`] the certificate grants before it reaches the
//! router, so a refused request never takes effect. `hello` is allowed to everyone (it only
//! negotiates the version); `read` allows get, count, dump, status and ping; `write` adds insert,
//! update and delete; `admin` adds shutdown. The plain-HTTP gateway, which can only listen on
//! loopback (unless `--http-insecure`), acts as `admin` for the requests its guard lets through.
//!
//! [`Security`] holds what a SIGHUP reloads: the [`Trust`] (the client verifier and CRL in force,
//! read by every handshake when it verifies), the HTTPS gateway's TLS config, and the registry of
//! open client connections with their certificates, so that a reload can close those whose
//! certificate is now revoked (or no longer chains to the CA bundle). [`Security::reload`] builds
//! everything from the files first and changes nothing when any of it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::ServerConfig;
use crate::error::Result;
use crate::pki::Access;
use quickv_proto::status::CertificateStatus;
use quickv_proto::{ErrorCode, Op, Reply};

use crate::tls::{self, Current, TransportLimits, Trust};
use quickv_net::tls::CertPaths;

/// Application close code for a connection whose certificate was revoked (or is no longer
/// trusted): at a reload, or when it registers after a handshake that straddled one.
pub const CLOSE_REVOKED: u32 = 4;
/// Application close code for a connection whose certificate grants no client role: an unknown
/// role, none (without `--allow-roleless`), or a server certificate.
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
#[derive(Debug)]
pub struct Security {
    /// The client verifier and CRL in force; every handshake reads it when it verifies.
    trust: Trust,
    /// Take a certificate without a role unit as `admin` (`--allow-roleless`).
    allow_roleless: bool,
    /// The HTTPS gateway's current TLS config (`None` without `--http-tls`); each new connection
    /// takes the config current when it is accepted.
    http: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// Open client connections by registration number, with the certificates they presented.
    /// Held while a connection is verified and inserted, and while a reload re-checks.
    live: Mutex<HashMap<u64, LiveClient>>,
    /// Next registration number.
    next: AtomicU64,
    /// Successful reloads since start (shown in `status`, so a tool can tell a reload happened).
    pub reloads: AtomicU64,
    /// Reloads that failed (the old certificates stay in use).
    pub reload_failures: AtomicU64,
    /// Connections closed because their certificate was revoked or no longer trusted: by a reload,
    /// or when they registered.
    pub closed_revoked: AtomicU64,
    /// Connections refused after the handshake because the certificate grants no client role.
    pub refused_identities: AtomicU64,
    /// Requests refused because the certificate's role did not allow them.
    pub forbidden: AtomicU64,
    /// The QUIC endpoint's config in force. A reload swaps its certificates and verifier but
    /// keeps the rest, above all its Retry token key: a client that got a Retry just before a
    /// reload returns its token just after, and a fresh random key would drop that handshake.
    quic: Mutex<Option<quinn::ServerConfig>>,
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

/// Why [`Security::admit`] refused a connection: the application close code and its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// [`CLOSE_BAD_ROLE`] or [`CLOSE_REVOKED`].
    pub code: u32,
    /// A sentence for the close frame and the log.
    pub reason: String,
}

impl Security {
    /// Loads the CA bundle and CRL of `config` and builds the security state of a server.
    pub fn load(config: &ServerConfig) -> Result<Security> {
        let paths = CertPaths::new(&config.certs_dir);
        let current = Current::load(&paths, None, config.tls.allow_crl_removal)?;
        Ok(Security {
            trust: Trust::new(current),
            allow_roleless: config.tls.allow_roleless,
            http: RwLock::default(),
            live: Mutex::default(),
            next: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            closed_revoked: AtomicU64::new(0),
            refused_identities: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            quic: Mutex::default(),
        })
    }

    /// The QUIC endpoint's config, its client verifier following this server's [`Trust`].
    pub fn quic_config(
        &self,
        paths: &CertPaths,
        limits: TransportLimits,
    ) -> Result<quinn::ServerConfig> {
        let hints = self.trust.current();
        let cfg = tls::server_config_with(paths, limits, self.trust.verifier(&hints))?;
        *self.quic.lock().unwrap_or_else(PoisonError::into_inner) = Some(cfg.clone());
        Ok(cfg)
    }

    /// `fresh` as the endpoint's next config: its certificates, verifier and transport on top of
    /// the config in force (same token key), or `fresh` itself if none is.
    fn next_quic(&self, fresh: quinn::ServerConfig) -> quinn::ServerConfig {
        let mut in_force = self.quic.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match in_force.take() {
            Some(mut kept) => {
                kept.crypto = fresh.crypto;
                kept.transport = fresh.transport;
                kept
            }
            None => fresh,
        };
        *in_force = Some(next.clone());
        next
    }

    /// The HTTPS gateway's config (`--http-tls`), its verifier following this server's [`Trust`].
    pub fn https_config(&self, config: &ServerConfig) -> Result<Arc<rustls::ServerConfig>> {
        let hints = self.trust.current();
        tls::http_server_config(
            &CertPaths::new(&config.certs_dir),
            self.trust.verifier(&hints),
            config.tls.tls12,
        )
    }

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

    /// Admits a client connection whose handshake just finished on the client ALPN (QUIC) or on
    /// the HTTPS gateway: its role, and a registration that keeps it in the registry until
    /// dropped. Refused (close with the [`Refusal`]) when the certificate grants no client role,
    /// or when the verifier in force now refuses it (revoked by a reload the handshake
    /// straddled).
    pub fn admit(
        &self,
        chain: Vec<CertificateDer<'static>>,
        closer: Closer,
    ) -> std::result::Result<(Access, Registration<'_>), Refusal> {
        let access = self.role(&chain).inspect_err(|_| {
            self.refused_identities.fetch_add(1, Ordering::Relaxed);
        })?;
        let mut live = self.lock();
        // Under the registry's lock: a reload installs its verifier before it takes this lock to
        // re-check, so either this sees the new verifier or the re-check sees this connection.
        if let Err(reason) = verify(&self.trust.current(), &chain) {
            self.closed_revoked.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal {
                code: CLOSE_REVOKED,
                reason,
            });
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        live.insert(id, LiveClient { chain, closer });
        Ok((access, Registration { security: self, id }))
    }

    /// The role `chain`'s end entity grants a client, or why it grants none.
    fn role(&self, chain: &[CertificateDer<'static>]) -> std::result::Result<Access, Refusal> {
        let bad = |reason: String| Refusal {
            code: CLOSE_BAD_ROLE,
            reason,
        };
        let Some(end_entity) = chain.first() else {
            return Err(bad("no client certificate".into()));
        };
        if crate::pki::is_server_certificate(end_entity) {
            return Err(bad(
                "a server certificate is the pair's identity on the peer link, not a client".into(),
            ));
        }
        match crate::pki::access_of(end_entity) {
            Ok(Some(access)) => Ok(access),
            Ok(None) if self.allow_roleless => Ok(Access::Admin),
            Ok(None) => Err(bad(format!(
                "the client certificate carries no role (OU={}ROLE); issue one with `quickv \
                 certs client NAME --role ROLE`, or start the server with --allow-roleless",
                crate::pki::ROLE_UNIT_PREFIX
            ))),
            Err(why) => Err(bad(why)),
        }
    }

    /// Counts a refused request.
    pub fn count_forbidden(&self) {
        self.forbidden.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads the server certificate and key, the CA bundle and the CRL: builds the new verifier
    /// and both configs first (nothing changes if any fails: a CRL that vanished or went
    /// backwards, a half-copied key), then puts them in force — handshakes in progress verify with
    /// the new verifier from now on — and closes the open connections it refuses. Returns how many
    /// were closed.
    pub fn reload(
        &self,
        config: &ServerConfig,
        limits: TransportLimits,
        endpoint: &quinn::Endpoint,
    ) -> Result<usize> {
        let paths = CertPaths::new(&config.certs_dir);
        let in_force = self.trust.current();
        let next = Current::load(
            &paths,
            Some(&in_force.revocation),
            config.tls.allow_crl_removal,
        )?;
        let quic = tls::server_config_with(&paths, limits, self.trust.verifier(&next))?;
        let https = match config.http_tls {
            true => Some(tls::http_server_config(
                &paths,
                self.trust.verifier(&next),
                config.tls.tls12,
            )?),
            false => None,
        };
        self.trust.install(next);
        endpoint.set_server_config(Some(self.next_quic(quic)));
        if let Some(https) = https {
            self.set_http_config(https);
        }
        Ok(self.recheck())
    }

    /// Re-checks every open connection's certificate with the verifier in force and closes those
    /// it refuses; returns how many were closed.
    pub fn recheck(&self) -> usize {
        let live = self.lock();
        let current = self.trust.current();
        let mut closed = 0;
        for client in live.values() {
            let Err(reason) = verify(&current, &client.chain) else {
                continue;
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

    /// Counts a reload's outcome and logs it (a failure loudly: the old certificates and CRL stay
    /// in force until the files are fixed).
    pub fn note_reload(&self, result: &crate::error::Result<usize>) {
        match result {
            Ok(closed) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                let (crl_entries, _) = self.trust.current().revocation.status();
                info!(
                    closed,
                    crl_entries,
                    "reloaded certificates, CA bundle and CRL (new connections use them)"
                );
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                error!(
                    reason = %e,
                    "CERTIFICATE RELOAD FAILED: the previous certificates, CA bundle and CRL stay in force"
                );
            }
        }
    }

    /// The `certificates` part of `status`.
    pub fn status(&self) -> CertificateStatus {
        let (crl_entries, crl_number) = self.trust.current().revocation.status();
        let mut s = CertificateStatus::default();
        s.reloads = self.reloads.load(Ordering::Relaxed);
        s.reload_failures = self.reload_failures.load(Ordering::Relaxed);
        s.closed_revoked = self.closed_revoked.load(Ordering::Relaxed);
        s.refused_identities = self.refused_identities.load(Ordering::Relaxed);
        s.authenticated_connections = self.lock().len() as u64;
        s.crl_entries = crl_entries as u64;
        s.crl_number = crl_number;
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveClient>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Verifies `chain` with `current`; the refusal sentence when it fails.
fn verify(current: &Current, chain: &[CertificateDer<'static>]) -> std::result::Result<(), String> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err("no client certificate".into());
    };
    match current
        .verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
    {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
            Err("certificate revoked".into())
        }
        Err(other) => Err(format!("certificate no longer trusted: {other}")),
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

    /// The chain of client `name` in `paths`.
    fn chain_of(paths: &CertPaths, name: &str) -> Vec<CertificateDer<'static>> {
        quickv_net::tls::load_certs(&paths.dir.join(format!("{name}.pem"))).expect("chain")
    }

    #[test]
    fn a_connection_registers_against_the_crl_in_force_and_a_reload_rechecks_the_registered() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::tls::generate(dir.path(), &[], false).expect("certs");
        let paths = CertPaths::new(dir.path());
        for name in ["early", "late"] {
            crate::pki::issue_client(&paths, name, Access::Write, false).expect("issue");
        }
        let mut config = ServerConfig::new(
            crate::config::Role::Standalone,
            "127.0.0.1:1".parse().expect("addr"),
        );
        config.certs_dir = dir.path().to_path_buf();
        let security = Security::load(&config).expect("security");
        // Registered before the revocation is in force: the re-check closes it.
        let early_closed = CancellationToken::new();
        let (access, _early) = security
            .admit(
                chain_of(&paths, "early"),
                Closer::Http(early_closed.clone()),
            )
            .expect("admitted");
        assert_eq!(access, Access::Write);
        for name in ["early", "late"] {
            crate::pki::revoke(&paths, name).expect("revoke");
        }
        let next = Current::load(&paths, Some(&security.trust.current().revocation), false)
            .expect("new CRL");
        security.trust.install(next);
        // A handshake verified before the install registers after it: refused at registration.
        let late = security.admit(
            chain_of(&paths, "late"),
            Closer::Http(CancellationToken::new()),
        );
        assert_eq!(late.map(|(a, _)| a).map_err(|r| r.code), Err(CLOSE_REVOKED));
        assert_eq!(security.recheck(), 1);
        assert!(early_closed.is_cancelled());
        assert_eq!(security.closed_revoked.load(Ordering::Relaxed), 2);
        // A server certificate is no client, whatever the CRL says.
        let server = quickv_net::tls::load_certs(&paths.server_cert()).expect("server.pem");
        let refused = security.admit(server, Closer::Http(CancellationToken::new()));
        assert_eq!(
            refused.map(|(a, _)| a).map_err(|r| r.code),
            Err(CLOSE_BAD_ROLE)
        );
    }
}
