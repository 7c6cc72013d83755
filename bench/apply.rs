//! Replication apply-path micro benchmark, without I/O: nanoseconds per write for
//!
//! - the primary's side: `Lanes::submit` (decide against overlay + store, encode the peer frame,
//!   queue it) followed by `Lanes::handle_ack` (apply to the store, answer the client), and
//! - the backup's side: decoding a data stream's `Put` frames and applying them (`StreamApplier::handle`),
//!
//! next to a plain `Store::insert` of the same keys as the reference (ratios in one run).
//! `cargo bench --bench apply` (add `-- --quick` for a smoke run). Best of 3 rounds.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use std::sync::mpsc;

use quickv_core::apply::StreamApplier;
use quickv_core::lanes::Lanes;
use quickv_core::store::{BucketId, Store, BUCKETS};
use quickv_proto::peer::PeerMsg;
use quickv_proto::{Limits, Op};
use quickv_server::replication::SubmitOneshot;

/// Rounds per figure; the best counts.
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 20_000 } else { 200_000 };
    let keys: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("key-{i:012}")))
        .collect();
    let value = Bytes::from(vec![b'v'; 100]);

    let reference = best(|| {
        let store = Store::new();
        let t = Instant::now();
        for k in &keys {
            store.insert(k.clone(), value.clone());
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });

    let primary = best(|| {
        let store = Store::new();
        let lanes = Lanes::default();
        let (txs, _rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::channel::<Bytes>()).unzip();
        lanes.enable(txs);
        let mut last = [0u64; BUCKETS];
        let t = Instant::now();
        for k in &keys {
            let op = Op::Insert {
                key: k.clone(),
                value: value.clone(),
            };
            if lanes.submit_stamped(&store, op, None, String::new).is_ok() {
                last[BucketId::of(k).index()] += 1;
            }
        }
        for b in BucketId::all() {
            // One cumulative ack per lane, as after a batch.
            let _ = lanes.handle_ack(&store, b, last[b.index()], Instant::now());
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(store.count(), n as u64);
        ns
    });

    // One pre-encoded data stream carrying every lane, as the backup reads it.
    let mut stream = BytesMut::new();
    let mut offsets = [0u64; BUCKETS];
    for k in &keys {
        let b = BucketId::of(k).index();
        offsets[b] += 1;
        PeerMsg::Put {
            offset: offsets[b],
            key: k.clone(),
            value: value.clone(),
            stamp: None,
        }
        .encode(&mut stream);
    }
    let limits = Limits::default();
    let backup = best(|| {
        let store = Store::new();
        let counters = quickv_core::Counters::default();
        let mut input = stream.clone();
        let mut lanes = StreamApplier::default();
        let t = Instant::now();
        // One clock read per batch, as the server's applier does (here the stream is one batch).
        let now = Instant::now();
        while let Ok(Some(msg)) = PeerMsg::decode(&mut input, &limits) {
            let _ = lanes.handle(msg, &store, &counters, now);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(store.count(), n as u64);
        ns
    });

    println!("{n} inserts, 16 B keys, 100 B values, best of {ROUNDS}");
    println!();
    println!("| path | ns per write | vs Store::insert |");
    println!("|---|---:|---:|");
    println!("| Store::insert (reference) | {reference:.0} | 1.00 |");
    println!(
        "| primary: submit + ack apply | {primary:.0} | {:.2} |",
        primary / reference
    );
    println!(
        "| backup: decode + apply | {backup:.0} | {:.2} |",
        backup / reference
    );
    Ok(())
}

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::INFINITY, f64::min)
}
