//! Cost of the session record on the write path, without I/O: nanoseconds per write with and
//! without a session stamp, in the same run, on both sides of the pair:
//!
//! - primary: `Lanes::submit_stamped` (table lookup, decide, encode, queue) then `handle_ack`
//!   (apply, record the answer), against the same without a stamp (`Lanes::submit`);
//! - backup: decoding `Put` frames and applying them (`StreamApplier::handle`), stamped frames
//!   recording the answer in the bucket's session table, against unstamped frames.
//!
//! Each client session writes many keys, as a real client does. The reference, measured in the
//! same run and interleaved with the rest, is a bare flurry insert of the same entries (no digest,
//! no count, no lanes): issue 20's goal is stated against it (primary stamped ≤ 6×, backup stamped
//! ≤ 3×). `cargo bench --bench sessions` (add `-- --quick` for a smoke run). Best of 5 rounds per
//! figure, interleaved.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use std::sync::mpsc;

use quickv_core::apply::StreamApplier;
use quickv_core::lanes::Lanes;
use quickv_core::store::{BucketId, Store, BUCKETS};
use quickv_proto::peer::PeerMsg;
use quickv_proto::{Limits, Op, SessionWrite, WriteStamp};
use quickv_server::replication::SubmitOneshot;

/// Rounds per figure; the best counts.
const ROUNDS: usize = 5;
/// Client sessions the writes are spread over.
const SESSIONS: u64 = 64;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 20_000 } else { 200_000 };
    let keys: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("key-{i:012}")))
        .collect();
    let value = Bytes::from(vec![b'v'; 100]);
    let stamp_of = |i: usize| WriteStamp::new(1 + i as u64 % SESSIONS, 1 + (i as u64 / SESSIONS));

    let primary = |stamped: bool| {
        let store = Store::new();
        let lanes = Lanes::default();
        let (txs, _rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::channel::<Bytes>()).unzip();
        lanes.enable(txs);
        let mut last = [0u64; BUCKETS];
        let t = Instant::now();
        for (i, k) in keys.iter().enumerate() {
            let op = Op::Insert {
                key: k.clone(),
                value: value.clone(),
            };
            let session = stamped.then(|| SessionWrite {
                stamp: stamp_of(i),
                age_ms: 0,
            });
            if lanes
                .submit_stamped(&store, op, session, String::new)
                .is_ok()
            {
                last[BucketId::of(k).index()] += 1;
            }
        }
        for b in BucketId::all() {
            let _ = lanes.handle_ack(&store, b, last[b.index()], Instant::now());
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(store.count(), n as u64);
        ns
    };

    let stream = |stamped: bool| {
        let mut stream = BytesMut::new();
        let mut offsets = [0u64; BUCKETS];
        for (i, k) in keys.iter().enumerate() {
            let b = BucketId::of(k).index();
            offsets[b] += 1;
            PeerMsg::Put {
                offset: offsets[b],
                key: k.clone(),
                value: value.clone(),
                stamp: stamped.then(|| stamp_of(i)),
            }
            .encode(&mut stream);
        }
        stream
    };
    let (plain_stream, stamped_stream) = (stream(false), stream(true));
    let limits = Limits::default();
    let backup = |input: &BytesMut| {
        let store = Store::new();
        let counters = quickv_core::Counters::default();
        let mut input = input.clone();
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
    };

    let bare = || {
        let map = flurry::HashMap::<Bytes, Bytes>::new();
        let guard = map.guard();
        let t = Instant::now();
        for k in &keys {
            map.insert(k.clone(), value.clone(), &guard);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(map.len(), n);
        ns
    };

    let mut best = [f64::INFINITY; 5];
    for _ in 0..ROUNDS {
        // Interleaved, so a noisy moment hurts both sides of a comparison alike.
        best[4] = best[4].min(bare());
        best[0] = best[0].min(primary(false));
        best[1] = best[1].min(primary(true));
        best[2] = best[2].min(backup(&plain_stream));
        best[3] = best[3].min(backup(&stamped_stream));
    }
    let [p0, p1, b0, b1, r] = best;
    println!("{n} inserts, 16 B keys, 100 B values, {SESSIONS} sessions, best of {ROUNDS}");
    println!();
    println!(
        "| path | unstamped ns/write | stamped ns/write | cost of the record | stamped vs bare flurry insert |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| bare flurry insert (reference) | {r:.0} | | | 1.00 |");
    println!(
        "| primary: submit + ack apply | {p0:.0} | {p1:.0} | {:+.0} ns ({:+.0} %) | {:.2} (goal ≤ 6) |",
        p1 - p0,
        (p1 / p0 - 1.0) * 100.0,
        p1 / r
    );
    println!(
        "| backup: decode + apply | {b0:.0} | {b1:.0} | {:+.0} ns ({:+.0} %) | {:.2} (goal ≤ 3) |",
        b1 - b0,
        (b1 / b0 - 1.0) * 100.0,
        b1 / r
    );
}
