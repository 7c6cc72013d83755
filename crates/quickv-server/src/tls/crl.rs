//! Loading `crl.pem` so that revocation fails closed.
//!
//! A CRL only ever grows: `quickv certs revoke` rewrites it with every earlier entry and a higher
//! CRL number. So a `crl.pem` that is suddenly gone, empty, not a CRL (`cp mallory.pem crl.pem`),
//! or older than the one in force is a mistake, and taking it at face value would lift every
//! revocation at once. [`Revocation::load`] therefore compares the file with the CRLs in force:
//!
//! - a file with anything but `X509 CRL` blocks, or a block that does not parse, is an error;
//! - a file with no CRL at all (empty, only text) is an error unless removal is allowed;
//! - an absent file is fine while no CRL was ever loaded, and an error afterwards unless removal is
//!   allowed (`--allow-crl-removal`);
//! - an issuer whose CRL was in force must still have one, with a CRL number at least as high
//!   (never lower, even with removal allowed: an old copy must not undo later revocations).
//!
//! The caller keeps the previous [`Revocation`] (and the verifiers built from it) when loading
//! fails. Entries and numbers are shown in `status.certificates`.

use std::collections::BTreeMap;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::CertificateRevocationListDer;

use crate::error::{Error, Result};
use quickv_net::tls::CertPaths;
use quickv_proto::status::CrlNumber;

/// The CRLs in force, and what the next load is compared with.
#[derive(Clone, Debug, Default)]
pub struct Revocation {
    /// The CRLs as DER, for the verifiers.
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Per issuer (its DER-encoded name): the highest CRL number loaded and the entries listed.
    issuers: BTreeMap<Vec<u8>, IssuerCrl>,
}

/// What one issuer's CRL said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IssuerCrl {
    /// The CRL number, big-endian without leading zero bytes (empty for a CRL without one).
    number: Vec<u8>,
    /// The CRL number in decimal, for messages and `status`.
    number_text: String,
    /// Revoked certificates listed.
    entries: usize,
}

impl Revocation {
    /// Loads `crl.pem` of `paths`, judged against `previous` (the CRLs in force; `None` at start).
    /// `allow_removal` lets an absent or empty file lift the CRLs in force.
    pub fn load(
        paths: &CertPaths,
        previous: Option<&Revocation>,
        allow_removal: bool,
    ) -> Result<Revocation> {
        let path = paths.crl();
        let had_crl = previous.is_some_and(|p| !p.issuers.is_empty());
        let next = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if had_crl && !allow_removal {
                    return Err(Error::Certificate(format!(
                        "{} is gone, but a CRL was in force; keeping it (put the file back, or \
                         start the server with --allow-crl-removal to lift revocation)",
                        path.display()
                    )));
                }
                Revocation::default()
            }
            Err(e) => return Err(Error::file(&path, e)),
            Ok(bytes) => {
                let next = Self::parse(&bytes)
                    .map_err(|why| Error::Certificate(format!("{}: {why}", path.display())))?;
                if next.issuers.is_empty() && !allow_removal {
                    return Err(Error::Certificate(format!(
                        "{} holds no CRL (empty or no X509 CRL block){}",
                        path.display(),
                        if had_crl {
                            "; keeping the CRL in force"
                        } else {
                            "; remove the file if nothing is revoked"
                        }
                    )));
                }
                next
            }
        };
        if let Some(previous) = previous {
            next.follows(previous, allow_removal)
                .map_err(|why| Error::Certificate(format!("{}: {why}", path.display())))?;
        }
        Ok(next)
    }

    /// The CRLs, for building verifiers.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.clone()
    }

    /// Revoked certificates listed, over every issuer.
    pub fn entries(&self) -> usize {
        self.issuers.values().map(|c| c.entries).sum()
    }

    /// `crl_entries` and `crl_number` for `status.certificates` (the number of the highest CRL,
    /// `null` without one).
    pub fn status(&self) -> (usize, Option<CrlNumber>) {
        let number = self
            .issuers
            .values()
            .max_by(|a, b| compare_numbers(&a.number, &b.number))
            .map(|c| match c.number_text.parse::<u64>() {
                Ok(n) => CrlNumber::Number(n),
                Err(_) => CrlNumber::Text(c.number_text.clone()),
            });
        (self.entries(), number)
    }

    /// Parses the PEM text: only `X509 CRL` blocks, each a valid CRL.
    fn parse(bytes: &[u8]) -> std::result::Result<Revocation, String> {
        let mut out = Revocation::default();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            let (kind, der) = section.map_err(|e| format!("not valid PEM: {e}"))?;
            if kind != SectionKind::Crl {
                return Err(format!(
                    "holds a {kind:?} block, not a CRL (only X509 CRL blocks belong in it)"
                ));
            }
            let (_, crl) = x509_parser::parse_x509_crl(&der)
                .map_err(|e| format!("a CRL block does not parse: {e}"))?;
            let loaded = IssuerCrl {
                number: crl
                    .crl_number()
                    .map(|n| trim(&n.to_bytes_be()).to_vec())
                    .unwrap_or_default(),
                number_text: crl
                    .crl_number()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "0".into()),
                entries: crl.iter_revoked_certificates().count(),
            };
            let issuer = crl.issuer().as_raw().to_vec();
            let slot = out.issuers.entry(issuer).or_default();
            if compare_numbers(&loaded.number, &slot.number).is_ge() {
                slot.number = loaded.number;
                slot.number_text = loaded.number_text;
            }
            slot.entries += loaded.entries;
            out.crls.push(CertificateRevocationListDer::from(der));
        }
        Ok(out)
    }

    /// Checks that `self` may replace `previous`: no issuer's CRL number goes down, and no
    /// issuer's CRL disappears unless `allow_removal`.
    fn follows(
        &self,
        previous: &Revocation,
        allow_removal: bool,
    ) -> std::result::Result<(), String> {
        for (issuer, old) in &previous.issuers {
            match self.issuers.get(issuer) {
                None if allow_removal => {}
                None => {
                    return Err(format!(
                        "the CRL number {} ({} entries) in force is missing from the new file; \
                         keeping it (--allow-crl-removal lifts it)",
                        old.number_text, old.entries
                    ))
                }
                Some(new) if compare_numbers(&new.number, &old.number).is_lt() => {
                    return Err(format!(
                        "CRL number {} is lower than the {} in force (an older crl.pem?); keeping \
                         the newer one",
                        new.number_text, old.number_text
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Orders two big-endian unsigned numbers without leading zero bytes.
fn compare_numbers(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `bytes` without leading zero bytes.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
