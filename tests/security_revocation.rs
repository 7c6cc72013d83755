//! Revocation that holds (issue 21, M3 and M1): a `crl.pem` that vanishes, empties, is not a CRL
//! or is older than the one in force fails the reload and the revocation stays; a handshake that
//! straddles a reload is judged by the CRL in force when it completes.

mod common;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::identity::{
    identity_dir, issue, replace_file, revoke, status, try_use, wait_certificates, WAIT,
};
use common::{free_addr, fresh_certs, signal, ServerProc};
use quickv_client::{Client, ClientConfig};
use quickv_proto::{self as protocol, Limits, Op, Request as Frame, PROTOCOL_VERSION};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

/// Asserts that the identity in `dir` is refused as revoked.
async fn assert_revoked(addr: SocketAddr, dir: &std::path::Path, when: &str) {
    match try_use(addr, dir).await {
        Err(e) => assert!(e.to_string().contains("revoked"), "{when}: {e}"),
        Ok(n) => panic!("{when}: a revoked certificate was served (count {n})"),
    }
}

#[tokio::test]
async fn a_crl_that_vanishes_empties_goes_back_or_is_not_a_crl_keeps_the_revocation() {
    let certs = fresh_certs();
    let dir = certs.path();
    issue(dir, "mallory", "write");
    issue(dir, "eve", "read");
    revoke(dir, "mallory");
    let crl = dir.join("crl.pem");
    let older = std::fs::read(&crl).expect("crl v1");
    revoke(dir, "eve");
    let newer = std::fs::read(&crl).expect("crl v2");
    let server = ServerProc::start("standalone", free_addr(), dir, &[]);
    let (mallory, eve) = (identity_dir(dir, "mallory"), identity_dir(dir, "eve"));
    assert_revoked(server.addr, mallory.path(), "at start").await;
    let doc = status(server.addr, dir).await;
    let number = doc["certificates"]["crl_number"].clone();
    assert_eq!(doc["certificates"]["crl_entries"], 2, "{doc}");
    assert!(number.as_u64().is_some(), "{doc}");

    let not_a_crl = std::fs::read(dir.join("mallory.pem")).expect("a certificate");
    let cases: [(&str, Option<&[u8]>); 5] = [
        ("emptied", Some(b"")),
        ("text", Some(b"not a crl\n")),
        ("a certificate copied over it", Some(&not_a_crl)),
        ("an older CRL copied over it", Some(&older)),
        ("deleted", None),
    ];
    let mut failures = 0;
    for (how, contents) in cases {
        match contents {
            Some(bytes) => replace_file(&crl, bytes),
            None => std::fs::remove_file(&crl).expect("rm crl.pem"),
        }
        signal(server.child.id(), "HUP");
        failures += 1;
        let doc = wait_certificates(server.addr, dir, "reload_failures", failures).await;
        failures = doc["certificates"]["reload_failures"]
            .as_u64()
            .expect("count");
        assert_eq!(doc["certificates"]["crl_entries"], 2, "{how}: {doc}");
        assert_eq!(doc["certificates"]["crl_number"], number, "{how}: {doc}");
        assert_revoked(server.addr, mallory.path(), how).await;
        assert_revoked(server.addr, eve.path(), how).await;
        // Put the CRL in force back; that reload succeeds (same number).
        let reloads = doc["certificates"]["reloads"].as_u64().expect("reloads");
        replace_file(&crl, &newer);
        signal(server.child.id(), "HUP");
        wait_certificates(server.addr, dir, "reloads", reloads + 1).await;
    }
}

#[tokio::test]
async fn with_allow_crl_removal_a_deleted_crl_lifts_the_revocation() {
    let certs = fresh_certs();
    let dir = certs.path();
    issue(dir, "mallory", "write");
    revoke(dir, "mallory");
    let server = ServerProc::start("standalone", free_addr(), dir, &["--allow-crl-removal"]);
    let mallory = identity_dir(dir, "mallory");
    assert_revoked(server.addr, mallory.path(), "at start").await;
    std::fs::remove_file(dir.join("crl.pem")).expect("rm crl.pem");
    signal(server.child.id(), "HUP");
    let doc = wait_certificates(server.addr, dir, "reloads", 1).await;
    assert_eq!(doc["certificates"]["crl_entries"], 0, "{doc}");
    assert_eq!(doc["certificates"]["crl_number"], serde_json::Value::Null);
    assert_eq!(try_use(server.addr, mallory.path()).await.ok(), Some(0));
}

/// A client certificate resolver that parks the handshake — after the server took the
/// connection with the config of that moment — until the test releases it.
#[derive(Debug)]
struct Gate {
    key: Arc<rustls::sign::CertifiedKey>,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl rustls::client::ResolvesClientCert for Gate {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Some(tx) = self.entered.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        let _ = self
            .release
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(25));
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Sends hello and one insert on a fresh stream; what came back (or how it failed).
async fn hello_and_insert(conn: &quinn::Connection, key: &str) -> String {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return format!("no stream: {:?}", conn.close_reason());
    };
    let mut out = BytesMut::new();
    for (id, op) in [
        (
            1,
            Op::Hello {
                version: PROTOCOL_VERSION,
            },
        ),
        (
            2,
            Op::Insert {
                key: Bytes::from(key.to_string()),
                value: Bytes::from("1"),
            },
        ),
    ] {
        protocol::encode_request(
            &Frame {
                id,
                op,
                session: None,
            },
            &mut out,
        );
    }
    if let Err(e) = send.write_all(&out).await {
        return format!("write failed: {e}");
    }
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match protocol::decode_response(&mut buf, &Limits::default()) {
            Ok(Some(resp)) => {
                replies.push(resp.reply);
                continue;
            }
            Ok(None) => {}
            Err(e) => return format!("bad answer: {e}"),
        }
        match recv.read_buf(&mut buf).await {
            Ok(0) => return format!("stream ended after {replies:?}"),
            Ok(_) => {}
            Err(e) => return format!("read failed: {e} ({:?})", conn.close_reason()),
        }
    }
    format!("{replies:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_straddles_a_reload_is_judged_by_the_new_crl() {
    let certs = fresh_certs();
    let dir = certs.path().to_path_buf();
    issue(&dir, "mallory", "write");
    let server = ServerProc::start("standalone", free_addr(), &dir, &[]);
    let addr = server.addr;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("mallory.pem"))
            .expect("pem")
            .collect::<Result<_, _>>()
            .expect("certs");
    let key = PrivateKeyDer::from_pem_file(dir.join("mallory.key")).expect("key");
    let certified =
        Arc::new(rustls::sign::CertifiedKey::from_der(chain, key, &provider).expect("key pair"));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Gate {
        key: certified,
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca") {
        roots.add(ca.expect("ca cert")).expect("add root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(gate));
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let cfg =
        quickv_net::tls::quic_client_config(tls, Duration::from_secs(30), Duration::from_secs(2))
            .expect("quic config");

    // Mallory's parked handshake runs on its own thread (the resolver blocks that thread).
    let (report_tx, report_rx) = mpsc::channel::<String>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
            let report = match ep
                .connect_with(cfg, addr, "localhost")
                .expect("connect")
                .await
            {
                Ok(conn) => hello_and_insert(&conn, "written-after-revocation").await,
                Err(e) => format!("handshake failed: {e}"),
            };
            report_tx.send(report).expect("report");
        });
    });

    // The server took mallory's Initial (with the pre-revocation config) once the resolver runs.
    entered_rx
        .recv_timeout(WAIT)
        .expect("the handshake reached the client certificate request");
    revoke(&dir, "mallory");
    signal(server.child.id(), "HUP");
    wait_certificates(addr, &dir, "reloads", 1).await;
    let mallory = identity_dir(&dir, "mallory");
    assert_revoked(addr, mallory.path(), "a fresh handshake after the reload").await;
    release_tx.send(()).expect("release");
    let report = report_rx.recv_timeout(WAIT).expect("report");
    client.join().expect("client thread");
    assert!(
        !report.contains("Ok"),
        "the straddling handshake was served: {report}"
    );
    assert!(report.to_lowercase().contains("revoked"), "{report}");
    let admin = Client::connect(&addr.to_string(), &ClientConfig::new(&dir))
        .await
        .expect("admin");
    assert_eq!(
        admin.get("written-after-revocation").await.expect("get"),
        None
    );
    let doc = admin.status_json().await.expect("status");
    assert_eq!(doc["certificates"]["authenticated_connections"], 1, "{doc}");
}

#[tokio::test]
async fn after_renew_the_primary_refuses_a_backup_that_shows_the_replaced_server_certificate() {
    let certs = fresh_certs();
    let dir = certs.path();
    // The thief's copy of the pair's identity, taken before the renewal.
    let stolen = tempfile::tempdir().expect("tempdir");
    for f in ["server.pem", "server.key"] {
        std::fs::copy(dir.join(f), stolen.path().join(f)).expect("copy");
    }
    let fake_addr = free_addr();
    let peer = fake_addr.to_string();
    // The primary starts with the old server.pem (the one the thief holds) ...
    let primary = ServerProc::start("primary", free_addr(), dir, &["--peer", &peer]);
    // ... and the operator renews it (revoking the old one); the primary reloads.
    let (code, _, err) = common::identity::certs_cli(dir, &["renew"]);
    assert_eq!(code, 0, "{err}");
    signal(primary.child.id(), "HUP");
    wait_certificates(primary.addr, dir, "reloads", 1).await;

    let fake = common::identity::fake_backup(
        &stolen.path().join("server.pem"),
        &stolen.path().join("server.key"),
        fake_addr,
    );
    let incoming = tokio::time::timeout(WAIT, fake.accept())
        .await
        .expect("the primary dials its backup")
        .expect("endpoint open");
    let handshake = tokio::time::timeout(WAIT, incoming)
        .await
        .expect("handshake ends");
    assert!(
        handshake.is_err(),
        "the primary linked to a backup showing the replaced (revoked) server certificate"
    );
}
