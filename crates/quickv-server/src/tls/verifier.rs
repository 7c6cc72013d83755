//! The client-certificate verifier in force, shared by everything that verifies a client.
//!
//! quinn binds a server config (and so its verifier) to a connection at its first Initial, and
//! rustls verifies the client's certificate only when the client sends it — which a client may
//! delay. A verifier fixed at config-building time would let a handshake that straddles a CRL
//! reload be judged by the old CRL. So the verifiers handed to rustls ([`Trust::verifier`]) are
//! thin: each verification reads the [`Current`] one from the shared [`Trust`], which a reload
//! replaces in one step ([`Trust::install`]). The same `Current` re-checks connections when they
//! register and at every reload (`server::auth`), so one CRL is in force everywhere at once.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::crl::Revocation;
use crate::error::{Error, Result};
use quickv_net::tls::{load_roots, CertPaths};

/// The verifier and CRLs in force.
#[derive(Debug)]
pub struct Current {
    /// Chains to a CA of `ca.pem` and is not revoked by [`Current::revocation`].
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The CRLs it was built with (what the next reload is compared with).
    pub revocation: Revocation,
}

impl Current {
    /// Reads `ca.pem` and `crl.pem` once and builds the verifier; `previous` is the CRL in force
    /// (see [`Revocation::load`]).
    pub fn load(
        paths: &CertPaths,
        previous: Option<&Revocation>,
        allow_crl_removal: bool,
    ) -> Result<Current> {
        let revocation = Revocation::load(paths, previous, allow_crl_removal)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(load_roots(&paths.ca_cert())?);
        // Only end entities are checked, and a certificate of a CA that published no CRL counts as
        // not revoked (a bundle may hold a second CA during a rotation); next_update is not
        // enforced (an old CRL still revokes).
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .with_crls(revocation.crls())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
        Ok(Current {
            verifier,
            revocation,
        })
    }
}

/// The shared slot holding the [`Current`] verifier; cheap to clone.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Replaced whole by [`Trust::install`].
    slot: Arc<RwLock<Arc<Current>>>,
}

impl Trust {
    /// A trust starting with `current`.
    pub fn new(current: Current) -> Trust {
        Trust {
            slot: Arc::new(RwLock::new(Arc::new(current))),
        }
    }

    /// The verifier and CRLs in force now.
    pub fn current(&self) -> Arc<Current> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `current` in force for every verification from now on, handshakes in progress
    /// included.
    pub fn install(&self, current: Current) {
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(current);
    }

    /// A verifier for a rustls config that verifies with whatever is in force at the moment of
    /// verification. `hints` (built from the same files as the config) supplies the CA names
    /// offered to clients and the signature checks, which do not depend on the CRL.
    pub fn verifier(&self, hints: &Current) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Following {
            trust: self.clone(),
            hints: hints.verifier.clone(),
        })
    }
}

/// A rustls client-certificate verifier that defers to the [`Current`] one of a [`Trust`].
#[derive(Debug)]
struct Following {
    /// Where the verifier in force is read at each verification.
    trust: Trust,
    /// CA names and signature checks (fixed for the life of the config).
    hints: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Following {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.hints.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.hints.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.hints.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.hints.supported_verify_schemes()
    }
}
