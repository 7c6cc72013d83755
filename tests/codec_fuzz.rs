//! A long randomized run against the sans-IO codecs: mutated valid frames and raw noise, decoded
//! as client requests, client responses and peer messages. Nothing may panic, an incomplete
//! answer must consume nothing, and decoding must always make progress or stop.
//!
//! `cargo test --release --test codec_fuzz` runs 200 000 cases; set `QUICKV_FUZZ_CASES` for more
//! (docs/reliability.md gives the million-case run).

use bytes::{Bytes, BytesMut};
use quickv_proto::peer::PeerMsg;
use quickv_proto::{
    decode_request, decode_response, encode_request, encode_response, Limits, Op, Reply, Request,
    Response,
};

/// xorshift64*: deterministic, so a failing case can be replayed from its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_frames(rng: &mut Rng) -> BytesMut {
    let mut buf = BytesMut::new();
    let key = Bytes::from(vec![b'k'; rng.below(40)]);
    let value = Bytes::from(vec![b'v'; rng.below(200)]);
    for id in 0..(1 + rng.below(4) as u64) {
        match rng.below(4) {
            0 => encode_request(
                &Request {
                    id,
                    op: Op::Insert {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    session: None,
                },
                &mut buf,
            ),
            1 => encode_request(
                &Request {
                    id,
                    op: Op::Get { key: key.clone() },
                    session: None,
                },
                &mut buf,
            ),
            2 => encode_response(
                &Response {
                    id,
                    reply: Reply::DumpChunk {
                        entries: vec![(key.clone(), value.clone())],
                        last: true,
                    },
                },
                &mut buf,
            ),
            _ => PeerMsg::Put {
                offset: id + 1,
                key: key.clone(),
                value: value.clone(),
                stamp: None,
            }
            .encode(&mut buf),
        }
    }
    buf
}

fn mutate(rng: &mut Rng, buf: &mut BytesMut) {
    for _ in 0..(1 + rng.below(4)) {
        if buf.is_empty() {
            buf.extend_from_slice(&rng.next().to_be_bytes());
            continue;
        }
        let i = rng.below(buf.len());
        match rng.below(5) {
            0 => buf[i] ^= 1 << rng.below(8),
            1 => buf[i] = rng.next() as u8,
            2 => buf.truncate(i),
            3 => buf.extend_from_slice(&rng.next().to_le_bytes()[..rng.below(8)]),
            _ => {
                // Rewrite a length prefix with something plausible-but-wrong.
                let j = i.min(buf.len().saturating_sub(4));
                let len = (rng.next() % 600) as u32;
                if buf.len() >= j + 4 {
                    buf[j..j + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
        }
    }
}

/// Decodes until stuck; checks "incomplete consumes nothing" and progress.
fn drain<T, E>(mut buf: BytesMut, decode: impl Fn(&mut BytesMut) -> Result<Option<T>, E>) -> usize {
    let mut frames = 0;
    loop {
        let before = buf.len();
        match decode(&mut buf) {
            Ok(Some(_)) => {
                assert!(buf.len() < before, "a decoded frame consumed nothing");
                frames += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                return frames;
            }
            Err(_) => return frames,
        }
    }
}

#[test]
fn mutated_and_random_frames_never_panic() {
    let cases: u64 = std::env::var("QUICKV_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let limits = Limits::new(64, 256);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut decoded = 0usize;
    for _ in 0..cases {
        let mut buf = if rng.below(8) == 0 {
            let n = rng.below(64);
            BytesMut::from(&(0..n).map(|_| rng.next() as u8).collect::<Vec<_>>()[..])
        } else {
            seed_frames(&mut rng)
        };
        mutate(&mut rng, &mut buf);
        decoded += drain(buf.clone(), |b| decode_request(b, &limits));
        decoded += drain(buf.clone(), |b| decode_response(b, &limits));
        decoded += drain(buf, |b| PeerMsg::decode(b, &limits));
    }
    // The mutations leave many frames intact: the run exercised the success paths too.
    assert!(
        decoded as u64 > cases / 4,
        "only {decoded} frames decoded in {cases} cases"
    );
    println!("{cases} cases, {decoded} frames decoded, no panic");
}
