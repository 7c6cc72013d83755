//! End-to-end tests of one standalone server: the real binary, real QUIC, real mutual TLS.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quickv_client::{Client, ClientConfig, ClientError};
use quickv_net::tls::{self, CertPaths};
use quickv_proto::{self as protocol, ErrorCode, Limits, Op, Reply, Request};

use common::{cli, free_addr, fresh_certs, ServerProc};

fn standalone(certs: &std::path::Path, extra: &[&str]) -> ServerProc {
    ServerProc::start("standalone", free_addr(), certs, extra)
}

#[tokio::test]
async fn every_op_and_result_kind() {
    let certs = fresh_certs();
    let server = standalone(certs.path(), &["--max-key", "16", "--max-value", "64"]);
    let c = server.client().await;
    assert!(
        c.server_info().contains("role=standalone"),
        "{}",
        c.server_info()
    );

    assert_eq!(c.ping("hi").await.expect("ping"), Bytes::from_static(b"hi"));
    c.insert("k1", "v1").await.expect("insert");
    assert_eq!(c.insert("k1", "other").await, Err(ClientError::Exists));
    assert_eq!(c.get("k1").await.expect("get").as_deref(), Some(&b"v1"[..]));
    c.update("k1", "v2").await.expect("update");
    assert_eq!(c.update("nope", "x").await, Err(ClientError::NotFound));
    assert_eq!(c.get("nope").await.expect("get missing"), None);
    c.insert("k2", "v").await.expect("insert k2");
    assert_eq!(c.count().await.expect("count"), 2);
    let dump = c.dump().await.expect("dump");
    assert_eq!(
        dump,
        vec![
            (Bytes::from("k1"), Bytes::from("v2")),
            (Bytes::from("k2"), Bytes::from("v"))
        ]
    );
    assert_eq!(c.delete("k1").await.expect("delete"), Bytes::from("v2"));
    assert_eq!(c.delete("k1").await, Err(ClientError::NotFound));
    let status = c.status().await.expect("status");
    assert_eq!(status.role, "standalone");
    assert_eq!(status.keys, 1);
    assert_eq!(status.state, "serving");

    // Limits: a key over --max-key and a value over --max-value are errors, the stream goes on.
    match c.insert("a-key-longer-than-16", "v").await {
        Err(ClientError::Server {
            code: ErrorCode::KeyTooLarge,
            message,
        }) => {
            assert!(message.contains("16"), "{message}")
        }
        other => panic!("expected key too large, got {other:?}"),
    }
    match c.insert("k", vec![b'x'; 65]).await {
        Err(ClientError::Server {
            code: ErrorCode::ValueTooLarge,
            ..
        }) => {}
        other => panic!("expected value too large, got {other:?}"),
    }
    match c.call(Op::Hello { version: 999 }).await.expect("hello") {
        Reply::Error {
            code: ErrorCode::UnsupportedVersion,
            ..
        } => {}
        other => panic!("expected unsupported version, got {other:?}"),
    }
    assert_eq!(c.count().await.expect("count after errors"), 1);
}

/// A backup whose primary never came: it refuses writes, and refuses reads too, because its store
/// is not known to be current (it has never synced).
#[tokio::test]
async fn a_lone_backup_refuses_writes_and_unsynced_reads() {
    let certs = fresh_certs();
    let peer = free_addr();
    let server = ServerProc::start(
        "backup",
        free_addr(),
        certs.path(),
        &["--peer", &peer.to_string()],
    );
    let c = server.client().await;
    match c.insert("k", "v").await {
        Err(ClientError::Unavailable(reason)) => assert!(reason.contains("backup"), "{reason}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    match c.count().await {
        Err(ClientError::Unavailable(reason)) => {
            assert!(reason.contains("not yet synced"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(c.status().await.expect("status").state, "cold_start");
}

#[tokio::test]
async fn fifty_tasks_pipeline_two_hundred_ops_each_through_one_client() {
    let certs = fresh_certs();
    let server = standalone(certs.path(), &[]);
    let c = server.client().await;
    let mut tasks = Vec::new();
    for t in 0..50u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Each task owns 50 keys and runs insert → get → update → delete on each: 200 ops.
            let keys: Vec<String> = (0..50).map(|i| format!("t{t}-k{i}")).collect();
            let ins = keys.iter().map(|k| c.insert(k.clone(), format!("{k}=1")));
            for r in futures_util::future::join_all(ins).await {
                r.expect("insert");
            }
            let gets = keys.iter().map(|k| c.get(k.clone()));
            for (k, r) in keys.iter().zip(futures_util::future::join_all(gets).await) {
                assert_eq!(r.expect("get"), Some(Bytes::from(format!("{k}=1"))));
            }
            let ups = keys.iter().map(|k| c.update(k.clone(), format!("{k}=2")));
            for r in futures_util::future::join_all(ups).await {
                r.expect("update");
            }
            let dels = keys.iter().map(|k| c.delete(k.clone()));
            for (k, r) in keys.iter().zip(futures_util::future::join_all(dels).await) {
                assert_eq!(r.expect("delete"), Bytes::from(format!("{k}=2")));
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(c.count().await.expect("count"), 0);
    let status = c.status().await.expect("status");
    assert!(status.requests >= 10_000);
}

/// Opens a raw stream with the real client certificate and writes `bytes`; returns what came back.
async fn raw_exchange(server: &ServerProc, bytes: &[u8]) -> Vec<protocol::Response> {
    let cfg = common::raw_client_config(&server.certs, tls::Identity::Client);
    let (_endpoint, conn) = common::raw_connection(server.addr, cfg).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_all(bytes).await.expect("write");
    let _ = send.finish();
    let data = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("server answered or closed the stream in time")
        .unwrap_or_default();
    let mut buf = BytesMut::from(&data[..]);
    let mut out = Vec::new();
    while let Ok(Some(resp)) = protocol::decode_response(&mut buf, &Limits::default()) {
        out.push(resp);
    }
    out
}

#[tokio::test]
async fn garbage_and_oversized_frames_end_only_their_stream() {
    let certs = fresh_certs();
    let server = standalone(certs.path(), &[]);
    let good = server.client().await;
    good.insert("before", "1").await.expect("insert");

    // A frame claiming 4 GiB: invalid at once; the stream is broken (docs/protocol.md §8): no
    // answer, since no request was decoded (the STOP_SENDING is checked in tests/hostile_wire.rs).
    let answers = raw_exchange(&server, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(answers.is_empty(), "{answers:?}");
    // Random garbage: whatever the server says, it says it as frames, and it keeps serving.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = raw_exchange(&server, &garbage).await;
    // An unknown op inside a well-formed frame is answered by id and the next frame still works.
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&9u32.to_be_bytes());
    bytes.extend_from_slice(&[0x7f]);
    bytes.extend_from_slice(&77u64.to_be_bytes());
    protocol::encode_request(
        &Request {
            id: 78,
            op: Op::Count,
            session: None,
        },
        &mut bytes,
    );
    let answers = raw_exchange(&server, &bytes).await;
    assert!(
        matches!(
            &answers[..],
            [
                protocol::Response {
                    id: 77,
                    reply: Reply::Error {
                        code: ErrorCode::UnknownOp,
                        ..
                    }
                },
                protocol::Response {
                    id: 78,
                    reply: Reply::Count(1)
                },
            ]
        ),
        "{answers:?}"
    );
    // A stream cut inside a frame.
    let mut cut = BytesMut::new();
    protocol::encode_request(
        &Request {
            id: 5,
            op: Op::Get {
                key: Bytes::from("before"),
            },
            session: None,
        },
        &mut cut,
    );
    let answers = raw_exchange(&server, &cut[..cut.len() - 2]).await;
    assert!(
        answers.is_empty(),
        "a cut frame is not a request: {answers:?}"
    );

    assert_eq!(
        good.get("before").await.expect("still serving").as_deref(),
        Some(&b"1"[..])
    );
    let status = good.status().await.expect("status");
    assert!(status.bad_frames >= 3, "{status:?}");
}

#[tokio::test]
async fn clients_without_a_cluster_certificate_are_refused_in_plain_words() {
    let certs = fresh_certs();
    let server = standalone(certs.path(), &[]);
    let paths = CertPaths::new(certs.path());
    let cfg = ClientConfig::new(certs.path());

    // No client certificate at all.
    let none = tls::client_config_from_files(
        &paths.ca_cert(),
        None,
        protocol::ALPN,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("config");
    let err = Client::connect_with(&server.addr.to_string(), none, &cfg)
        .await
        .expect_err("must be refused");
    assert_eq!(
        err,
        ClientError::Connection(
            "the server refused this client's certificate: no client certificate".into()
        )
    );

    // A certificate from another CA (trusting the right server CA, so only the client side is wrong).
    let other = fresh_certs();
    let other_paths = CertPaths::new(other.path());
    let foreign = tls::client_config_from_files(
        &paths.ca_cert(),
        Some((&other_paths.client_cert(), &other_paths.client_key())),
        protocol::ALPN,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("config");
    let err = Client::connect_with(&server.addr.to_string(), foreign, &cfg)
        .await
        .expect_err("must be refused");
    assert_eq!(
        err,
        ClientError::Connection("the server refused this client's certificate: unknown CA".into())
    );

    // The CLI says the same and exits 2.
    let (code, _, stderr) = cli(server.addr, other.path(), &["count"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("TLS handshake failed") || stderr.contains("refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_exits_zero() {
    let certs = fresh_certs();
    let mut server = standalone(certs.path(), &[]);
    let c = server.client().await;
    let inserts: Vec<_> = (0..2000).map(|i| c.insert(format!("k{i}"), "v")).collect();
    let (results, shut) = tokio::join!(futures_util::future::join_all(inserts), async {
        let admin = server.client().await;
        admin.shutdown().await
    });
    shut.expect("shutdown acknowledged");
    // Every insert gets an answer: done, refused because the server is stopping, indeterminate
    // (sent, answer lost with the stream), or never sent (connection error) - nothing hangs.
    let mut done = 0;
    for r in &results {
        match r {
            Ok(()) => done += 1,
            Err(
                ClientError::Indeterminate(_)
                | ClientError::Unavailable(_)
                | ClientError::Connection(_),
            ) => {}
            other => panic!("unexpected answer during shutdown: {other:?}"),
        }
    }
    assert!(done > 0, "no insert completed before the shutdown");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let certs = fresh_certs();
    let mut server = standalone(certs.path(), &[]);
    let c = server.client().await;
    c.insert("k", "v").await.expect("insert");
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn cli_exit_codes_and_output() {
    let certs = fresh_certs();
    let server = standalone(certs.path(), &[]);
    let dir = certs.path();
    assert_eq!(cli(server.addr, dir, &["insert", "a", "1"]).0, 0);
    let (code, _, stderr) = cli(server.addr, dir, &["insert", "a", "2"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(cli(server.addr, dir, &["get", "a"]).1.trim(), "1");
    let (code, out, _) = cli(server.addr, dir, &["dump"]);
    assert_eq!(code, 0);
    let dump: serde_json::Value = serde_json::from_str(&out).expect("dump is JSON");
    assert_eq!(dump, serde_json::json!({"a": "1"}));
    let (code, out, _) = cli(server.addr, dir, &["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(status["keys"], 1);
    assert_eq!(cli(server.addr, dir, &["delete", "a"]).1.trim(), "1");
    assert_eq!(cli(server.addr, dir, &["get", "a"]).0, 1);
    assert_eq!(cli(server.addr, dir, &["frobnicate"]).0, 2);
    // Nobody listening: a connection error, exit 2, one line saying so.
    let (code, _, stderr) = cli(free_addr(), dir, &["count"]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn a_client_reconnects_by_itself_after_the_server_restarts() {
    let certs = fresh_certs();
    let addr = free_addr();
    let mut server = ServerProc::start("standalone", addr, certs.path(), &[]);
    let mut cfg = ClientConfig::new(certs.path());
    cfg.idle_timeout = Duration::from_secs(2);
    cfg.connect_timeout = Duration::from_millis(500);
    let c = Client::connect(&addr.to_string(), &cfg)
        .await
        .expect("connect");
    c.insert("before", "restart").await.expect("insert");
    server.kill();
    let _restarted = ServerProc::start("standalone", addr, certs.path(), &[]);
    // The first calls may fail (the old connection is found dead on use); the same Client must
    // then dial again by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut failures = 0;
    let count = loop {
        match c.count().await {
            Ok(n) => break n,
            Err(ClientError::Connection(_)) => failures += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reconnected ({failures} failures)"
        );
    };
    assert_eq!(count, 0, "a restarted standalone server is empty");
    c.insert("after", "restart")
        .await
        .expect("writes work on the new connection");
    assert!(failures <= 3, "reconnection took {failures} failed calls");
}
