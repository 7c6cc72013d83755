//! The cluster's identities: client certificates that carry a role, revocation (a CRL in the
//! certificate directory) and renewal of the server certificate.
//!
//! [`crate::tls`] makes the CA and the first certificates and builds the rustls configs; this module
//! manages what an operator does afterwards (`quickv certs client|revoke|renew`), and tells a server
//! which [`Access`] a presented certificate grants.
//!
//! # Where the role lives
//!
//! A client certificate carries its role as one *organizational unit* in its subject:
//! `OU=quickv-role=read|write|admin` (see [`ROLE_UNIT_PREFIX`]); the common name is the client's
//! name. `openssl x509 -noout -subject -in NAME.pem` shows it. The CA signs the subject, so a
//! client cannot change its role without a new certificate from the CA key. Identities fail
//! closed: a certificate *without* a role unit is refused (unless the server runs with
//! `--allow-roleless`, for certificates made before roles existed, which then count as `admin`);
//! a role unit with an unknown value is refused, never guessed; and a server certificate
//! ([`is_server_certificate`]) is the pair's identity on the peer link only, never a client.
//!
//! # Revocation
//!
//! `crl.pem` holds one CRL signed by the CA key. [`revoke`] reads `NAME.pem`, adds its serial number
//! to the list (keeping every earlier entry) and writes the CRL again with a higher CRL number.
//! Servers load it at start and on SIGHUP ([`load_crls`]).

use std::path::PathBuf;

use rcgen::{
    CertificateRevocationListParams, ExtendedKeyUsagePurpose, Issuer, KeyIdMethod, KeyPair,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::error::{Error, Result};
use crate::tls;
use quickv_net::tls::{load_certs, CertPaths};

pub use crate::tls::role::{role_unit, Access, ROLE_UNIT_PREFIX};
/// File names a client certificate may not take: they belong to the CA, the server and the CRL.
const RESERVED_NAMES: [&str; 3] = ["ca", "server", "crl"];
/// Longest client name, in bytes (it becomes a file name and a common name).
const MAX_NAME_BYTES: usize = 64;

/// The role a (chain-verified) client certificate carries in its subject: `None` when it has no
/// role unit (the server refuses it unless told to take it as `admin`, see `--allow-roleless`).
/// Errors are sentences for the log and the close reason.
pub fn access_of(cert: &CertificateDer<'_>) -> Result<Option<Access>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("cannot read the client certificate: {e}"))?;
    let mut found = None;
    for unit in parsed.subject().iter_organizational_unit() {
        let Ok(text) = unit.as_str() else { continue };
        if let Some(role) = text.strip_prefix(ROLE_UNIT_PREFIX) {
            let access = role
                .parse::<Access>()
                .map_err(|_| format!("the client certificate carries an unknown role {role:?}"))?;
            if found.is_some_and(|f| f != access) {
                return Err("the client certificate carries two different roles".into());
            }
            found = Some(access);
        }
    }
    Ok(found)
}

/// Whether `cert` is a server certificate (extended key usage `serverAuth`): the pair's
/// `server.pem`, current or replaced. Such a certificate is the pair's identity on the peer link
/// and is never taken as a client.
pub fn is_server_certificate(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    matches!(parsed.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth)
}

/// The certificate and key files of client `name` in `paths`.
pub fn client_files(paths: &CertPaths, name: &str) -> (PathBuf, PathBuf) {
    (
        paths.dir.join(format!("{name}.pem")),
        paths.dir.join(format!("{name}.key")),
    )
}

/// Issues `NAME.pem`/`NAME.key` in the certificate directory: a client certificate for `name` with
/// role `access`, signed by the cluster CA (which must be there, with its key). An existing pair
/// is kept unless `force`; a replaced certificate is revoked (its serial added to `crl.pem`), so
/// that a leaked or higher-role old copy does not stay valid. Returns the two paths and the
/// revocation of the replaced certificate, if there was one.
pub fn issue_client(paths: &CertPaths, name: &str, access: Access, force: bool) -> Result<Issued> {
    check_name(name)?;
    let (cert, key) = client_files(paths, name);
    if !force && (cert.exists() || key.exists()) {
        return Err(Error::Config(format!(
            "{} exists; pass --force to replace it (the replaced certificate is then revoked)",
            cert.display()
        )));
    }
    let replaced = match cert.exists() {
        true => Some(first_cert(&cert)?),
        false => None,
    };
    let issuer = ca_issuer(paths)?;
    let now = time::OffsetDateTime::now_utc();
    let validity = (
        now - time::Duration::days(tls::BACKDATE_DAYS),
        now + time::Duration::days(tls::LEAF_VALIDITY_DAYS),
    );
    tls::sign_leaf(
        &issuer,
        tls::Leaf {
            common_name: name,
            role_unit: Some(&role_unit(access)),
            sans: &[],
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        },
        &cert,
        &key,
    )?;
    let revoked = match replaced {
        Some(old) => Some(revoke_serial(paths, &serial_of(&old)?)?),
        None => None,
    };
    Ok(Issued { cert, key, revoked })
}

/// What [`issue_client`] did.
#[derive(Debug)]
pub struct Issued {
    /// The certificate written.
    pub cert: PathBuf,
    /// The key written (mode 0600).
    pub key: PathBuf,
    /// The revocation of the certificate it replaced (`--force` over an existing one).
    pub revoked: Option<Revoked>,
}

/// What [`revoke`] did.
#[derive(Debug)]
pub struct Revoked {
    /// The CRL file written.
    pub crl: PathBuf,
    /// Serial number of the revoked certificate, hex.
    pub serial: String,
    /// False when the serial was already in the list (the CRL is written again all the same).
    pub newly: bool,
    /// Entries in the list now.
    pub entries: usize,
}

/// Adds the certificate `NAME.pem` of the certificate directory to `crl.pem` (created if absent).
/// `server` is refused with the way out: the current `server.pem` is the pair's identity in use
/// (revoking it would cut the peer link); `quickv certs renew` replaces it and revokes the old one,
/// and [`revoke_cert_file`] revokes any other copy.
pub fn revoke(paths: &CertPaths, name: &str) -> Result<Revoked> {
    if name == "server" {
        return Err(Error::Config(
            "server.pem is the certificate both servers use now; revoking it would cut the peer \
             link. Run `quickv certs renew` (it issues a new one and revokes the old), or revoke an \
             old copy with `revoke --cert FILE` or `revoke --serial HEX`"
                .into(),
        ));
    }
    check_name(name)?;
    let (cert_path, _) = client_files(paths, name);
    if !cert_path.exists() {
        return Err(Error::Config(format!(
            "no certificate named {name} in {} ({} is missing)",
            paths.dir.display(),
            cert_path.display()
        )));
    }
    revoke_cert_file(paths, &cert_path)
}

/// Adds the certificate in the PEM file `cert` (its first one) to `crl.pem`: for a copy that is
/// no longer `NAME.pem` (a replaced `server.pem`, a certificate found elsewhere).
pub fn revoke_cert_file(paths: &CertPaths, cert: &std::path::Path) -> Result<Revoked> {
    let cert = first_cert(cert)?;
    revoke_serial(paths, &serial_of(&cert)?)
}

/// Adds the serial number `serial` (big-endian bytes) to `crl.pem`.
pub fn revoke_serial(paths: &CertPaths, serial: &[u8]) -> Result<Revoked> {
    let serial = trim(serial).to_vec();
    if serial.is_empty() {
        return Err(Error::Config(
            "serial number 0 is not a certificate's".into(),
        ));
    }
    revoke_serials(paths, std::slice::from_ref(&serial)).map(|(crl, newly, entries)| Revoked {
        crl,
        serial: hex(&serial),
        newly: newly > 0,
        entries,
    })
}

/// Parses a serial number as printed by `openssl x509 -serial` or by `revoke`: hex digits,
/// optionally with a `serial=` or `0x` prefix and `:` separators.
pub fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bad = || {
        Error::Config(format!(
            "serial {text:?}: expected hex digits (as `openssl x509 -noout -serial` prints)"
        ))
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = match digits.len() % 2 {
        0 => digits,
        _ => format!("0{digits}"),
    };
    let bytes = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>>>()?;
    Ok(trim(&bytes).to_vec())
}

/// Adds `serials` (big-endian bytes) to the CRL; returns the file, how many were new, and the
/// number of entries. Public for the benchmark that measures a long CRL.
pub fn revoke_serials(paths: &CertPaths, serials: &[Vec<u8>]) -> Result<(PathBuf, usize, usize)> {
    let issuer = ca_issuer(paths)?;
    let now = time::OffsetDateTime::now_utc();
    let (mut revoked, previous_number) = existing_entries(paths)?;
    let mut newly = 0;
    for serial in serials {
        if revoked
            .iter()
            .any(|r| trim(r.serial_number.as_ref()) == trim(serial))
        {
            continue;
        }
        newly += 1;
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(trim(serial)),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let entries = revoked.len();
    // Seconds since the epoch, and always above the previous number (two revocations within a
    // second, or a clock set back): servers refuse a CRL whose number goes down.
    let number = u64::try_from(now.unix_timestamp())
        .unwrap_or_default()
        .max(previous_number.map_or(0, |n| n.saturating_add(1)));
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::days(tls::BACKDATE_DAYS),
        // Servers do not enforce next_update (see tls::client_verifier); a far date keeps other
        // tools that read the file from calling it stale.
        next_update: now + time::Duration::days(tls::CA_VALIDITY_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .map_err(tls::cert_err)?;
    let pem = crl.pem().map_err(tls::cert_err)?;
    tls::write_file(&paths.crl(), pem.as_bytes(), false)?;
    Ok((paths.crl(), newly, entries))
}

/// Re-issues `server.pem`/`server.key` with a new key and the same names (common name and SANs),
/// signed by the cluster CA, then revokes the replaced certificate (a renewal is what one does
/// when `server.key` may have leaked, so the old pair must stop working everywhere). Servers pick
/// both up on SIGHUP or at the next file poll. Returns the names and the old certificate's
/// revocation.
pub fn renew_server(paths: &CertPaths) -> Result<(Vec<String>, Revoked)> {
    let current = tls::own_server_cert(paths)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&current)
        .map_err(|e| Error::Certificate(format!("{}: {e}", paths.server_cert().display())))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Some(ip) = ip_of(ip) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("quickv server")
        .to_string();
    let issuer = ca_issuer(paths)?;
    let now = time::OffsetDateTime::now_utc();
    tls::sign_leaf(
        &issuer,
        tls::Leaf {
            common_name: &cn,
            role_unit: None,
            sans: &names,
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity: (
                now - time::Duration::days(tls::BACKDATE_DAYS),
                now + time::Duration::days(tls::LEAF_VALIDITY_DAYS),
            ),
        },
        &paths.server_cert(),
        &paths.server_key(),
    )?;
    let revoked = revoke_serial(paths, &serial_of(&current)?)?;
    Ok((names, revoked))
}

/// The CRLs of the certificate directory (none when `crl.pem` is absent); an error when the file
/// holds anything but valid CRLs, or none at all (see [`tls::Revocation`]).
pub fn load_crls(paths: &CertPaths) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    Ok(tls::Revocation::load(paths, None, false)?.crls())
}

/// The serial number of a certificate, big-endian, without leading zero bytes.
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("cannot read certificate: {e}")))?;
    Ok(trim(parsed.raw_serial()).to_vec())
}

/// The entries of `crl.pem` (none when absent) and its highest CRL number.
fn existing_entries(paths: &CertPaths) -> Result<(Vec<RevokedCertParams>, Option<u64>)> {
    let mut out = Vec::new();
    let mut number = None;
    for der in load_crls(paths)? {
        let (_, crl) = x509_parser::parse_x509_crl(&der)
            .map_err(|e| Error::Certificate(format!("{}: {e}", paths.crl().display())))?;
        if let Some(n) = crl.crl_number().and_then(|n| u64::try_from(n).ok()) {
            number = number.max(Some(n));
        }
        for r in crl.iter_revoked_certificates() {
            out.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(trim(r.raw_serial())),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    Ok((out, number))
}

/// The first certificate of a PEM file.
fn first_cert(path: &std::path::Path) -> Result<CertificateDer<'static>> {
    load_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Certificate(format!("{}: no certificate", path.display())))
}

fn ca_issuer(paths: &CertPaths) -> Result<Issuer<'static, KeyPair>> {
    let key_path = paths.ca_key();
    if !key_path.exists() {
        return Err(Error::Certificate(format!(
            "{} is missing: issuing, revoking and renewing need the CA key (run this where `quickv certs` made the CA)",
            key_path.display()
        )));
    }
    let key = KeyPair::from_pem(&tls::read_text(&key_path)?).map_err(tls::cert_err)?;
    Issuer::from_ca_cert_pem(&tls::read_text(&paths.ca_cert())?, key).map_err(tls::cert_err)
}

fn check_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !ok_chars || name.starts_with('.') {
        return Err(Error::Config(format!(
            "client name {name:?}: use 1-{MAX_NAME_BYTES} letters, digits, '-', '_' or '.' (not first)"
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(Error::Config(format!(
            "client name {name:?} is reserved for the CA, the server certificate or the CRL"
        )));
    }
    Ok(())
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn trim(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn roles_ride_in_the_subject_and_revocation_accumulates() {
        let dir = tempfile::tempdir().expect("tempdir");
        tls::generate(dir.path(), &["db.example".into()], false).expect("generate");
        let paths = CertPaths::new(dir.path());
        let first = |p: &Path| {
            load_certs(p)
                .expect("load")
                .into_iter()
                .next()
                .expect("one")
        };
        assert_eq!(
            access_of(&first(&paths.client_cert())),
            Ok(Some(Access::Admin)),
            "the default client stays admin"
        );
        assert_eq!(access_of(&first(&paths.server_cert())), Ok(None));
        assert!(is_server_certificate(&first(&paths.server_cert())));
        assert!(!is_server_certificate(&first(&paths.client_cert())));
        for access in [Access::Read, Access::Write, Access::Admin] {
            let name = format!("app-{access}");
            let issued = issue_client(&paths, &name, access, false).expect("issue");
            assert!(issued.revoked.is_none());
            assert_eq!(access_of(&first(&issued.cert)), Ok(Some(access)));
        }
        assert!(issue_client(&paths, "app-read", Access::Read, false).is_err());
        assert!(issue_client(&paths, "server", Access::Read, false).is_err());
        assert!(issue_client(&paths, "../x", Access::Read, false).is_err());

        let a = revoke(&paths, "app-read").expect("revoke");
        assert!(a.newly);
        assert_eq!(a.entries, 1);
        let b = revoke(&paths, "app-write").expect("revoke");
        assert_eq!(b.entries, 2, "earlier entries are kept");
        let again = revoke(&paths, "app-write").expect("revoke again");
        assert!(!again.newly);
        assert_eq!(again.entries, 2);
        assert_eq!(load_crls(&paths).expect("crl").len(), 1);

        let before = first(&paths.server_cert());
        let (names, old) = renew_server(&paths).expect("renew");
        assert_eq!(old.serial, hex(&serial_of(&before).expect("serial")));
        assert_eq!(
            old.entries, 3,
            "renew revokes the replaced server certificate"
        );
        assert_eq!(
            parse_serial(&format!("serial={}", old.serial.to_uppercase())).ok(),
            serial_of(&before).ok()
        );
        assert!(names.contains(&"db.example".to_string()));
        assert!(names.contains(&"127.0.0.1".to_string()));
        assert_ne!(before, first(&paths.server_cert()));
    }
}
