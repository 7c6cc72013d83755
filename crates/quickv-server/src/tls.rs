//! Certificates and TLS: generation with rcgen, PEM loading, and the rustls/quinn configs of both
//! links. The client half (certificate file names, PEM loading, client configs, refusal sentences)
//! lives in `quickv-client` so that applications get it without the server; it is re-exported here.
//!
//! One private CA signs everything. Files written by [`generate`] into the certificate directory:
//!
//! | file | what | used by |
//! |---|---|---|
//! | `ca.pem` / `ca.key` | the cluster CA (key kept to sign more certificates later) | everyone trusts `ca.pem` |
//! | `server.pem` / `server.key` | the server/peer certificate, SANs `localhost`, `127.0.0.1`, `::1` + `--san` | both servers of a pair, as server *and* as peer client |
//! | `client.pem` / `client.key` | a client certificate, role `admin` | CLI, client library, tester, bench |
//!
//! [`crate::pki`] adds named client certificates with roles, `crl.pem` and renewal.
//!
//! Mutual TLS is mandatory: a server demands a client certificate chaining to `ca.pem` and not
//! listed in `crl.pem` ([`client_verifier`]). On the peer link ([`PEER_ALPN`]) both sides also
//! demand that the other's certificate *is* the pair's server certificate, so a client certificate
//! cannot pose as the peer (the backup checks in `server::peer_allowed`, the dialing primary in
//! the verifier of [`client_config`] with [`Identity::Peer`]). Only TLS 1.3 and only the ring provider are used, passed
//! explicitly (with two providers compiled in, rustls cannot pick one on its own).
//!
//! With TLS 1.3 a client whose certificate is refused still sees `connect()` succeed; the refusal comes
//! as an alert on first use. [`explain_connection_error`] turns those alerts into plain sentences.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use quickv_net::tls::{load_certs, load_key, load_roots};
use quinn::crypto::rustls::QuicServerConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;

use crate::error::{Error, Result};
use quickv_proto::ALPN;

/// The client side of TLS (file names, PEM loading, client configs, refusal sentences) lives in
/// `quickv-client`; re-exported here so both sides are found in one place.
pub use quickv_net::tls::{
    client_config_from_files, explain_connection_error, quic_client_config, CertPaths, Identity,
    TlsError,
};

mod crl;
mod peer;
mod verifier;

pub use crl::Revocation;
pub use verifier::{Current, Trust};

/// ALPN of the primary↔backup link; the client ALPN is [`quickv_proto::ALPN`].
pub use quickv_proto::PEER_ALPN;
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
    fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
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
    let admin = crate::pki::role_unit(crate::pki::Access::Admin);
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
            role_unit: Some(&crate::pki::role_unit(crate::pki::Access::Admin)),
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
/// for a CA rotation) and is not in `crl.pem` (which must be a CRL, or absent; see [`Revocation`]).
///
/// Only the end-entity certificate is checked against the CRL; a certificate of a CA that issued no
/// CRL counts as not revoked (so a bundle with a second CA works), and `next_update` is not enforced
/// (an old CRL still revokes). A server keeps one [`Trust`] instead, which follows reloads.
pub fn client_verifier(paths: &CertPaths) -> Result<Arc<dyn ClientCertVerifier>> {
    Ok(Current::load(paths, None, false)?.verifier)
}

/// The server endpoint config: TLS 1.3, mandatory client certificates from the CA (not revoked),
/// both ALPNs; its verifier is fixed at the files read now (a server uses [`server_config_with`]
/// and a [`Trust`]).
pub fn server_config(paths: &CertPaths, limits: TransportLimits) -> Result<quinn::ServerConfig> {
    let current = Current::load(paths, None, false)?;
    let verifier = current.verifier.clone();
    server_config_with(paths, limits, verifier)
}

/// The server endpoint config with the client-certificate verifier `verifier` (a server passes
/// [`Trust::verifier`], so handshakes in progress follow reloads). Called again on reload; quinn
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

fn san_of(name: &str) -> Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into().map_err(cert_err)?),
    })
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::file(path, e))
}

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`, so readers
/// see the old file or the new one, never a half-written one.
pub(crate) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    write_in_place(&tmp, contents, private)?;
    fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

fn write_in_place(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(|e| Error::file(path, e))?;
    #[cfg(unix)]
    if private {
        // An existing file keeps its old mode on open; force 0600 on keys regardless.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::file(path, e))?;
    }
    file.write_all(contents).map_err(|e| Error::file(path, e))
}

pub(crate) fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
