//! Certificate generation (rcgen): the CA, the pair's server certificate, client certificates, and
//! the file writing they share. Below [`crate::pki`], which manages identities afterwards with
//! these pieces; nothing here knows about servers or configs.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::role::{role_unit, Access};
use crate::error::{Error, Result};
use quickv_net::tls::CertPaths;

/// Validity of the generated CA, in days from generation.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of generated server and client certificates, in days from generation.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Backdating of `not_before`, in days, to tolerate small clock differences between hosts.
pub const BACKDATE_DAYS: i64 = 1;

/// What [`generate`] did, for the CLI to print.
#[derive(Debug)]
pub struct Generated {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files that existed and were kept (no `--force`).
    pub kept: Vec<PathBuf>,
}

/// Writes a CA, a server/peer certificate and a client certificate into `dir`.
///
/// The server certificate carries the SANs `localhost`, `127.0.0.1`, `::1` and every name in `sans`
/// (IP addresses become IP SANs). Existing files are kept unless `force`; if the CA is kept, new leaf
/// certificates are signed with the existing CA key. Private keys are written with mode 0600.
pub fn generate(dir: &Path, sans: &[String], force: bool) -> Result<Generated> {
    prepare_dir(dir)?;
    let paths = CertPaths::new(dir);
    let mut out = Generated {
        written: Vec::new(),
        kept: Vec::new(),
    };
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(BACKDATE_DAYS);

    let issuer = if !force && paths.ca_cert().exists() && paths.ca_key().exists() {
        out.kept.extend([paths.ca_cert(), paths.ca_key()]);
        let key = KeyPair::from_pem(&read_text(&paths.ca_key())?).map_err(cert_err)?;
        Issuer::from_ca_cert_pem(&read_text(&paths.ca_cert())?, key).map_err(cert_err)?
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // A unique name per CA: two clusters' CAs must not look alike, or a foreign certificate would
        // be matched to our CA by name and fail on its signature instead of as "unknown CA".
        let tag =
            xxhash_rust::xxh3::xxh3_64(&KeyPair::generate().map_err(cert_err)?.serialize_der());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("quickv cluster CA {tag:016x}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        write_file(&paths.ca_cert(), cert.pem().as_bytes(), false)?;
        write_file(&paths.ca_key(), key.serialize_pem().as_bytes(), true)?;
        out.written.extend([paths.ca_cert(), paths.ca_key()]);
        Issuer::new(params, key)
    };

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let admin = role_unit(Access::Admin);
    let validity = (not_before, now + time::Duration::days(LEAF_VALIDITY_DAYS));
    let leaves = [
        (
            paths.server_cert(),
            paths.server_key(),
            Leaf {
                common_name: "quickv server",
                role_unit: None,
                sans: &names,
                ekus: vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                validity,
            },
        ),
        (
            paths.client_cert(),
            paths.client_key(),
            Leaf {
                common_name: "quickv client",
                role_unit: Some(&admin),
                sans: &[],
                ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
                validity,
            },
        ),
    ];
    for (cert_path, key_path, leaf) in leaves {
        if !force && cert_path.exists() && key_path.exists() {
            out.kept.extend([cert_path, key_path]);
            continue;
        }
        sign_leaf(&issuer, leaf, &cert_path, &key_path)?;
        out.written.extend([cert_path, key_path]);
    }
    Ok(out)
}

/// Issues another client certificate from the cluster CA in `paths` (which must hold `ca.key`),
/// role `admin`, valid from `not_before` to `not_after`; writes `cert_out` and `key_out` (0600).
/// For tests of validity; operators use `quickv certs client NAME --role ROLE`.
pub fn issue_client_cert(
    paths: &CertPaths,
    name: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    cert_out: &Path,
    key_out: &Path,
) -> Result<()> {
    let key = KeyPair::from_pem(&read_text(&paths.ca_key())?).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&read_text(&paths.ca_cert())?, key).map_err(cert_err)?;
    sign_leaf(
        &issuer,
        Leaf {
            common_name: name,
            role_unit: Some(&role_unit(Access::Admin)),
            sans: &[],
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity: (not_before, not_after),
        },
        cert_out,
        key_out,
    )
}

/// What goes into a leaf certificate besides its key.
pub(crate) struct Leaf<'a> {
    /// Subject common name (a client's name).
    pub common_name: &'a str,
    /// Subject organizational unit carrying a client's role (see [`crate::pki`]).
    pub role_unit: Option<&'a str>,
    /// Subject alternative names (server certificates).
    pub sans: &'a [String],
    /// Extended key usages.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// `not_before`, `not_after`.
    pub validity: (time::OffsetDateTime, time::OffsetDateTime),
}

/// Makes a key pair and a certificate signed by `issuer`, and writes both as PEM (key first, each
/// file replaced atomically, so a server reloading meanwhile reads an old or a new file, never half
/// of one).
pub(crate) fn sign_leaf(
    issuer: &Issuer<'_, KeyPair>,
    leaf: Leaf<'_>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.subject_alt_names = leaf.sans.iter().map(|n| san_of(n)).collect::<Result<_>>()?;
    params
        .distinguished_name
        .push(DnType::CommonName, leaf.common_name);
    if let Some(unit) = leaf.role_unit {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unit);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = leaf.ekus;
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = leaf.validity;
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, issuer).map_err(cert_err)?;
    write_file(key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(cert_path, cert.pem().as_bytes(), false)
}

/// Creates the certificates in `dir` unless they are all there already; returns true if it made them.
pub fn ensure(dir: &Path) -> Result<bool> {
    if CertPaths::new(dir).complete() {
        return Ok(false);
    }
    generate(dir, &[], false)?;
    Ok(true)
}

fn san_of(name: &str) -> Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into().map_err(cert_err)?),
    })
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::file(path, e))
}

/// Writes `contents` to a fresh temporary file beside `path`, then renames it over `path`, so
/// readers see the old file or the new one, never a half-written one. The temporary file has a
/// random name and is created exclusively (never an existing file or a planted symlink), with
/// mode 0600; a certificate (`private` false) is made 0644 before the rename.
pub(crate) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".quickv-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::file(dir, e))?;
    #[cfg(unix)]
    if !private {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::file(tmp.path(), e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::file(tmp.path(), e))?;
    tmp.persist(path)
        .map(drop)
        .map_err(|e| Error::file(path, e.error))
}

/// Creates the certificate directory (mode 0700 when new) and refuses one that every local user
/// may write to: they could replace `ca.pem` or plant files the server then trusts.
fn prepare_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(|e| Error::file(dir, e))?;
        let mode = fs::metadata(dir)
            .map_err(|e| Error::file(dir, e))?
            .permissions()
            .mode();
        if mode & 0o002 != 0 {
            return Err(Error::Config(format!(
                "{}: the certificate directory is writable by every user (mode {:04o}); use a \
                 directory of your own (chmod o-w, or 0700)",
                dir.display(),
                mode & 0o7777
            )));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(|e| Error::file(dir, e))
}

pub(crate) fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}
