//! Codec micro benchmark: nanoseconds to encode and to decode one frame of each common kind.
//!
//! Run with `cargo bench --bench codec` (add `-- --quick` for a smoke run). A plain `main`
//! (harness = false) like `bench/store.rs`: no criterion, so `cargo test`/`clippy` stay quick.
//!
//! Each figure is the best of [`ROUNDS`] rounds of encoding (or decoding) a batch of frames into one
//! buffer, the way a stream's writer batches answers and its reader takes frames off one read
//! buffer, divided by the number of frames. Best-of filters out other tenants of a shared machine;
//! compare figures from one run, not across runs.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quickv_proto::{
    decode_request, decode_response, encode_request, encode_response, Limits, Op, Reply, Request,
    Response,
};

/// Frames per batch.
const BATCH: usize = 1024;
/// Batches per round in the full run.
const BATCHES_FULL: usize = 2_000;
/// Batches per round with `--quick`.
const BATCHES_QUICK: usize = 100;
/// Rounds per figure; the best counts.
const ROUNDS: usize = 3;
/// Key length, bytes (as `quickv bench` keys).
const KEY_BYTES: usize = 16;
/// Value length, bytes (as the comparison matrix).
const VALUE_BYTES: usize = 100;

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; ignore flags we do not know.
    let quick = std::env::args().any(|a| a == "--quick");
    let batches = if quick { BATCHES_QUICK } else { BATCHES_FULL };
    let key = Bytes::from(vec![b'k'; KEY_BYTES]);
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let limits = Limits::default();

    let requests = [
        ("get", Op::Get { key: key.clone() }),
        (
            "insert 100 B",
            Op::Insert {
                key: key.clone(),
                value: value.clone(),
            },
        ),
        (
            "update 100 B",
            Op::Update {
                key: key.clone(),
                value: value.clone(),
            },
        ),
        ("delete", Op::Delete { key: key.clone() }),
        ("ping 100 B", Op::Ping(value.clone())),
    ];
    let replies = [
        ("value 100 B", Reply::Value(value.clone())),
        ("ok", Reply::Ok),
        ("not found", Reply::NotFound),
        ("unavailable", Reply::Unavailable("not in sync".into())),
    ];

    println!("{BATCH}-frame batches × {batches}, best of {ROUNDS} rounds; {KEY_BYTES} B keys\n");
    println!("| frame | bytes | encode ns | decode ns |");
    println!("|---|---:|---:|---:|");
    for (name, op) in requests {
        let req = Request {
            id: 42,
            op,
            session: None,
        };
        let (bytes, enc, dec) = measure(
            batches,
            |buf| encode_request(black_box(&req), buf),
            |buf| decode_request(buf, &limits).ok().flatten().is_some(),
        )?;
        println!("| request {name} | {bytes} | {enc:.1} | {dec:.1} |");
    }
    for (name, reply) in replies {
        let resp = Response { id: 42, reply };
        let (bytes, enc, dec) = measure(
            batches,
            |buf| encode_response(black_box(&resp), buf),
            |buf| decode_response(buf, &limits).ok().flatten().is_some(),
        )?;
        println!("| response {name} | {bytes} | {enc:.1} | {dec:.1} |");
    }
    Ok(())
}

/// Encodes `BATCH` frames into a buffer and decodes them all back, `batches` times per round.
/// Returns the frame size and the best encode and decode time per frame, in nanoseconds.
fn measure(
    batches: usize,
    mut encode: impl FnMut(&mut BytesMut),
    mut decode: impl FnMut(&mut BytesMut) -> bool,
) -> anyhow::Result<(usize, f64, f64)> {
    let mut buf = BytesMut::with_capacity(BATCH * 256);
    encode(&mut buf);
    let frame_bytes = buf.len();
    let (mut best_enc, mut best_dec) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        let (mut enc_ns, mut dec_ns) = (0u128, 0u128);
        for _ in 0..batches {
            buf.clear();
            let started = Instant::now();
            for _ in 0..BATCH {
                encode(&mut buf);
            }
            enc_ns += started.elapsed().as_nanos();
            // Decoding splits frames off the front, as a stream reader does.
            let mut input = buf.split();
            let started = Instant::now();
            let mut decoded = 0;
            while decode(&mut input) {
                decoded += 1;
            }
            dec_ns += started.elapsed().as_nanos();
            anyhow::ensure!(
                decoded == BATCH,
                "decoded {decoded} of {BATCH} frames: the codec lost frames"
            );
            black_box(&input);
        }
        let frames = (batches * BATCH) as f64;
        best_enc = best_enc.min(enc_ns as f64 / frames);
        best_dec = best_dec.min(dec_ns as f64 / frames);
    }
    Ok((frame_bytes, best_enc, best_dec))
}
