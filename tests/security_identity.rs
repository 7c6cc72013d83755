//! Identities that fail closed (issue 21, M2 and M6): what `renew` and `client --force` replace is
//! revoked, `revoke` takes a serial or a file, a server certificate is no client, a certificate
//! without a role is refused unless the server allows it, and the HTTPS gateway speaks TLS 1.3
//! only unless asked.

mod common;

use std::path::Path;

use common::identity::{
    certs_cli, https_count, identity_dir, identity_files, issue, status, try_use, wait_certificates,
};
use common::{free_addr, free_tcp_addr, fresh_certs, signal, ServerProc};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The serial number of the first certificate in `file`, hex.
fn serial_hex(file: &Path) -> String {
    let cert = CertificateDer::from_pem_file(file).expect("certificate");
    let serial = quickv_server::pki::serial_of(&cert).expect("serial");
    serial.iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::test]
async fn what_renew_and_force_replace_is_revoked_and_revoke_takes_a_serial_or_a_file() {
    let certs = fresh_certs();
    let dir = certs.path();
    issue(dir, "app", "admin");
    issue(dir, "bob", "write");
    issue(dir, "carol", "write");
    let old_app = identity_dir(dir, "app");
    let old_server = identity_files(dir, "server.pem", "server.key");
    let server = ServerProc::start("standalone", free_addr(), dir, &[]);
    assert_eq!(try_use(server.addr, old_app.path()).await.ok(), Some(0));

    // A role downgrade replaces the admin certificate: the old one is revoked with it.
    let (code, out, err) = certs_cli(dir, &["client", "app", "--role", "read", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("revoked the replaced certificate of app"),
        "{out}"
    );
    // Renewing the server certificate revokes the old one.
    let old_serial = serial_hex(&dir.join("server.pem"));
    let (code, out, err) = certs_cli(dir, &["renew"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.to_uppercase().contains(&old_serial),
        "{out} names {old_serial}"
    );
    // `revoke server` explains the way out instead of a bare "reserved".
    let (code, _, err) = certs_cli(dir, &["revoke", "server"]);
    assert_eq!(code, 2);
    assert!(err.contains("renew"), "{err}");
    // A copy of a certificate, and a serial as openssl prints it.
    let bob_copy = dir.join("bob-copy.pem");
    std::fs::copy(dir.join("bob.pem"), &bob_copy).expect("copy");
    let (code, _, err) = certs_cli(dir, &["revoke", "--cert", &bob_copy.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let carol_serial = format!("serial={}", serial_hex(&dir.join("carol.pem")));
    let (code, _, err) = certs_cli(dir, &["revoke", "--serial", &carol_serial]);
    assert_eq!(code, 0, "{err}");

    signal(server.child.id(), "HUP");
    // Four entries: app's old certificate, the old server.pem, bob and carol.
    wait_certificates(server.addr, dir, "crl_entries", 4).await;
    for (who, id) in [
        ("the replaced admin certificate", old_app.path()),
        ("the replaced server certificate", old_server.path()),
        ("bob, revoked by file", identity_dir(dir, "bob").path()),
        (
            "carol, revoked by serial",
            identity_dir(dir, "carol").path(),
        ),
    ] {
        match try_use(server.addr, id).await {
            Err(e) => assert!(e.to_string().contains("revoked"), "{who}: {e}"),
            Ok(_) => panic!("{who} was served"),
        }
    }
    // The new read certificate of app works.
    assert_eq!(
        try_use(server.addr, identity_dir(dir, "app").path())
            .await
            .ok(),
        Some(0)
    );
}

/// Writes `NAME.pem`/`NAME.key` in `certs`: a client certificate of the cluster CA *without* a
/// role unit (as made before roles existed).
fn roleless_client(certs: &Path, name: &str) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).expect("ca.key"))
        .expect("ca key");
    let ca_pem = std::fs::read_to_string(certs.join("ca.pem")).expect("ca.pem");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(certs.join(format!("{name}.pem")), cert.pem()).expect("write cert");
    std::fs::write(certs.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
}

#[tokio::test]
async fn roleless_and_server_certificates_are_no_clients_unless_allowed() {
    let certs = fresh_certs();
    let dir = certs.path();
    roleless_client(dir, "legacy");
    let legacy = identity_dir(dir, "legacy");
    let as_server = identity_files(dir, "server.pem", "server.key");
    let server = ServerProc::start("standalone", free_addr(), dir, &[]);
    match try_use(server.addr, legacy.path()).await {
        Err(e) => assert!(e.to_string().contains("no role"), "{e}"),
        Ok(_) => panic!("a certificate without a role was served"),
    }
    match try_use(server.addr, as_server.path()).await {
        Err(e) => assert!(e.to_string().contains("server certificate"), "{e}"),
        Ok(_) => panic!("server.pem was served as a client"),
    }
    let doc = status(server.addr, dir).await;
    assert_eq!(doc["certificates"]["refused_identities"], 2, "{doc}");
    assert_eq!(doc["keys"], 0);

    // A pre-role deployment opts in: the role-less certificate is admin again; server.pem is not.
    let relaxed = ServerProc::start("standalone", free_addr(), dir, &["--allow-roleless"]);
    assert_eq!(try_use(relaxed.addr, legacy.path()).await.ok(), Some(0));
    assert!(try_use(relaxed.addr, as_server.path()).await.is_err());
}

#[tokio::test]
async fn the_https_gateway_speaks_tls_1_3_only_unless_asked() {
    let certs = fresh_certs();
    let dir = certs.path();
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let http = free_tcp_addr();
    let strict = ServerProc::start(
        "standalone",
        free_addr(),
        dir,
        &["--http", &http.to_string(), "--http-tls"],
    );
    assert_eq!(https_count(http, dir, tls13, None).await, Ok(200));
    let refused = https_count(http, dir, tls12, None).await;
    assert!(refused.is_err(), "TLS 1.2 was accepted: {refused:?}");
    drop(strict);

    let http = free_tcp_addr();
    let _asked = ServerProc::start(
        "standalone",
        free_addr(),
        dir,
        &["--http", &http.to_string(), "--http-tls", "--tls12"],
    );
    assert_eq!(https_count(http, dir, tls12, None).await, Ok(200));
}

#[test]
fn key_files_are_written_through_fresh_temporary_files_never_a_planted_link() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("certs");
    std::fs::create_dir(&dir).expect("mkdir");
    // Another user, able to write here, plants the old predictable temporary names.
    let loot = base.path().join("loot");
    std::fs::write(&loot, b"").expect("loot");
    for name in ["ca.key.tmp", "server.key.tmp", "client.key.tmp"] {
        std::os::unix::fs::symlink(&loot, dir.join(name)).expect("symlink");
    }
    let (code, _, err) = certs_cli(&dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&loot).expect("loot"),
        b"",
        "a key went through the planted link"
    );
    for key in ["ca.key", "server.key", "client.key"] {
        let meta = std::fs::symlink_metadata(dir.join(key)).expect("key");
        assert!(meta.file_type().is_file(), "{key} is not a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key}");
    }
    let cert = std::fs::metadata(dir.join("server.pem")).expect("cert");
    assert_eq!(cert.permissions().mode() & 0o777, 0o644);
    // A directory every user may write to is refused.
    let open = base.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, _, err) = certs_cli(&open, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("writable by every user"), "{err}");
}
