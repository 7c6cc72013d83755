//! The plain-HTTP loopback gateway against browsers, foreign names and other local users
//! (issue 21, H2): requests as curl and Go's net/http send them are served; requests a web page
//! makes (cross-site `Origin`/`Sec-Fetch-Site`) or that name another host (DNS rebinding) are
//! refused before they take effect; `--http-token` keeps out whoever cannot read the token file.
//! And the HTTPS gateway (M5): idle unauthenticated connections hold no connection slot.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::identity::{https_count, WAIT};
use common::{bin, free_addr, free_tcp_addr, fresh_certs, ServerProc};
use tokio::net::TcpStream;

/// Writes one raw request (`Connection: close`) and reads the whole answer: status and body.
async fn raw(http: SocketAddr, request: String) -> (u16, String) {
    common::http::raw(http, request.as_bytes()).await
}

/// A GET with the given extra header lines, as `Host: HOST`.
fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n")
}

/// A form POST with the given extra header lines.
fn post_form(path: &str, host: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn the_loopback_gateway_serves_plain_clients_and_refuses_what_a_browser_page_sends() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let mut server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http.to_string()],
    );
    let admin = server.client().await;
    admin.insert("secret", "s3cr3t").await.expect("insert");
    let host = http.to_string();
    let localhost = format!("localhost:{}", http.port());

    // Plain clients (curl, Go's net/http: Host = what they dialed, no Origin) are served.
    let (status, body) = raw(http, get("/kv/get?key=secret", &host, "")).await;
    assert_eq!((status, body.contains("s3cr3t")), (200, true), "{body}");
    let (status, body) = raw(http, get("/kvman/countkey", &localhost, "")).await;
    assert_eq!(status, 200, "{body}");
    // A browser's own same-origin request (a page served by the gateway itself) is fine too.
    let same_origin = format!("Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n");
    let (status, body) = raw(http, get("/kvman/countkey", &host, &same_origin)).await;
    assert_eq!(status, 200, "{body}");

    // A cross-site form POST (<form method=post action=http://127.0.0.1:P/kv/delete>): refused,
    // with or without Sec-Fetch-Site (older browsers send only Origin), and `Origin: null`.
    for extra in [
        "Origin: https://attacker.example\r\nSec-Fetch-Site: cross-site\r\n",
        "Origin: https://attacker.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: same-site\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
    ] {
        let (status, body) = raw(http, post_form("/kv/delete", &host, extra, "key=secret")).await;
        assert_eq!(status, 403, "{extra}: {body}");
        assert!(body.contains("forbidden"), "{body}");
    }
    assert_eq!(
        admin.get("secret").await.expect("get").as_deref(),
        Some(&b"s3cr3t"[..]),
        "a refused delete took effect"
    );

    // DNS rebinding: same origin for the browser, but the Host names the attacker's domain.
    for foreign in [
        format!("rebind.attacker.example:{}", http.port()),
        "rebind.attacker.example".to_string(),
        format!("127.0.0.1:{}", http.port() ^ 1),
    ] {
        let (status, body) = raw(http, get("/kvman/dump", &foreign, "")).await;
        assert_eq!(status, 403, "Host {foreign}: {body}");
        assert!(!body.contains("s3cr3t"), "{body}");
    }

    // <img src=http://127.0.0.1:P/kvman/shutdown>: refused, the server keeps serving.
    let img = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\nOrigin: https://attacker.example\r\n";
    let (status, body) = raw(http, get("/kvman/shutdown", &host, img)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(admin.count().await.expect("still serving"), 1);
    admin.close().await;

    // The classic harness's GET /kvman/shutdown (a plain client) still stops the server.
    let (status, body) = raw(http, get("/kvman/shutdown", &host, "")).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn with_a_token_file_the_plain_gateway_serves_only_requests_that_carry_the_token() {
    let certs = fresh_certs();
    let token_file = certs.path().join("http.token");
    std::fs::write(&token_file, "t0ken-of-the-operator\n").expect("write token");
    // Readable by others: refused at start, with the reason.
    set_mode(&token_file, 0o644);
    let out = Command::new(bin())
        .args(["server", "--role", "standalone", "--listen"])
        .arg(free_addr().to_string())
        .arg("--certs")
        .arg(certs.path())
        .args(["--http", &free_tcp_addr().to_string(), "--http-token"])
        .arg(&token_file)
        .output()
        .expect("run quickv server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("0600"), "{stderr}");

    set_mode(&token_file, 0o600);
    let http = free_tcp_addr();
    let token_arg = token_file.to_string_lossy().into_owned();
    let _server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http.to_string(), "--http-token", &token_arg],
    );
    let host = http.to_string();
    let (status, body) = raw(http, get("/kvman/countkey", &host, "")).await;
    assert_eq!(status, 401, "{body}");
    let wrong = "Authorization: Bearer t0ken-of-the-operatoR\r\n";
    let (status, body) = raw(http, get("/kvman/countkey", &host, wrong)).await;
    assert_eq!(status, 401, "{body}");
    let right = "Authorization: Bearer t0ken-of-the-operator\r\n";
    let (status, body) = raw(http, get("/kvman/countkey", &host, right)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"result":"0"}"#));
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn idle_unauthenticated_tcp_connections_do_not_hold_the_https_gateways_slots() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    // One QUIC connection's worth: 4 HTTP connection slots.
    let _server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &[
            "--http",
            &http.to_string(),
            "--http-tls",
            "--max-connections",
            "1",
            // The idle connections below must outlive the admin's request whatever the load.
            "--handshake-timeout-ms",
            "60000",
        ],
    );
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    assert_eq!(https_count(http, certs.path(), tls13, None).await, Ok(200));
    // 64 TCP connections from 127.0.0.1 that never send a byte (no certificate, no handshake).
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(http).await.expect("connect"));
    }
    // An admin from another address is served while the first idle connections still hang
    // (they hold no connection slot, and their source has only a few handshake places).
    let from = Some("127.0.0.2".parse().expect("ip"));
    let served = tokio::time::timeout(WAIT, https_count(http, certs.path(), tls13, from))
        .await
        .expect("the admin's request was stuck behind idle unauthenticated connections");
    assert_eq!(served, Ok(200));
    let mut probe = [0u8; 1];
    match idle[0].try_read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the first idle connection was already closed ({other:?}): the admin was served only after it"),
    }
}
