//! Bad input and limits against a live server: caps, slow senders, memory limit, expired and
//! foreign certificates, randomized garbage. The server must answer or close, never die.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quickv_client::{Client, ClientConfig, ClientError};
use quickv_net::tls::{self, CertPaths};
use quickv_proto::{self as protocol, Limits, Op, Reply, Request};
use quickv_server::tls::issue_client_cert;

use common::{free_addr, fresh_certs, ServerProc};

async fn raw_connect(server: &ServerProc) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = common::raw_client_config(&server.certs, tls::Identity::Client);
    common::raw_connection(server.addr, cfg).await
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_in_plain_words() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let paths = CertPaths::new(certs.path());
    let (cert, key) = (certs.path().join("old.pem"), certs.path().join("old.key"));
    let now = time::OffsetDateTime::now_utc();
    issue_client_cert(
        &paths,
        "expired client",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
        &cert,
        &key,
    )
    .expect("issue");
    let cfg = tls::client_config_from_files(
        &paths.ca_cert(),
        Some((&cert, &key)),
        protocol::ALPN,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("config");
    let err = Client::connect_with(
        &server.addr.to_string(),
        cfg,
        &ClientConfig::new(certs.path()),
    )
    .await
    .expect_err("must be refused");
    assert_eq!(
        err,
        ClientError::Connection(
            "the server refused this client's certificate: certificate expired".into()
        )
    );
    // A fresh certificate from the same CA works (the refusal was about validity only).
    let (cert2, key2) = (certs.path().join("new.pem"), certs.path().join("new.key"));
    issue_client_cert(
        &paths,
        "new client",
        now - time::Duration::days(1),
        now + time::Duration::days(1),
        &cert2,
        &key2,
    )
    .expect("issue");
    let cfg = tls::client_config_from_files(
        &paths.ca_cert(),
        Some((&cert2, &key2)),
        protocol::ALPN,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("config");
    let c = Client::connect_with(
        &server.addr.to_string(),
        cfg,
        &ClientConfig::new(certs.path()),
    )
    .await
    .expect("valid certificate accepted");
    c.ping("x").await.expect("ping");
}

#[tokio::test]
async fn the_connection_cap_refuses_extra_connections_and_frees_slots() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--max-connections", "2"],
    );
    let a = server.client().await;
    let b = server.client().await;
    let err = Client::connect(&server.addr.to_string(), &ClientConfig::new(certs.path()))
        .await
        .expect_err("third connection must be refused");
    assert!(err.to_string().contains("connection limit"), "{err}");
    let status = a.status().await.expect("status");
    assert!(status.connections_refused >= 1, "{status:?}");
    b.close().await;
    // The slot comes back once the server has seen the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if a.status().await.expect("status").connections == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed connection never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = server.client().await;
    c.ping("again").await.expect("a freed slot is usable");
}

#[tokio::test]
async fn the_stream_cap_is_enforced_by_flow_control() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--max-streams", "2"],
    );
    let (_endpoint, conn) = raw_connect(&server).await;
    let mut open = Vec::new();
    for id in 1..=2u64 {
        let (mut send, recv) = conn.open_bi().await.expect("within the cap");
        let mut frame = BytesMut::new();
        protocol::encode_request(
            &Request {
                id,
                op: Op::Ping(Bytes::from("p")),
                session: None,
            },
            &mut frame,
        );
        send.write_all(&frame).await.expect("write");
        open.push((send, recv));
    }
    // A third stream gets no credit while two are open.
    let third = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(
        third.is_err(),
        "a third stream was opened past --max-streams 2"
    );
    // Finish one stream both ways; its credit returns and the third opens.
    let (mut send, mut recv) = open.remove(0);
    send.finish().expect("finish");
    let answer = recv.read_to_end(1 << 16).await.expect("read");
    let mut buf = BytesMut::from(&answer[..]);
    let resp = protocol::decode_response(&mut buf, &Limits::default())
        .expect("valid")
        .expect("one");
    assert_eq!(resp.reply, Reply::Value(Bytes::from("p")));
    tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
        .await
        .expect("credit returned")
        .expect("third stream");
}

#[tokio::test]
async fn a_slow_sender_is_cut_off_and_others_are_unaffected() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--frame-timeout-ms", "300"],
    );
    let good = server.client().await;
    let (_endpoint, conn) = raw_connect(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    let mut frame = BytesMut::new();
    protocol::encode_request(
        &Request {
            id: 9,
            op: Op::Get {
                key: Bytes::from("k"),
            },
            session: None,
        },
        &mut frame,
    );
    // Half a frame, then nothing (slowloris).
    send.write_all(&frame[..frame.len() / 2])
        .await
        .expect("write");
    // The stream is broken (docs/protocol.md §8): STOP_SENDING with code 2, and the server
    // finishes its side with no answer (the half frame was never a request).
    let stopped = tokio::time::timeout(Duration::from_secs(10), send.stopped())
        .await
        .expect("the server must stop the stalled stream")
        .expect("stopped");
    assert_eq!(stopped, Some(quinn::VarInt::from_u32(2)));
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16))
        .await
        .expect("the server must finish its side")
        .expect("read");
    assert!(answer.is_empty(), "{answer:?}");
    good.insert("still", "serving")
        .await
        .expect("other clients unaffected");
}

#[tokio::test]
async fn over_the_memory_limit_writes_are_refused_and_reads_go_on() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--max-memory", "2000"],
    );
    let c = server.client().await;
    let mut stored = 0;
    let refusal = loop {
        match c.insert(format!("key{stored:04}"), vec![b'v'; 100]).await {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the limit was never enforced");
    };
    match &refusal {
        ClientError::Unavailable(reason) => assert!(reason.contains("memory limit"), "{reason}"),
        other => panic!("expected a memory refusal, got {other:?}"),
    }
    assert!(stored >= 15, "refused too early: {stored}");
    assert_eq!(c.count().await.expect("count"), stored);
    assert!(c.get("key0000").await.expect("reads go on").is_some());
    c.delete("key0000").await.expect("deletes free memory");
    c.insert("fits-again", vec![b'v'; 10])
        .await
        .expect("under the limit again");
}

#[tokio::test]
async fn randomized_garbage_streams_never_take_the_server_down() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let good = server.client().await;
    good.insert("canary", "alive").await.expect("insert");
    let (_endpoint, conn) = raw_connect(&server).await;
    // Deterministic pseudo-random mutations of valid frames, bounded in count.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200u64 {
        let mut bytes = BytesMut::new();
        for id in 0..8 {
            let op = match rand() % 4 {
                0 => Op::Insert {
                    key: Bytes::from(format!("k{id}")),
                    value: Bytes::from("v"),
                },
                1 => Op::Get {
                    key: Bytes::from("canary"),
                },
                2 => Op::Ping(Bytes::from(vec![7u8; (rand() % 64) as usize])),
                _ => Op::Delete {
                    key: Bytes::from(format!("k{id}")),
                },
            };
            protocol::encode_request(
                &Request {
                    id: round * 8 + id,
                    op,
                    session: None,
                },
                &mut bytes,
            );
        }
        for _ in 0..(rand() % 4) {
            let i = (rand() as usize) % bytes.len();
            bytes[i] = rand() as u8;
        }
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        send.write_all(&bytes).await.expect("write");
        let _ = send.finish();
        let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
            .await
            .expect("every garbage stream is answered or closed in time")
            .unwrap_or_default();
        let mut buf = BytesMut::from(&answer[..]);
        while let Some(resp) = protocol::decode_response(&mut buf, &Limits::default())
            .expect("server output is well formed")
        {
            let _ = resp;
        }
    }
    assert_eq!(
        good.get("canary").await.expect("server alive"),
        Some(Bytes::from("alive"))
    );
}

/// A client that goes silent (no requests, no keep-alives: dead or stuck) is dropped by the
/// connection idle timeout. Idle *streams* on a live connection are the design's long-lived lanes
/// and stay; they are bounded by `--max-streams` and `--max-connections`.
#[tokio::test]
async fn a_silent_client_connection_is_closed_by_the_idle_timeout() {
    let certs = fresh_certs();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--idle-timeout-ms", "300"],
    );
    let paths = CertPaths::new(certs.path());
    // No keep-alives from this client (an hour between them), a long idle timeout of its own: the
    // server's 300 ms is what applies.
    let cfg = tls::client_config_from_files(
        &paths.ca_cert(),
        Some((&paths.client_cert(), &paths.client_key())),
        protocol::ALPN,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .expect("config");
    let (_endpoint, conn) = common::raw_connection(server.addr, cfg).await;
    let started = std::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the silent connection must be closed");
    assert!(
        matches!(reason, quinn::ConnectionError::TimedOut),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    // The server dropped it too (the idle timeout is negotiated: both ends enforce it), and is fine.
    let c = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.status().await.expect("status");
        if status.connections == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server kept the silent connection: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
