//! What one client can pin in server memory (docs/security.md, "Resources"): answers it never
//! reads are bounded in bytes per stream and per connection, dumps are produced only as fast as
//! they are read and capped in number, and the HTTP gateway's read endpoints take small bodies and
//! stream the dump. Real `quickv` processes, real QUIC with TLS, a `read` certificate as the
//! attacker.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quickv_client::Client;
use quickv_proto::{self as protocol, Limits, Op, Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::identity::issue;
use common::{free_addr, free_tcp_addr, fresh_certs, ServerProc};

/// Bound on every wait below.
const WAIT: Duration = Duration::from_secs(30);
/// The goal of issue 21 at the defaults: growth of the server's RSS under the attack.
const GROWTH_LIMIT_KIB: u64 = 256 * 1024;
const MIB: usize = 1024 * 1024;

/// The server's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A raw connection holding the certificate `name` (`client` is the cluster's admin client).
async fn connect_as(server: &ServerProc, name: &str) -> (quinn::Endpoint, quinn::Connection) {
    common::identity::raw_as(server.addr, &server.certs, name).await
}

fn requests(ops: impl IntoIterator<Item = (u64, Op)>) -> BytesMut {
    let mut out = BytesMut::new();
    for (id, op) in ops {
        protocol::encode_request(
            &Request {
                id,
                op,
                session: None,
            },
            &mut out,
        );
    }
    out
}

/// Waits until the server reports a paused stream, or its RSS has grown past the goal (the
/// failure this test exists for); returns the growth in KiB.
async fn growth_once_paused(admin: &Client, pid: u32, before: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let grown = rss_kib(pid).saturating_sub(before);
        if grown > GROWTH_LIMIT_KIB {
            return grown;
        }
        let status = admin.status_json().await.expect("status");
        if status["stream_pauses"].as_u64().unwrap_or(0) >= 1 {
            return rss_kib(pid).saturating_sub(before);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither paused nor grown: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `n` responses from `recv`.
async fn read_responses(recv: &mut quinn::RecvStream, n: usize) -> Vec<protocol::Response> {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(resp) = protocol::decode_response(&mut buf, &limits).expect("valid") {
            out.push(resp);
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(usize::MAX, true))
            .await
            .expect("answers keep coming once read")
            .expect("read")
            .expect("the stream is not finished before every answer");
        buf.extend_from_slice(&chunk.bytes);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_a_read_client_never_reads_pin_at_most_the_byte_caps() {
    let certs = fresh_certs();
    issue(certs.path(), "reporting", "read");
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let admin = server.client().await;
    let big = Bytes::from(vec![b'x'; 16 * MIB]);
    admin
        .insert("big", big.clone())
        .await
        .expect("insert 16 MiB");
    let pid = server.child.id();
    let before = rss_kib(pid);

    // The attack of the review (security.md H1): 64 gets of the 16 MiB value (1 GiB of answers,
    // 1,280 request bytes), on one stream it does not read.
    const N: u64 = 64;
    let (_endpoint, conn) = connect_as(&server, "reporting").await;
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    let gets = requests((1..=N).map(|id| {
        (
            id,
            Op::Get {
                key: Bytes::from("big"),
            },
        )
    }));
    send.write_all(&gets).await.expect("write");
    let grown = growth_once_paused(&admin, pid, before).await;
    eprintln!(
        "server RSS {} MiB before, +{} MiB with {N} unread 16 MiB gets pending",
        before / 1024,
        grown / 1024
    );
    assert!(grown <= GROWTH_LIMIT_KIB, "+{} MiB", grown / 1024);
    // Backpressure, not loss: every get is answered once the client reads.
    let answers = read_responses(&mut recv, N as usize).await;
    let mut ids: Vec<u64> = answers.iter().map(|a| a.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
    assert!(answers.iter().all(|a| a.reply == Reply::Value(big.clone())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_a_read_client_never_reads_pin_at_most_the_byte_caps() {
    let certs = fresh_certs();
    issue(certs.path(), "reporting", "read");
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let admin = server.client().await;
    // 64 MiB in the store: 8 values of 8 MiB.
    for i in 0..8 {
        admin
            .insert(format!("v{i}"), vec![b'a' + i as u8; 8 * MIB])
            .await
            .expect("insert");
    }
    let pid = server.child.id();
    let before = rss_kib(pid);
    // 8 dumps on one stream (512 MiB if materialised), never read.
    let (_endpoint, conn) = connect_as(&server, "reporting").await;
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_all(&requests((1..=8).map(|id| (id, Op::Dump))))
        .await
        .expect("write");
    let grown = growth_once_paused(&admin, pid, before).await;
    eprintln!(
        "server RSS {} MiB before, +{} MiB with 8 unread dumps of a 64 MiB store pending",
        before / 1024,
        grown / 1024
    );
    assert!(grown <= GROWTH_LIMIT_KIB, "+{} MiB", grown / 1024);
    // Read them all: each dump is the whole store, 8 entries, ending with `last`.
    let mut entries = std::collections::HashMap::<u64, usize>::new();
    let mut done = 0;
    let mut buf = BytesMut::new();
    while done < 8 {
        while let Some(resp) = protocol::decode_response(&mut buf, &Limits::default()).expect("ok")
        {
            match resp.reply {
                Reply::DumpChunk { entries: e, last } => {
                    *entries.entry(resp.id).or_default() += e.len();
                    done += usize::from(last);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if done == 8 {
            break;
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(usize::MAX, true))
            .await
            .expect("dumps go on once read")
            .expect("read")
            .expect("not finished");
        buf.extend_from_slice(&chunk.bytes);
    }
    assert!(entries.values().all(|&n| n == 8), "{entries:?}");
}

#[tokio::test]
async fn dumps_past_max_dumps_are_refused_unavailable_on_quic_and_http() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &[
            "--max-dumps",
            "1",
            "--max-queued-bytes-per-stream",
            "1",
            "--http",
            &http.to_string(),
        ],
    );
    let admin = server.client().await;
    // More than the client's stream window (quinn's default: 1.25 MB) can take unread.
    for i in 0..6u8 {
        admin
            .insert(format!("k{i}"), vec![b'a' + i; MIB])
            .await
            .expect("insert");
    }
    // A dump that is not read holds the only slot: once the stream's window is full its next
    // chunk waits for room in the 1-byte budget.
    let (_endpoint, conn) = common::raw_connection(
        server.addr,
        common::raw_client_config(certs.path(), quickv_net::tls::Identity::Client),
    )
    .await;
    let (mut send, _recv) = conn.open_bi().await.expect("open");
    send.write_all(&requests([(1, Op::Dump)]))
        .await
        .expect("write");
    // Another connection's dump: refused, safe to retry.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refusal = loop {
        let other = server.client().await;
        match other.dump().await {
            Err(quickv_client::ClientError::Unavailable(why)) => break why,
            Ok(_) => {
                // The held dump had not started yet; it will.
                assert!(tokio::time::Instant::now() < deadline, "never refused");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refusal.contains("max_dumps"), "{refusal}");
    let (status, body) = http_get(http, "/kvman/dump").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"success\":\"false\"") && body.contains("max_dumps"),
        "{body}"
    );
}

#[tokio::test]
async fn the_http_dump_is_streamed_and_read_endpoints_take_small_bodies() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http.to_string()],
    );
    let admin = server.client().await;
    for i in 0..100 {
        admin
            .insert(format!("k{i:03}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    tcp.write_all(b"GET /kvman/dump HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&dechunk(body)).expect("one JSON object");
    let map = doc.as_object().expect("object");
    assert_eq!(map.len(), 100);
    assert_eq!(map["k042"], "v42");

    // A read with a body larger than any query string: refused before it is buffered.
    let pad = "p".repeat(300 * 1024);
    let body = format!("key=k001&pad={pad}");
    let request = format!(
        "POST /kv/get HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = http_raw(http, request.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    for path in ["/kvman/status", "/metrics"] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = http_raw(http, request.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {answer}");
    }
    // A small one is served.
    let (status, answer) = http_raw(
        http,
        b"POST /kv/get HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\nkey=k001",
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer.contains("\"value\":\"v1\""), "{answer}");
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    http_raw(addr, request.as_bytes()).await
}

/// Writes a request, reads until the server closes; (status, rest of the answer).
async fn http_raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before reading a refused body: a failed write is fine.
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}
