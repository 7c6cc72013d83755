//! The wire as docs/protocol.md states it, checked from an independent client's side: frames are
//! assembled by hand from the document (not with the codec), over a raw QUIC connection with real
//! TLS, against a real `quickv` process.
//!
//! - A broken stream (§8) gets answers for the requests decoded before the break and nothing
//!   else: no answer on an id the client did not send (a client numbering from 0 must not take a
//!   complaint for the answer to its request 0), then `STOP_SENDING` with code 2 and a finished
//!   send side.
//! - A connection over `max_connections` is closed with application code 6 and a reason.
//! - After `shutdown`, connections are closed with application code 1 and the reason "the server
//!   is shutting down".

mod common;

use std::time::Duration;

use quickv_net::tls::Identity;

use common::{free_addr, fresh_certs, ServerProc};

/// Bound on every wait below: a server that hangs fails the test instead of the suite.
const WAIT: Duration = Duration::from_secs(15);

/// One frame per docs/protocol.md §2: `len: u32` (bytes after it), `tag: u8`, `id: u64`, fields.
fn frame(tag: u8, id: u64, fields: &[u8]) -> Vec<u8> {
    let len = u32::try_from(9 + fields.len()).expect("small frame");
    let mut out = len.to_be_bytes().to_vec();
    out.push(tag);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(fields);
    out
}

/// `Ping { payload }` (tag 0x02): `payload: bytes`.
fn ping(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut fields = u32::try_from(payload.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    fields.extend_from_slice(payload);
    frame(0x02, id, &fields)
}

/// The responses in `bytes` as (id, tag, fields); panics on a frame that does not parse.
fn responses(mut bytes: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 13, "a cut response: {bytes:?}");
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        assert!(
            len >= 9 && bytes.len() >= 4 + len,
            "a cut response: {bytes:?}"
        );
        let id = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
        out.push((id, bytes[4], bytes[13..4 + len].to_vec()));
        bytes = &bytes[4 + len..];
    }
    out
}

/// The answer `Value { value: b"zero" }` (tag 0x83) to a ping with id 0.
fn value_zero() -> (u64, u8, Vec<u8>) {
    (0, 0x83, [&4u32.to_be_bytes()[..], b"zero"].concat())
}

async fn raw(server: &ServerProc) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = common::raw_client_config(&server.certs, Identity::Client);
    common::raw_connection(server.addr, cfg).await
}

#[tokio::test]
async fn a_broken_stream_answers_only_its_requests_then_stops_sending_with_code_2() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let (_endpoint, conn) = raw(&server).await;
    // Each breaks the stream after a valid ping numbered 0, as a client counting from 0 sends.
    let over_max_frame = [0xff, 0xff, 0xff, 0xff, 0x02].to_vec();
    let under_nine = [0, 0, 0, 3, 0x07, 0, 0].to_vec();
    // Get (0x06) whose key claims 100 bytes in a frame that holds 1.
    let overrun = frame(0x06, 1, &[0, 0, 0, 100, b'k']);
    // Count (0x07) has no fields: one byte left over.
    let leftover = frame(0x07, 1, &[0xaa]);
    for (what, broken) in [
        ("len over max_frame", over_max_frame),
        ("len under 9", under_nine),
        ("a field overrunning its frame", overrun),
        ("a byte left over", leftover),
    ] {
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        let mut bytes = ping(0, b"zero");
        bytes.extend_from_slice(&broken);
        send.write_all(&bytes).await.expect("write");
        // The send side stays open: the break, not the end of the stream, ends it.
        let answered = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server never finished its side"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            responses(&answered),
            vec![value_zero()],
            "{what}: exactly one response per request"
        );
        let stopped = tokio::time::timeout(WAIT, send.stopped())
            .await
            .unwrap_or_else(|_| panic!("{what}: no STOP_SENDING"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stopped, Some(quinn::VarInt::from_u32(2)), "{what}");
    }
    // A stream that ends inside a frame: the cut frame was never a request, so no answer.
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    let mut bytes = ping(0, b"zero");
    bytes.extend_from_slice(&ping(1, b"cut")[..10]);
    send.write_all(&bytes).await.expect("write");
    send.finish().expect("finish");
    let answered = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
        .await
        .expect("the server finished its side")
        .expect("read");
    assert_eq!(responses(&answered), vec![value_zero()], "cut at the end");
    // The connection goes on.
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_all(&ping(7, b"zero")).await.expect("write");
    send.finish().expect("finish");
    let answered = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
        .await
        .expect("answered")
        .expect("read");
    assert_eq!(responses(&answered)[0].0, 7);
}

#[tokio::test]
async fn a_connection_over_max_connections_is_closed_with_code_6_and_a_reason() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--max-connections", "1"],
    );
    let (_first_endpoint, first) = raw(&server).await;
    let (mut send, mut recv) = first.open_bi().await.expect("open");
    send.write_all(&ping(0, b"zero")).await.expect("write");
    send.finish().expect("finish");
    let answered = recv
        .read_to_end(1 << 20)
        .await
        .expect("the first is served");
    assert_eq!(responses(&answered), vec![value_zero()]);

    let cfg = common::raw_client_config(&server.certs, Identity::Client);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    let second = endpoint
        .connect_with(cfg, server.addr, "localhost")
        .expect("connect")
        .await
        .expect("the handshake completes; the refusal is an application close");
    let why = tokio::time::timeout(WAIT, second.closed())
        .await
        .expect("the second connection is closed");
    match why {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(6), "{close}");
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(reason.contains("max_connections"), "{reason}");
        }
        other => panic!("expected application close code 6, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_code_1_and_the_documented_reason() {
    let certs = fresh_certs();
    let mut server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let (_idle_endpoint, idle) = raw(&server).await;
    // The idle connection has talked once, so the server holds it as a client connection.
    let (mut send, mut recv) = idle.open_bi().await.expect("open");
    send.write_all(&ping(0, b"zero")).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(1 << 20).await.expect("served");

    let (_endpoint, conn) = raw(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    // Shutdown (0x0A), id 0, no fields; answered Ok (0x82).
    send.write_all(&frame(0x0a, 0, &[])).await.expect("write");
    send.finish().expect("finish");
    let answered = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
        .await
        .expect("the shutdown is answered")
        .expect("read");
    assert_eq!(responses(&answered), vec![(0, 0x82, Vec::new())]);
    for (what, c) in [
        ("the asking connection", &conn),
        ("an idle connection", &idle),
    ] {
        let why = tokio::time::timeout(WAIT, c.closed())
            .await
            .unwrap_or_else(|_| panic!("{what} was never closed"));
        match why {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    close.error_code,
                    quinn::VarInt::from_u32(1),
                    "{what}: {close}"
                );
                assert_eq!(&close.reason[..], b"the server is shutting down", "{what}");
            }
            other => panic!("{what}: expected application close code 1, got {other:?}"),
        }
    }
    assert!(server.wait_exit(WAIT).success());
}
