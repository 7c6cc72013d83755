//! Full-resync pipeline without I/O: where a bootstrap's CPU goes, phase by phase, for N keys of
//! 16 bytes with 100-byte values (the 1M × 116 B case of issue 13).
//!
//! The sender's half as a live sender runs it (`transfer::encode_bucket`: one walk of the map writing
//! the frames and summing the digest) and in the message form the simulator uses
//! (`transfer::bucket_msgs`, then encoding the frames; the two must give the same bytes), decoding them, and the receiver's half (`TransferReceiver`: bucket check, digest, replace in an
//! empty store, i.e. a restarted server) are timed one after the other over every bucket, next to a
//! plain `Store::put` of the same entries into an empty store as the reference (ratios in one run).
//! MB/s counts key + value bytes, as the primary's log does.
//!
//! `cargo bench --bench resync` (1M keys) or `cargo bench --bench resync -- --quick` (100k).
//! Best of 3 rounds per phase.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use quickv_core::store::{BucketId, Store};
use quickv_core::transfer::{bucket_msgs, encode_bucket, TransferReceiver};
use quickv_proto::peer::PeerMsg;
use quickv_proto::Limits;

/// Rounds per figure; the best counts.
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let limits = Limits::default();
    let source = Store::new();
    let value = vec![b'v'; 100];
    for i in 0..n {
        source.put(
            Bytes::from(format!("k{i:015}")),
            Bytes::copy_from_slice(&value),
        );
    }
    let stored_mb = (n * (16 + 100)) as f64 / 1e6;
    println!("resync pipeline, {n} keys × 116 B = {stored_mb:.1} MB, best of {ROUNDS} rounds");

    let reference = best(|| {
        let entries: Vec<_> = BucketId::all()
            .flat_map(|b| source.bucket_snapshot(b))
            .collect();
        let fresh = Store::new();
        let t = Instant::now();
        for (k, v) in entries {
            fresh.put(k, v);
        }
        t.elapsed().as_secs_f64()
    });
    let build = best(|| {
        let t = Instant::now();
        let mut msgs = 0usize;
        for b in BucketId::all() {
            msgs += bucket_msgs(&source, b, &limits, Instant::now()).0.len();
        }
        assert!(msgs > 32);
        t.elapsed().as_secs_f64()
    });
    let mut live = Vec::new();
    let sender = best(|| {
        let t = Instant::now();
        let frames: Vec<Bytes> = BucketId::all()
            .map(|b| encode_bucket(&source, b, &limits, Instant::now()).0)
            .collect();
        let secs = t.elapsed().as_secs_f64();
        live = frames;
        secs
    });
    let mut live: BytesMut = live.iter().flat_map(|f| f.iter().copied()).collect();
    let all: Vec<PeerMsg> = BucketId::all()
        .flat_map(|b| bucket_msgs(&source, b, &limits, Instant::now()).0)
        .chain(std::iter::once(PeerMsg::TransferDone))
        .collect();
    let mut wire = BytesMut::new();
    let encode = best(|| {
        let t = Instant::now();
        let mut out = BytesMut::new();
        for m in &all {
            m.encode(&mut out);
        }
        let secs = t.elapsed().as_secs_f64();
        wire = out;
        secs
    });
    let wire_mb = wire.len() as f64 / 1e6;
    let mut decoded = Vec::new();
    let decode = best(|| {
        let mut buf = wire.clone();
        let t = Instant::now();
        let mut msgs = Vec::with_capacity(all.len());
        while let Ok(Some(m)) = PeerMsg::decode(&mut buf, &limits) {
            msgs.push(m);
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(msgs.len(), all.len(), "every message decodes");
        decoded = msgs;
        secs
    });
    let receive = best(|| {
        let msgs = decoded.clone();
        let fresh = Store::new();
        let mut rx = TransferReceiver::default();
        let t = Instant::now();
        let mut verdict = None;
        for m in msgs {
            verdict = rx.handle(m, &fresh, Instant::now());
            if verdict.is_some() {
                break;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(verdict, Some(Ok(())));
        assert_eq!(fresh.count(), n as u64);
        secs
    });
    PeerMsg::TransferDone.encode(&mut live);
    // Same frames (link's unit test checks the bytes); only the session table's ages differ here.
    assert_eq!(
        live.len(),
        wire.len(),
        "the live sender writes the same frames"
    );
    println!("wire bytes {wire_mb:.1} MB in {} messages", all.len());
    println!("| phase | s | MB/s | × Store::put into an empty store |");
    println!("|---|---|---|---|");
    for (name, secs) in [
        ("reference: Store::put × N (empty store)", reference),
        (
            "sender, message form: bucket_msgs (snapshot, digest, chunks)",
            build,
        ),
        ("sender, message form: encode peer frames", encode),
        ("sender, live: encode_bucket (walk, digest, frames)", sender),
        ("decode peer frames", decode),
        (
            "receiver: TransferReceiver (check, digest, replace)",
            receive,
        ),
    ] {
        println!(
            "| {name} | {secs:.3} | {:.0} | {:.2} |",
            stored_mb / secs,
            secs / reference
        );
    }
    let total = sender + decode + receive;
    println!(
        "| live sender + decode + receiver, one core | {total:.3} | {:.0} | {:.2} |",
        stored_mb / total,
        total / reference
    );
    Ok(())
}

/// Runs `f` `ROUNDS` times and keeps the fastest.
fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::INFINITY, f64::min)
}
