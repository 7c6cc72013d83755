//! The peer link's client side: the certificate a server presents when it dials its peer, and the
//! check that the peer it reached holds the pair's server certificate (not merely one from the
//! same CA) and that it is not revoked. Both read the files at each dial, so a redial after a
//! rotation or a revocation uses the new ones.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::{cert_err, own_server_cert, Revocation};
use crate::error::Result;
use quickv_net::tls::{load_certs, load_key, load_roots, quic_client_config, CertPaths};
use quickv_proto::PEER_ALPN;

/// The config a server dials its peer with.
///
/// It presents the pair's server certificate and accepts, from the other side, only the pair's
/// server certificate as it is on disk at the dial, chained to the CA, valid for the address
/// dialed and not revoked by `crl.pem`: a client certificate of the same CA cannot pose as the
/// backup, and a replaced `server.pem` (which `quickv certs renew` revokes) is refused from the
/// first dial after the files changed. The certificate, CA and CRL are read from disk at each
/// dial; a CRL that vanished, emptied or went backwards is ignored in favour of the last good one
/// (see [`Revocation`]).
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

/// Checks the backup's certificate: the CA chain, name and CRL as usual, then that it *is* the
/// pair's server certificate.
#[derive(Debug)]
struct PairServerVerifier {
    /// Where to read the current CA, CRL and server certificate from.
    paths: CertPaths,
    /// For building a verifier from the current CA bundle.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The last verifier built from good files (used if a file is unreadable or a CRL is refused).
    last_good: Mutex<Arc<rustls::client::WebPkiServerVerifier>>,
    /// The CRLs it was built with: the next CRL must follow them (never lower, never gone).
    revocation: Mutex<Revocation>,
    /// The server certificate as last read from disk (used if the file is unreadable).
    own_last: Mutex<CertificateDer<'static>>,
}

impl PairServerVerifier {
    fn new(paths: &CertPaths, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self> {
        let revocation = Revocation::load(paths, None, false)?;
        Ok(PairServerVerifier {
            last_good: Mutex::new(Self::webpki(paths, &provider, &revocation)?),
            revocation: Mutex::new(revocation),
            own_last: Mutex::new(own_server_cert(paths)?),
            paths: paths.clone(),
            provider,
        })
    }

    fn webpki(
        paths: &CertPaths,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        revocation: &Revocation,
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(load_roots(&paths.ca_cert())?),
            provider.clone(),
        )
        .with_crls(revocation.crls())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(cert_err)
    }

    /// The verifier from the files as they are now, or the last good one.
    fn current(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut revocation = self
            .revocation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut last_good = self
            .last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = Revocation::load(&self.paths, Some(&revocation), false).and_then(|next| {
            let verifier = Self::webpki(&self.paths, &self.provider, &next)?;
            Ok((next, verifier))
        });
        if let Ok((next, verifier)) = fresh {
            *revocation = next;
            *last_good = verifier;
        }
        last_good.clone()
    }

    /// The verifier last built, without reading the files (signature checks do not depend on them).
    fn last(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        self.last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pair's server certificate as on disk now (the last one read if it cannot be read).
    fn own(&self) -> CertificateDer<'static> {
        let mut own = self.own_last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(on_disk) = own_server_cert(&self.paths) {
            *own = on_disk;
        }
        own.clone()
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
        if **end_entity == *self.own() {
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
        self.last().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.last().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.last().supported_verify_schemes()
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
