//! The replicated write path as a client sees it on one pipelined stream (docs/protocol.md §6):
//! every request gets exactly one response, matched by id, whatever order the server answers in,
//! and the server finishes its side of the stream only once every request on it is answered —
//! including writes still waiting for the backup's ack when the client finished sending.
//!
//! Real processes (a primary + backup pair), real QUIC + TLS, raw frames: the test speaks the
//! protocol itself rather than through the client library.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::Pair;
use quickv_proto::{decode_response, encode_request, BucketId, Limits, Op, Reply, Request};

/// Keys written per round; enough to touch every one of the 32 buckets many times.
const KEYS: usize = 800;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("write-path-{i:05}"))
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("v{i}"))
}

/// The requests of one stream and the answer each must get. Per key, in stream order: insert
/// (ok), insert again (exists: it rests on the first, still in flight), and for odd keys delete
/// (the value) then update (not found). Each answer is fixed by the protocol, whether or not the
/// earlier writes of the key were acknowledged yet. Pings and a get of an absent key are answered
/// at once, between them.
fn script() -> Vec<(Request, Reply)> {
    let mut out = Vec::new();
    let mut id = 0u64;
    let mut push = |op: Op, reply: Reply| {
        id += 1;
        out.push((Request::new(id, op), reply));
    };
    for i in 0..KEYS {
        push(
            Op::Insert {
                key: key(i),
                value: value(i),
            },
            Reply::Ok,
        );
    }
    for i in 0..KEYS {
        push(
            Op::Insert {
                key: key(i),
                value: Bytes::from_static(b"second"),
            },
            Reply::Exists,
        );
        if i % 2 == 1 {
            push(Op::Delete { key: key(i) }, Reply::Value(value(i)));
            push(
                Op::Update {
                    key: key(i),
                    value: Bytes::from_static(b"late"),
                },
                Reply::NotFound,
            );
        }
        if i % 100 == 0 {
            push(
                Op::Ping(Bytes::from_static(b"p")),
                Reply::Value(Bytes::from_static(b"p")),
            );
            push(
                Op::Get {
                    key: Bytes::from_static(b"never-written"),
                },
                Reply::NotFound,
            );
        }
    }
    out
}

#[tokio::test]
async fn a_stream_of_writes_to_every_bucket_gets_each_answer_exactly_once() {
    let buckets: HashSet<BucketId> = (0..KEYS).map(|i| BucketId::of(&key(i))).collect();
    assert_eq!(buckets.len(), 32, "the keys must cover every bucket");
    let pair = Pair::start(&[]).await;
    let cfg = common::raw_client_config(pair.certs.path(), quickv_net::tls::Identity::Client);
    let (_endpoint, conn) = common::raw_connection(pair.primary_addr, cfg).await;
    let script = script();
    let expected: HashMap<u64, Reply> = script
        .iter()
        .map(|(req, reply)| (req.id, reply.clone()))
        .collect();
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
    let mut frames = BytesMut::new();
    for (req, _) in &script {
        encode_request(req, &mut frames);
    }
    // Write everything and finish at once, with the writes still in flight; read meanwhile, so
    // the server's in-flight limit can push back without deadlocking the test.
    let writer = tokio::spawn(async move {
        send.write_all(&frames).await.expect("write the requests");
        send.finish().expect("finish the sending side");
    });
    let bytes = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(64 << 20))
        .await
        .expect("the server must finish the stream once every request is answered")
        .expect("read the answers to the end of the stream");
    writer.await.expect("writer");
    let mut buf = BytesMut::from(&bytes[..]);
    let mut answered: HashMap<u64, Reply> = HashMap::new();
    while let Some(resp) = decode_response(&mut buf, &Limits::default()).expect("valid frames") {
        if let Some(earlier) = answered.insert(resp.id, resp.reply.clone()) {
            panic!(
                "request {} answered twice: {earlier:?} and {:?}",
                resp.id, resp.reply
            );
        }
    }
    assert!(buf.is_empty(), "the stream ended inside a frame");
    assert_eq!(
        answered.len(),
        expected.len(),
        "every request answered, none invented"
    );
    for (id, want) in &expected {
        assert_eq!(answered.get(id), Some(want), "answer to request {id}");
    }
    // What the answers said is what both servers hold: the even keys with their first value.
    let mut want: Vec<(Bytes, Bytes)> = (0..KEYS)
        .filter(|i| i % 2 == 0)
        .map(|i| (key(i), value(i)))
        .collect();
    want.sort();
    let mut dump = pair.assert_converged().await;
    dump.sort();
    assert_eq!(dump, want);
}

#[tokio::test]
async fn writes_in_flight_when_the_backup_dies_are_answered_not_dropped() {
    let mut pair = Pair::start(&[]).await; // ack timeout: 1 s by default
    let cfg = common::raw_client_config(pair.certs.path(), quickv_net::tls::Identity::Client);
    let (_endpoint, conn) = common::raw_connection(pair.primary_addr, cfg).await;
    // Freeze the backup: it stops acknowledging, and the writes below stay in flight.
    let backup_pid = pair.backup.as_ref().expect("backup").child.id();
    common::signal(backup_pid, "STOP");
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
    let mut frames = BytesMut::new();
    for i in 0..KEYS as u64 {
        let op = Op::Insert {
            key: key(i as usize),
            value: value(i as usize),
        };
        encode_request(&Request::new(i + 1, op), &mut frames);
    }
    send.write_all(&frames).await.expect("write the requests");
    send.finish().expect("finish the sending side");
    let bytes = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(64 << 20))
        .await
        .expect("the ack timeout must settle every waiting write")
        .expect("read the answers to the end of the stream");
    common::signal(backup_pid, "CONT");
    pair.kill_backup();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut ids = HashSet::new();
    while let Some(resp) = decode_response(&mut buf, &Limits::default()).expect("valid frames") {
        assert!(ids.insert(resp.id), "request {} answered twice", resp.id);
        // Sent to a backup that never acknowledged: indeterminate; or refused after the link
        // was declared lost: unavailable. Never `ok` — nothing was acknowledged.
        assert!(
            matches!(resp.reply, Reply::Indeterminate(_) | Reply::Unavailable(_)),
            "request {}: {:?}",
            resp.id,
            resp.reply
        );
    }
    assert_eq!(ids.len(), KEYS, "every request answered");
}
