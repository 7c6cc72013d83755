//! The peer link's client side: the certificate a server presents when it dials its peer, and the
//! check that the peer it reached holds the pair's server certificate (not merely one from the
//! same CA). Both read the files at each dial, so a redial after a rotation uses the new ones.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::{
    cert_err, load_certs, load_key, load_roots, own_server_cert, quic_client_config, CertPaths,
    PEER_ALPN,
};
use crate::error::Result;

/// The config a server dials its peer with.
///
/// It presents the pair's server certificate and accepts, from the other side, only the pair's
/// server certificate (the one on disk now, or the one loaded when this config was built), chained
/// to the CA and valid for the address dialed: a client certificate of the same CA cannot pose as
/// the backup. The certificate and CA are read from disk at each dial, so a redial after a rotation
/// (`quickv certs renew` + SIGHUP) presents and expects the new ones.
pub(crate) fn client_config(
    paths: &CertPaths,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PairServerVerifier::new(paths, provider.clone())?;
    let identity = PairIdentity::new(paths, provider.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cert_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(identity));
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(quic_client_config(tls, idle_timeout, keep_alive)?)
}

/// Checks the backup's certificate: the CA chain and name as usual, then that it *is* the pair's
/// server certificate.
#[derive(Debug)]
struct PairServerVerifier {
    /// Where to read the current CA and server certificate from.
    paths: CertPaths,
    /// For building a verifier from the current CA bundle.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Verifier from the CA as it was when the config was built (used if the file is unreadable).
    at_start: Arc<rustls::client::WebPkiServerVerifier>,
    /// The server certificate as it was when the config was built.
    own_at_start: CertificateDer<'static>,
}

impl PairServerVerifier {
    fn new(paths: &CertPaths, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self> {
        Ok(PairServerVerifier {
            at_start: Self::webpki(paths, &provider)?,
            own_at_start: own_server_cert(paths)?,
            paths: paths.clone(),
            provider,
        })
    }

    fn webpki(
        paths: &CertPaths,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(load_roots(&paths.ca_cert())?),
            provider.clone(),
        )
        .build()
        .map_err(cert_err)
    }

    fn current(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        Self::webpki(&self.paths, &self.provider).unwrap_or_else(|_| self.at_start.clone())
    }
}

impl rustls::client::danger::ServerCertVerifier for PairServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified =
            self.current()
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let on_disk = own_server_cert(&self.paths).ok();
        if **end_entity == *self.own_at_start || on_disk.is_some_and(|c| *c == **end_entity) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "the peer's certificate is not this pair's server certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.at_start.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.at_start.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.at_start.supported_verify_schemes()
    }
}

/// Presents the pair's server certificate as it is on disk at each dial (the one loaded when the
/// config was built if the files cannot be read or do not match).
#[derive(Debug)]
struct PairIdentity {
    /// Where `server.pem`/`server.key` are.
    paths: CertPaths,
    /// To load the key.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The identity when the config was built.
    at_start: Arc<rustls::sign::CertifiedKey>,
}

impl PairIdentity {
    fn new(paths: &CertPaths, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self> {
        Ok(PairIdentity {
            at_start: Arc::new(Self::load(paths, &provider)?),
            paths: paths.clone(),
            provider,
        })
    }

    fn load(
        paths: &CertPaths,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<rustls::sign::CertifiedKey> {
        let chain = load_certs(&paths.server_cert())?;
        let key = load_key(&paths.server_key())?;
        rustls::sign::CertifiedKey::from_der(chain, key, provider).map_err(cert_err)
    }
}

impl rustls::client::ResolvesClientCert for PairIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            Self::load(&self.paths, &self.provider)
                .map(Arc::new)
                .unwrap_or_else(|_| self.at_start.clone()),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}
