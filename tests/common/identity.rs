//! Identities for the security tests: `quickv certs` run as an operator runs it, client
//! certificate directories per identity, and status polls for reloads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quickv::client::{Client, ClientConfig, ClientError};
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
