//! The peer codec: round trips, incomplete prefixes, hostile frames, and the chunker.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::{BucketId, Digest, Limits, WriteStamp, BUCKETS};

#[test]
fn a_replicated_remove_of_a_key_over_the_limit_is_invalid() {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    PeerMsg::Remove {
        offset: 1,
        key: Bytes::from(vec![b'k'; limits.max_key + 1]),
        stamp: None,
    }
    .encode(&mut buf);
    assert!(PeerMsg::decode(&mut buf, &limits).is_err());
}

#[test]
fn the_chunk_writer_writes_the_bytes_of_split_entries_whatever_is_taken_meanwhile() {
    let entries: Vec<(Bytes, Bytes)> = (0..300usize)
        .map(|i| {
            let key = Bytes::from(format!("key-{i}"));
            let value = Bytes::from(vec![i as u8; (i * 37) % 700]);
            (key, value)
        })
        .collect();
    for budget in [1, 64, 500, 4096, 1 << 20] {
        let mut expected = BytesMut::new();
        for chunk in split_entries(entries.clone(), budget) {
            PeerMsg::BucketChunk(chunk).encode(&mut expected);
        }
        let mut writer = ChunkWriter::new(budget);
        let (mut buf, mut sent) = (BytesMut::new(), BytesMut::new());
        for (i, (k, v)) in entries.iter().enumerate() {
            writer.push(&mut buf, k, v);
            if i % 7 == 0 {
                sent.extend_from_slice(&writer.take_sealed(&mut buf));
            }
        }
        writer.close(&mut buf);
        sent.extend_from_slice(&writer.take_sealed(&mut buf));
        assert!(buf.is_empty());
        assert_eq!(sent, expected, "budget {budget}");
        let mut decoded = Vec::new();
        while let Some(PeerMsg::BucketChunk(chunk)) =
            PeerMsg::decode(&mut sent, &Limits::default()).expect("valid frames")
        {
            decoded.extend(chunk);
        }
        assert_eq!(decoded, entries, "budget {budget}");
    }
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn any_stamp() -> impl Strategy<Value = Option<WriteStamp>> {
    proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(owner, session, seq)| WriteStamp {
            owner,
            session,
            seq,
        },
    ))
}

fn any_msg() -> impl Strategy<Value = PeerMsg> {
    let bucket = (0..BUCKETS).prop_map(|i| BucketId::new(i).expect("in range"));
    let digest = any::<u128>().prop_map(Digest);
    prop_oneof![
        (
            any::<bool>(),
            any::<u64>(),
            (any::<u64>(), any::<u64>()),
            any::<bool>(),
            any::<u64>(),
            any::<u128>()
        )
            .prop_map(|(primary, run_id, (pair, epoch), synced, keys, d)| {
                PeerMsg::Hello(Box::new(PeerHello {
                    primary,
                    run_id,
                    pair,
                    epoch,
                    synced,
                    keys,
                    digests: std::array::from_fn(|i| Digest(d.wrapping_add(i as u128))),
                }))
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(run, epoch, offset)| {
            PeerMsg::Applied(Box::new(std::array::from_fn(|i| LaneMark {
                primary_run: run,
                epoch: epoch.wrapping_add(i as u64 % 2),
                offset: offset.wrapping_add(i as u64),
            })))
        }),
        bucket.clone().prop_map(PeerMsg::BucketBegin),
        proptest::collection::vec((any_bytes(), any_bytes()), 0..5).prop_map(PeerMsg::BucketChunk),
        (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, count, digest)| {
            PeerMsg::BucketEnd {
                bucket,
                count,
                digest,
            }
        }),
        Just(PeerMsg::TransferDone),
        (any::<bool>(), "[a-z ]{0,20}")
            .prop_map(|(ok, reason)| PeerMsg::TransferAck { ok, reason }),
        Just(PeerMsg::Synced),
        "[a-z ]{0,20}".prop_map(PeerMsg::Goodbye),
        (any::<u64>(), any_bytes(), any_bytes(), any_stamp()).prop_map(
            |(offset, key, value, stamp)| PeerMsg::Put {
                offset,
                key,
                value,
                stamp
            }
        ),
        (any::<u64>(), any_bytes(), any_stamp()).prop_map(|(offset, key, stamp)| PeerMsg::Remove {
            offset,
            key,
            stamp
        }),
        (
            any::<(u64, u64, u64, u64, u64)>(),
            proptest::option::of(any_bytes()),
            any::<bool>()
        )
            .prop_map(|((owner, session, seq, floor, idle_ms), removed, kept)| {
                let answer = match (removed, kept) {
                    (None, _) => RecordedAnswer::Ok,
                    (Some(v), true) => RecordedAnswer::Removed(v),
                    (Some(_), false) => RecordedAnswer::RemovedNotKept,
                };
                PeerMsg::SessionAnswer(SessionAnswer {
                    stamp: WriteStamp {
                        owner,
                        session,
                        seq,
                    },
                    floor,
                    idle_ms,
                    answer,
                })
            }),
        any::<u64>().prop_map(|ms_ago| PeerMsg::SessionsEvicted { ms_ago }),
        any::<u64>().prop_map(|ms_ago| PeerMsg::SessionsBorn { ms_ago }),
        (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, offset, digest)| {
            PeerMsg::Check {
                bucket,
                offset,
                digest,
            }
        }),
        bucket.clone().prop_map(PeerMsg::ReplaceBegin),
        (bucket.clone(), any::<u64>(), digest.clone()).prop_map(|(bucket, offset, digest)| {
            PeerMsg::ReplaceEnd {
                bucket,
                offset,
                digest,
            }
        }),
        (bucket.clone(), any::<u64>()).prop_map(|(bucket, offset)| PeerMsg::Ack { bucket, offset }),
        (bucket, any::<u64>(), digest).prop_map(|(bucket, offset, digest)| {
            PeerMsg::Mismatch {
                bucket,
                offset,
                digest,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_and_prefixes_are_incomplete(msgs in proptest::collection::vec(any_msg(), 1..6)) {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        for cut in 0..buf.len().min(64) {
            let mut prefix = BytesMut::from(&buf[..cut]);
            let mut n = 0;
            while PeerMsg::decode(&mut prefix, &limits).expect("valid prefix").is_some() {
                n += 1;
            }
            prop_assert!(n < msgs.len());
        }
        for m in &msgs {
            prop_assert_eq!(PeerMsg::decode(&mut buf, &limits).expect("valid"), Some(m.clone()));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = PeerMsg::decode(&mut buf, &Limits::default()) {}
    }
}

#[test]
fn oversized_and_lying_frames_are_invalid_without_allocation() {
    let limits = Limits::new(16, 16);
    let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(PeerMsg::decode(&mut huge, &limits).is_err());
    // A chunk claiming a billion entries in a 9-byte frame.
    let mut lying = BytesMut::new();
    lying.put_u32(5);
    lying.put_u8(0x42);
    lying.put_u32(1_000_000_000);
    assert!(PeerMsg::decode(&mut lying, &limits).is_err());
    let mut big_put = BytesMut::new();
    PeerMsg::Put {
        offset: 1,
        key: Bytes::from_static(b"k"),
        value: Bytes::from(vec![0u8; 17]),
        stamp: None,
    }
    .encode(&mut big_put);
    assert!(PeerMsg::decode(&mut big_put, &limits).is_err());
}
