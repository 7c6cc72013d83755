//! TLS for the dialing side (a client, or a server dialing its peer): the certificate files of a cluster, PEM loading, and the rustls/quinn client
//! configs, plus plain sentences for TLS refusals.
//!
//! Certificates are made by the server side (`quickv certs`, rcgen), not here: a client only
//! reads `ca.pem`, `client.pem` and `client.key` from a directory ([`CertPaths`]). Only TLS 1.3
//! and only the ring provider are used, passed explicitly (with two providers compiled in, rustls
//! cannot pick one on its own).
//!
//! With TLS 1.3 a client whose certificate is refused still sees `connect()` succeed; the refusal
//! comes as an alert on first use. [`explain_connection_error`] turns those alerts into plain
//! sentences.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quickv_proto::{ALPN, PEER_ALPN};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why certificates could not be loaded or a TLS config built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key could not be read, parsed or used.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// A setting cannot be expressed in the transport config (e.g. an idle timeout too large).
    #[error("config error: {0}")]
    Config(String),
}

/// The file names inside a certificate directory.
#[derive(Clone, Debug)]
pub struct CertPaths {
    /// The directory itself.
    pub dir: PathBuf,
}

impl CertPaths {
    /// Paths inside `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> CertPaths {
        CertPaths { dir: dir.into() }
    }
    /// The CA certificate everyone trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA private key (only needed to sign more certificates).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The server/peer certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// The server/peer private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    /// The client private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
    /// The certificate revocation list (optional; servers refuse the client certificates it
    /// lists; made by `quickv certs revoke`).
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// True when every file a server and a client need is present.
    pub fn complete(&self) -> bool {
        [
            self.ca_cert(),
            self.server_cert(),
            self.server_key(),
            self.client_cert(),
            self.client_key(),
        ]
        .iter()
        .all(|p| p.exists())
    }
}

/// Which certificate a dialing side presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `client.pem`: CLI, library, tools.
    Client,
    /// `server.pem`: a server dialing its peer.
    Peer,
}

/// A client endpoint config presenting `identity`, trusting only the cluster CA.
pub fn client_config(
    paths: &CertPaths,
    identity: Identity,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let (cert, key, alpn) = match identity {
        Identity::Client => (paths.client_cert(), paths.client_key(), ALPN),
        Identity::Peer => (paths.server_cert(), paths.server_key(), PEER_ALPN),
    };
    client_config_from_files(
        &paths.ca_cert(),
        Some((&cert, &key)),
        alpn,
        idle_timeout,
        keep_alive,
    )
}

/// A client config from explicit files; `identity = None` presents no certificate (used by tests
/// that check the refusal).
pub fn client_config_from_files(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[u8],
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cert_err)?
        .with_root_certificates(load_roots(ca)?);
    let mut tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(cert_err)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client_config(tls, idle_timeout, keep_alive)
}

/// Wraps a rustls client config for QUIC with quickv's transport settings (idle timeout,
/// keep-alive, no unidirectional streams); servers use it for their peer-link config.
pub fn quic_client_config(
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let quic = QuicClientConfig::try_from(tls).map_err(cert_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .map_err(|_| TlsError::Config(format!("idle timeout {idle_timeout:?} is too large")))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_concurrent_uni_streams(0u32.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Turns a QUIC/TLS connection failure into a sentence a user can act on.
pub fn explain_connection_error(err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let alert = |code: quinn::TransportErrorCode| {
        let code = u64::from(code);
        (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
    };
    match err {
        E::ConnectionClosed(close) => match alert(close.error_code) {
            Some(a) => format!(
                "the server refused this client's certificate: {}",
                alert_text(a)
            ),
            None if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
                "the server refused the connection (it is at its connection limit)".into()
            }
            None => format!("the server closed the connection: {close}"),
        },
        E::TransportError(te) => match alert(te.code) {
            Some(a) => format!("TLS handshake failed: {} ({})", alert_text(a), te.reason),
            None => format!("connection failed: {te}"),
        },
        E::ApplicationClosed(close) => format!("the server closed the connection: {close}"),
        E::TimedOut => {
            "no answer from the server (timed out): is it running and reachable over UDP?".into()
        }
        E::Reset => "the server reset the connection (it may have restarted)".into(),
        other => format!("connection failed: {other}"),
    }
}

fn alert_text(alert: u8) -> String {
    match alert {
        116 => "no client certificate".into(),
        48 => "unknown CA".into(),
        42 => "bad certificate".into(),
        44 => "certificate revoked".into(),
        45 => "certificate expired".into(),
        46 => "certificate unknown".into(),
        49 => "access denied".into(),
        51 => "signature check failed (certificate from another CA?)".into(),
        120 => "no common application protocol (ALPN)".into(),
        other => format!("TLS alert {other}"),
    }
}

/// Every certificate of the PEM file at `path`, as a trust store (the cluster CA).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(cert_err)?;
    }
    Ok(roots)
}

/// The certificate chain in the PEM file at `path`; an error if it holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError::Certificate(format!("{}: {e} (run `quickv certs`)", path.display()))
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{}: no certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Certificate(format!("{}: {e} (run `quickv certs`)", path.display())))
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}
