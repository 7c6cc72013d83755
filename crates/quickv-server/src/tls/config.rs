//! The rustls/quinn configs a server builds: its endpoint (both ALPNs), the HTTPS gateway, and the
//! client side of the peer link; with the helpers that read a connection's certificates. Above
//! certificate generation; the client-certificate verifier that follows reloads is in
//! [`super::verifier`].

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;

use super::generate::cert_err;
use super::{peer, Current};
use crate::error::{Error, Result};
use quickv_net::tls::{load_certs, load_key, CertPaths, Identity};
use quickv_proto::{ALPN, PEER_ALPN};

/// Transport knobs shared by the server endpoint configs.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// Concurrent bidirectional streams the remote side may open.
    pub max_streams: u32,
    /// Silence after which the connection is dropped.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets.
    pub keep_alive: Duration,
}

impl TransportLimits {
    fn transport_config(&self) -> Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_streams.into());
        t.max_concurrent_uni_streams(0u32.into());
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Config(format!("idle timeout {:?} is too large", self.idle_timeout))
        })?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(self.keep_alive));
        Ok(t)
    }
}

/// The verifier of client certificates: chains to a CA of `ca.pem` (a bundle may hold several,
/// for a CA rotation) and is not in `crl.pem` (which must be a CRL, or absent; see [`super::Revocation`]).
///
/// Only the end-entity certificate is checked against the CRL; a certificate of a CA that issued no
/// CRL counts as not revoked (so a bundle with a second CA works), and `next_update` is not enforced
/// (an old CRL still revokes). A server keeps one [`super::Trust`] instead, which follows reloads.
pub fn client_verifier(paths: &CertPaths) -> Result<Arc<dyn ClientCertVerifier>> {
    Ok(Current::load(paths, None, false)?.verifier)
}

/// The server endpoint config: TLS 1.3, mandatory client certificates from the CA (not revoked),
/// both ALPNs; its verifier is fixed at the files read now (a server uses [`server_config_with`]
/// and a [`super::Trust`]).
pub fn server_config(paths: &CertPaths, limits: TransportLimits) -> Result<quinn::ServerConfig> {
    let current = Current::load(paths, None, false)?;
    let verifier = current.verifier.clone();
    server_config_with(paths, limits, verifier)
}

/// The server endpoint config with the client-certificate verifier `verifier` (a server passes
/// [`super::Trust::verifier`], so handshakes in progress follow reloads). Called again on reload; quinn
/// gives new connections the new config.
pub fn server_config_with(
    paths: &CertPaths,
    limits: TransportLimits,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(&paths.server_cert())?;
    let key = load_key(&paths.server_key())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cert_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(cert_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec(), PEER_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(cert_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(limits.transport_config()?));
    Ok(cfg)
}

/// The HTTP gateway's TLS config (`--http-tls`): the pair's server certificate, client
/// certificates from the cluster CA mandatory as on the QUIC side (checked by `verifier`), ALPN
/// `http/1.1`. TLS 1.3 only unless `tls12` (`--tls12`, for old HTTP tools): under TLS 1.2 the
/// client certificate, with its name and role, travels in clear.
pub fn http_server_config(
    paths: &CertPaths,
    verifier: Arc<dyn ClientCertVerifier>,
    tls12: bool,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls12 {
        true => &[&rustls::version::TLS13, &rustls::version::TLS12],
        false => &[&rustls::version::TLS13],
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(cert_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&paths.server_cert())?,
            load_key(&paths.server_key())?,
        )
        .map_err(cert_err)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// A client endpoint config presenting `identity`, trusting only the cluster CA.
///
/// A server dialing its peer ([`Identity::Peer`]) goes through `peer::client_config`, which also
/// demands that the remote holds the pair's server certificate; clients and tools get
/// [`quickv_net::tls::client_config`].
pub fn client_config(
    paths: &CertPaths,
    identity: Identity,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig> {
    match identity {
        Identity::Peer => peer::client_config(paths, idle_timeout, keep_alive),
        Identity::Client => Ok(quickv_net::tls::client_config(
            paths,
            identity,
            idle_timeout,
            keep_alive,
        )?),
    }
}

/// The certificate chain a remote presented on `conn`, if any.
pub fn peer_certificates(conn: &quinn::Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}

/// Reads the first certificate of a PEM file (the pair's own server certificate, to recognise the peer).
pub fn own_server_cert(paths: &CertPaths) -> Result<CertificateDer<'static>> {
    load_certs(&paths.server_cert())?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::Certificate(format!("{}: no certificate", paths.server_cert().display()))
        })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::tls::generate;

    #[test]
    fn generate_writes_private_keys_0600_and_keeps_existing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate(
            dir.path(),
            &["db1.example".into(), "10.1.2.3".into()],
            false,
        )
        .expect("generate");
        assert_eq!(first.written.len(), 6);
        let paths = CertPaths::new(dir.path());
        assert!(paths.complete());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [paths.ca_key(), paths.server_key(), paths.client_key()] {
                let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        let before = fs::read(paths.server_cert()).expect("read");
        let second = generate(dir.path(), &[], false).expect("again");
        assert!(second.written.is_empty());
        assert_eq!(before, fs::read(paths.server_cert()).expect("read"));
        let forced = generate(dir.path(), &[], true).expect("force");
        assert_eq!(forced.written.len(), 6);
        assert_ne!(before, fs::read(paths.server_cert()).expect("read"));
        // The configs build from what was written.
        let limits = TransportLimits {
            max_streams: 8,
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
        };
        server_config(&paths, limits).expect("server config");
        client_config(
            &paths,
            Identity::Client,
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .expect("client config");
    }
}
