//! Identities for the security tests: `quickv certs` run as an operator runs it, client
//! certificate directories per identity, and status polls for reloads.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quickv_client::{Client, ClientConfig, ClientError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::bin;

/// Bound on every wait for an event (a reload, a close, a server exit).
pub const WAIT: Duration = Duration::from_secs(15);

/// `quickv certs --dir CERTS ARGS…`: (exit code, stdout, stderr).
pub fn certs_cli(certs: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["certs", "--dir"])
        .arg(certs)
        .args(args)
        .output()
        .expect("run quickv certs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `quickv certs client NAME --role ROLE`, which must succeed.
pub fn issue(certs: &Path, name: &str, role: &str) {
    let (code, _, err) = certs_cli(certs, &["client", name, "--role", role]);
    assert_eq!(code, 0, "certs client failed: {err}");
}

/// `quickv certs revoke NAME`, which must succeed.
pub fn revoke(certs: &Path, name: &str) {
    let (code, _, err) = certs_cli(certs, &["revoke", name]);
    assert_eq!(code, 0, "certs revoke failed: {err}");
}

/// A client host's certificate directory holding `ca.pem` and the pair `cert`/`key` (paths in
/// `certs`) as `client.pem`/`client.key`: what the CLI and `ClientConfig` read.
pub fn identity_files(certs: &Path, cert: &str, key: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        (cert, "client.pem"),
        (key, "client.key"),
    ] {
        std::fs::copy(certs.join(from), dir.path().join(to)).expect("copy identity");
    }
    dir
}

/// [`identity_files`] for client NAME (`NAME.pem`, `NAME.key`).
pub fn identity_dir(certs: &Path, name: &str) -> tempfile::TempDir {
    identity_files(certs, &format!("{name}.pem"), &format!("{name}.key"))
}

/// Connects with the identity in `dir` and does one `count`: the first use, where a TLS 1.3
/// refusal of the certificate (or a close after the handshake) shows.
pub async fn try_use(addr: SocketAddr, dir: &Path) -> Result<u64, ClientError> {
    let client = Client::connect(&addr.to_string(), &ClientConfig::new(dir)).await?;
    let counted = client.count().await;
    client.close().await;
    counted
}

/// `status` as the admin of `certs`.
pub async fn status(addr: SocketAddr, certs: &Path) -> Value {
    let client = Client::connect(&addr.to_string(), &ClientConfig::new(certs))
        .await
        .expect("admin connects");
    let status = client.status_json().await.expect("status");
    client.close().await;
    status
}

/// Polls `status` (bounded by [`WAIT`]) until `certificates.FIELD` reaches `at_least`; returns
/// the document.
pub async fn wait_certificates(
    addr: SocketAddr,
    certs: &Path,
    field: &str,
    at_least: u64,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let doc = status(addr, certs).await;
        if doc["certificates"][field].as_u64() >= Some(at_least) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "{field} never reached {at_least}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces `path` atomically (write beside it, rename), so a reload never sees half a file.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("swap");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One HTTPS GET of `/kvman/countkey` as the admin client of `certs`, with these TLS versions,
/// from `source` (any loopback address: 127.0.0.0/8 is all local) or the default address: the
/// status code, or how the connection failed.
pub async fn https_count(
    http: SocketAddr,
    certs: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    source: Option<IpAddr>,
) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs.join("ca.pem")).map_err(|e| e.to_string())? {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain = CertificateDer::pem_file_iter(certs.join("client.pem"))
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(certs.join("client.key")).map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(http).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    stream
        .write_all(b"GET /kvman/countkey HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

/// A client of `addr` with the identity in `dir` (`ca.pem`, `client.pem`, `client.key`).
pub async fn connect_as(addr: SocketAddr, dir: &Path) -> Result<Client, ClientError> {
    Client::connect(&addr.to_string(), &ClientConfig::new(dir)).await
}

/// A rustls client config presenting NAME's certificate (`NAME.pem` in `certs`), trusting the
/// cluster CA: for the HTTPS gateway.
pub fn https_config(certs: &Path, name: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join(format!("{name}.pem")))
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("cert");
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key"))).expect("key");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth"),
    )
}

/// One HTTP(S) request on a fresh connection (TLS with `tls`, plain without), through the tools'
/// one HTTP client: (status, body), or an error if the connection or the TLS handshake failed.
pub async fn http_call(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: hyper::Method,
    path: &str,
    form: &str,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let form_type = Some(quickv::http::FORM);
    let answer = match tls {
        Some(cfg) => {
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            super::http::try_send(stream, "localhost", method, path, form_type, form.into()).await?
        }
        None => {
            super::http::try_send(tcp, "localhost", method, path, form_type, form.into()).await?
        }
    };
    Ok((answer.status, answer.body))
}

/// A client config presenting NAME's certificate on the client ALPN.
pub fn quic_config(certs: &Path, name: &str) -> quinn::ClientConfig {
    quickv_net::tls::client_config_from_files(
        &certs.join("ca.pem"),
        Some((
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
        )),
        quickv_proto::ALPN,
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .expect("client config")
}

/// A raw QUIC connection presenting NAME's certificate (`NAME.pem` in `certs`; `client` is the
/// cluster's admin client), with no hello exchanged.
pub async fn raw_as(
    addr: SocketAddr,
    certs: &Path,
    name: &str,
) -> (quinn::Endpoint, quinn::Connection) {
    super::raw_connection(addr, quic_config(certs, name)).await
}

/// A raw QUIC connection presenting NAME's certificate, which has exchanged the hello (so the
/// server has accepted and registered it).
pub async fn hello_connection(
    addr: SocketAddr,
    certs: &Path,
    name: &str,
) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = connect_hello(&endpoint, quic_config(certs, name), addr).await;
    (endpoint, conn)
}

/// Dials `addr` from `endpoint` and exchanges the protocol hello.
pub async fn connect_hello(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
) -> quinn::Connection {
    let conn = endpoint
        .connect_with(cfg, addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut out = bytes::BytesMut::new();
    quickv_proto::encode_request(
        &quickv_proto::Request {
            id: 1,
            op: quickv_proto::Op::Hello {
                version: quickv_proto::PROTOCOL_VERSION,
            },
            session: None,
        },
        &mut out,
    );
    send.write_all(&out).await.expect("send hello");
    let mut inbuf = bytes::BytesMut::new();
    loop {
        if let Some(resp) =
            quickv_proto::decode_response(&mut inbuf, &quickv_proto::Limits::default())
                .expect("decode")
        {
            assert!(
                matches!(resp.reply, quickv_proto::Reply::Hello { .. }),
                "{resp:?}"
            );
            break;
        }
        let n = tokio::io::AsyncReadExt::read_buf(&mut recv, &mut inbuf)
            .await
            .expect("read");
        assert!(n > 0, "stream ended before the hello answer");
    }
    conn
}

/// A QUIC endpoint on `addr` that poses as a backup on the peer ALPN with the certificate and key
/// at `cert`/`key` (for tests of which certificates a primary accepts as its backup).
pub fn fake_backup(cert: &Path, key: &Path, addr: SocketAddr) -> quinn::Endpoint {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("pem")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server cert");
    tls.alpn_protocols = vec![quickv_proto::PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic");
    quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(quic)), addr)
        .expect("fake backup")
}
