//! Call deadlines from an application's side, against a real `quickv` process that stops
//! answering (SIGSTOP): each call ends at its own deadline — a read as `Timeout`, a write as
//! `Indeterminate` — whatever else is in flight on the same stream, and the client carries on
//! after SIGCONT on the same connection.

mod common;

use std::time::Duration;

use quickv_client::{Client, ClientConfig, ClientError};

use common::{free_addr, fresh_certs, ServerProc, Stopped};

/// Upper bound on any single wait in these tests: a hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Waits (bounded) until `n` calls of `client` are written and awaited.
async fn until_in_flight(client: &Client, n: usize) {
    tokio::time::timeout(HANG_GUARD, async {
        while client.in_flight() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the calls never went out");
}

#[tokio::test]
async fn short_deadlines_end_on_time_behind_a_long_call_and_the_client_carries_on() {
    // One stream, so every call below shares it with the long call.
    let (_certs, server, client, before) = common::standalone_with_client(|certs| {
        ClientConfig::builder(certs)
            .streams(1)
            .timeout(Duration::from_secs(600))
            .build()
    })
    .await;

    let pid = server.child.id();
    let resume = Stopped::stop(pid);

    // A call with a long deadline goes first; those with short deadlines come after it and must
    // not wait for it.
    let long = {
        let c = client.clone();
        tokio::spawn(async move { c.get("k").await })
    };
    until_in_flight(&client, 1).await;

    let short = client.with_timeout(Duration::from_millis(200));
    let read = tokio::time::timeout(HANG_GUARD, short.get("k"))
        .await
        .expect("a read past its deadline hung");
    assert!(
        matches!(read, Err(ClientError::Timeout(ref msg)) if msg.contains("deadline")),
        "read on a stopped server: {read:?}"
    );
    let write = tokio::time::timeout(HANG_GUARD, short.update("k", "w"))
        .await
        .expect("a write past its deadline hung");
    assert!(
        matches!(write, Err(ClientError::Indeterminate(ref msg)) if msg.contains("deadline")),
        "write on a stopped server: {write:?}"
    );

    // Many at once, with different deadlines, all end, each with its kind's outcome.
    let many: Vec<_> = (0..40u64)
        .map(|i| {
            let c = client.with_timeout(Duration::from_millis(100 + 10 * (i % 7)));
            tokio::spawn(async move {
                match i % 2 {
                    0 => matches!(c.get("k").await, Err(ClientError::Timeout(_))),
                    _ => matches!(
                        c.insert(format!("new{i}"), "x").await,
                        Err(ClientError::Indeterminate(_))
                    ),
                }
            })
        })
        .collect();
    for call in many {
        let ok = tokio::time::timeout(HANG_GUARD, call)
            .await
            .expect("a call past its deadline hung")
            .expect("task");
        assert!(ok, "a call past its deadline ended with the wrong outcome");
    }
    // Only the long call is still awaited.
    assert_eq!(client.in_flight(), 1);
    assert!(
        !long.is_finished(),
        "the long call ended while the server was stopped"
    );

    drop(resume);
    // The long call gets its answer; the late answers to the expired calls are discarded and
    // the same connection serves on.
    let long = tokio::time::timeout(HANG_GUARD, long)
        .await
        .expect("the long call hung after SIGCONT")
        .expect("task");
    assert!(long.expect("long get").is_some());
    for _ in 0..20 {
        client.ping("p").await.expect("ping after SIGCONT");
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(
        client.status().await.expect("status").connections_total,
        before,
        "the client had to reconnect"
    );
}

#[tokio::test]
async fn a_call_without_deadline_waits_out_a_stopped_server() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let config = ClientConfig::builder(certs.path())
        .streams(2)
        .no_timeout()
        .build();
    let client = Client::connect(&server.addr.to_string(), &config)
        .await
        .expect("connect");
    client.insert("k", "v").await.expect("insert");

    let pid = server.child.id();
    let resume = Stopped::stop(pid);
    let waiting = {
        let c = client.clone();
        tokio::spawn(async move { c.get("k").await })
    };
    until_in_flight(&client, 1).await;
    // A short-deadline call on the same client ends; the one without a deadline does not.
    let short = client
        .with_timeout(Duration::from_millis(100))
        .get("k")
        .await;
    assert!(matches!(short, Err(ClientError::Timeout(_))), "{short:?}");
    assert!(!waiting.is_finished(), "a call without deadline gave up");
    drop(resume);
    let answer = tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("hung after SIGCONT")
        .expect("task");
    assert_eq!(answer.expect("get").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn callers_beyond_a_full_stream_wait_within_their_deadline_and_all_complete_later() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let config = ClientConfig::builder(certs.path())
        .streams(1)
        .no_timeout()
        .idle_timeout(Duration::from_secs(30))
        .build();
    let client = Client::connect(&server.addr.to_string(), &config)
        .await
        .expect("connect");
    let key = bytes::Bytes::from(vec![b'k'; 16 * 1024]);
    client.insert(key.clone(), "v").await.expect("insert");

    let pid = server.child.id();
    let resume = Stopped::stop(pid);
    // Far more than QUIC flow control lets through to a stopped server (16 KiB each, ~64 MiB
    // in all) plus what the client queues per stream: the rest must wait for room.
    const CALLS: usize = 4000;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (c, key) = (client.clone(), key.clone());
            tokio::spawn(async move { c.get(key).await })
        })
        .collect();
    until_in_flight(&client, 1000).await;
    // A call that finds the stream full still ends at its deadline.
    let short = client
        .with_timeout(Duration::from_millis(200))
        .get("x")
        .await;
    assert!(matches!(short, Err(ClientError::Timeout(_))), "{short:?}");
    assert!(
        client.in_flight() < CALLS,
        "every call was taken while the server could not read: no backpressure"
    );

    drop(resume);
    for call in calls {
        let got = tokio::time::timeout(HANG_GUARD, call)
            .await
            .expect("a waiting call never completed")
            .expect("task");
        assert_eq!(got.expect("get").as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn a_frame_held_back_by_flow_control_goes_out_whole_before_the_calls_queued_behind_it() {
    // One stream. 4 MiB is more than QUIC's stream flow control lets into quinn at once, so
    // part of the insert's frame waits for room; it must go out whole before the gets queued
    // meanwhile (any reordering garbles the stream and the server refuses it), whoever writes
    // it (the pipe's writer task; in round 8's tried variant, the caller itself).
    let (_certs, _server, client, _) = common::standalone_with_client(|certs| {
        ClientConfig::builder(certs)
            .streams(1)
            .no_timeout()
            .idle_timeout(Duration::from_secs(30))
            .build()
    })
    .await;
    let big = bytes::Bytes::from(vec![7u8; 4 * 1024 * 1024]);
    let insert = {
        let (c, big) = (client.clone(), big.clone());
        tokio::spawn(async move { c.insert("big", big).await })
    };
    until_in_flight(&client, 1).await;
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get("big").await })
        })
        .collect();
    tokio::time::timeout(HANG_GUARD, insert)
        .await
        .expect("the held-back insert never completed")
        .expect("task")
        .expect("insert");
    for get in gets {
        let got = tokio::time::timeout(HANG_GUARD, get)
            .await
            .expect("a get queued behind the held-back frame never completed")
            .expect("task")
            .expect("get");
        // Written after the insert on the same stream, so the server read them after it.
        assert_eq!(got.as_deref().map(<[u8]>::len), Some(big.len()));
    }
    assert_eq!(client.in_flight(), 0);
}
