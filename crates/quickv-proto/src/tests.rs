//! Tests of the codec as a whole: round trips, framing across buffer boundaries, limits, and
//! hostile input.

// Tests may panic: that is how they fail.
#![allow(clippy::unwrap_used)]

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Small limits so that generated keys and values reach the boundaries quickly.
const SMALL: Limits = Limits {
    max_key: 32,
    max_value: 256,
    max_frame: 32 + 256 + Limits::FRAME_OVERHEAD,
};

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn arb_op() -> impl Strategy<Value = Op> {
    let key = || arb_bytes(SMALL.max_key);
    let value = || arb_bytes(SMALL.max_value);
    prop_oneof![
        any::<u16>().prop_map(|version| Op::Hello { version }),
        value().prop_map(Op::Ping),
        (key(), value()).prop_map(|(key, value)| Op::Insert { key, value }),
        (key(), value()).prop_map(|(key, value)| Op::Update { key, value }),
        key().prop_map(|key| Op::Delete { key }),
        key().prop_map(|key| Op::Get { key }),
        Just(Op::Count),
        Just(Op::Dump),
        Just(Op::Status),
        Just(Op::Shutdown),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        any::<u64>(),
        arb_op(),
        proptest::option::of((any::<u64>(), any::<u64>(), any::<u32>())),
    )
        .prop_map(|(id, op, stamp)| {
            // Only writes carry a stamp on the wire; the encoder drops it from anything else.
            let session = stamp
                .filter(|_| op.is_write())
                .map(|(session, seq, age_ms)| SessionWrite {
                    stamp: WriteStamp::new(session, seq),
                    age_ms,
                });
            Request { id, op, session }
        })
}

fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    (1u16..=10).prop_map(|n| ErrorCode::from_u16(n).unwrap())
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    let text = || any::<String>();
    prop_oneof![
        (any::<u16>(), text()).prop_map(|(version, server)| Reply::Hello { version, server }),
        Just(Reply::Ok),
        arb_bytes(SMALL.max_value).prop_map(Reply::Value),
        Just(Reply::NotFound),
        Just(Reply::Exists),
        text().prop_map(Reply::Unavailable),
        text().prop_map(Reply::Indeterminate),
        (arb_error_code(), text()).prop_map(|(code, message)| Reply::Error { code, message }),
        any::<u64>().prop_map(Reply::Count),
        (
            prop::collection::vec((arb_bytes(SMALL.max_key), arb_bytes(64)), 0..8),
            any::<bool>()
        )
            .prop_map(|(entries, last)| Reply::DumpChunk { entries, last }),
        text().prop_map(Reply::Status),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    (any::<u64>(), arb_reply()).prop_map(|(id, reply)| Response { id, reply })
}

fn encoded_request(req: &Request) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_request(req, &mut buf);
    buf
}

fn encoded_response(resp: &Response) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_response(resp, &mut buf);
    buf
}

/// A raw frame with the given tag, id and body fields, length prefix computed.
fn raw_frame(tag: u8, id: u64, fields: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u32(u32::try_from(9 + fields.len()).unwrap());
    out.put_u8(tag);
    out.put_u64(id);
    out.put_slice(fields);
    out
}

fn get(id: u64) -> Request {
    Request {
        id,
        op: Op::Get {
            key: Bytes::from_static(b"next"),
        },
        session: None,
    }
}

fn invalid(result: Result<impl std::fmt::Debug, DecodeError>) -> String {
    match result {
        Err(DecodeError::Invalid(message)) => message,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request()) {
        let mut buf = encoded_request(&req);
        prop_assert_eq!(decode_request(&mut buf, &SMALL), Ok(Some(req)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn responses_round_trip(resp in arb_response()) {
        let mut buf = encoded_response(&resp);
        prop_assert_eq!(decode_response(&mut buf, &SMALL), Ok(Some(resp)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_value_answer_from_a_slice_is_the_value_reply_byte_for_byte(
        id in any::<u64>(), value in arb_bytes(256), before in arb_bytes(8)
    ) {
        let mut wire = BytesMut::from(&before[..]);
        encode_value_response(id, &value, &mut wire);
        let mut want = BytesMut::from(&before[..]);
        encode_response(&Response { id, reply: Reply::Value(value) }, &mut want);
        prop_assert_eq!(wire, want);
    }

    #[test]
    fn back_to_back_requests_decode_in_order_whole_or_byte_by_byte(
        reqs in prop::collection::vec(arb_request(), 1..6)
    ) {
        let mut all = BytesMut::new();
        for req in &reqs {
            encode_request(req, &mut all);
        }
        let wire = all.clone().freeze();

        let mut whole = Vec::new();
        while let Some(req) = decode_request(&mut all, &SMALL).unwrap() {
            whole.push(req);
        }
        prop_assert_eq!(&whole, &reqs);
        prop_assert!(all.is_empty());

        // Byte by byte: each frame completes exactly when its last byte arrives.
        let mut ends = Vec::new();
        let mut end = 0;
        for req in &reqs {
            end += encoded_request(req).len();
            ends.push(end);
        }
        let mut trickle = BytesMut::new();
        let mut decoded = Vec::new();
        for (i, byte) in wire.iter().enumerate() {
            trickle.put_u8(*byte);
            match decode_request(&mut trickle, &SMALL).unwrap() {
                Some(req) => {
                    prop_assert!(ends.contains(&(i + 1)), "frame completed early at byte {}", i);
                    decoded.push(req);
                }
                None => prop_assert!(!ends.contains(&(i + 1)), "frame incomplete at its end {}", i),
            }
        }
        prop_assert_eq!(decoded, reqs);
        prop_assert!(trickle.is_empty());
    }

    #[test]
    fn back_to_back_responses_decode_in_order_byte_by_byte(
        resps in prop::collection::vec(arb_response(), 1..6)
    ) {
        let mut wire = BytesMut::new();
        for resp in &resps {
            encode_response(resp, &mut wire);
        }
        let mut trickle = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            trickle.put_u8(*byte);
            if let Some(resp) = decode_response(&mut trickle, &SMALL).unwrap() {
                decoded.push(resp);
            }
        }
        prop_assert_eq!(decoded, resps);
    }

    #[test]
    fn every_strict_prefix_is_incomplete_and_consumes_nothing(
        req in arb_request(),
        resp in arb_response(),
    ) {
        let full = encoded_request(&req);
        for cut in 0..full.len() {
            let mut prefix = BytesMut::from(&full[..cut]);
            prop_assert_eq!(decode_request(&mut prefix, &SMALL), Ok(None));
            prop_assert_eq!(&prefix[..], &full[..cut]);
        }
        let full = encoded_response(&resp);
        for cut in 0..full.len() {
            let mut prefix = BytesMut::from(&full[..cut]);
            prop_assert_eq!(decode_response(&mut prefix, &SMALL), Ok(None));
            prop_assert_eq!(&prefix[..], &full[..cut]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
        for limits in [SMALL, Limits::default()] {
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) | Err(DecodeError::Rejected { .. }) =
                decode_request(&mut buf, &limits)
            {}
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = decode_response(&mut buf, &limits) {}
        }
    }

    #[test]
    fn corrupted_frames_never_panic(
        req in arb_request(),
        resp in arb_response(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut buf = encoded_request(&req);
        let i = at.index(buf.len());
        buf[i] = byte;
        while let Ok(Some(_)) | Err(DecodeError::Rejected { .. }) = decode_request(&mut buf, &SMALL) {}

        let mut buf = encoded_response(&resp);
        let i = at.index(buf.len());
        buf[i] = byte;
        while let Ok(Some(_)) = decode_response(&mut buf, &SMALL) {}
    }

    #[test]
    fn dump_chunk_size_is_header_plus_entries(
        entries in prop::collection::vec((arb_bytes(32), arb_bytes(64)), 0..8),
    ) {
        let expected = LEN_PREFIX
            + DUMP_CHUNK_HEADER
            + entries.iter().map(|(k, v)| encoded_len_entry(k, v)).sum::<usize>();
        let resp = Response { id: 1, reply: Reply::DumpChunk { entries, last: true } };
        prop_assert_eq!(encoded_response(&resp).len(), expected);
    }
}

#[test]
fn wire_layout_matches_the_document() {
    let insert = Request {
        id: 0x0102_0304_0506_0708,
        op: Op::Insert {
            key: Bytes::from_static(b"ab"),
            value: Bytes::from_static(b"xyz"),
        },
        session: None,
    };
    let expected: &[u8] = &[
        0, 0, 0, 22,   // len = 1 + 8 + 4 + 2 + 4 + 3
        0x03, // tag insert
        1, 2, 3, 4, 5, 6, 7, 8, // id
        0, 0, 0, 2, b'a', b'b', // key
        0, 0, 0, 3, b'x', b'y', b'z', // value
    ];
    assert_eq!(&encoded_request(&insert)[..], expected);

    let chunk = Response {
        id: 9,
        reply: Reply::DumpChunk {
            entries: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
            last: true,
        },
    };
    let expected: &[u8] = &[
        0, 0, 0, 24, // len = 14 + 10
        0x8A, 0, 0, 0, 0, 0, 0, 0, 9, // tag, id
        1, // last
        0, 0, 0, 1, // n
        0, 0, 0, 1, b'k', 0, 0, 0, 1, b'v',
    ];
    assert_eq!(&encoded_response(&chunk)[..], expected);

    let error = Response {
        id: 2,
        reply: Reply::Error {
            code: ErrorCode::NotAllowed,
            message: "no".into(),
        },
    };
    let expected: &[u8] = &[
        0, 0, 0, 17, 0x88, 0, 0, 0, 0, 0, 0, 0, 2, 0, 8, 0, 0, 0, 2, b'n', b'o',
    ];
    assert_eq!(&encoded_response(&error)[..], expected);
}

#[test]
fn values_are_slices_of_the_read_buffer() {
    let req = Request {
        id: 1,
        op: Op::Insert {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
        },
        session: None,
    };
    let mut buf = encoded_request(&req);
    let base = buf.as_ptr() as usize;
    let Some(Request {
        op: Op::Insert { key, value },
        ..
    }) = decode_request(&mut buf, &SMALL).unwrap()
    else {
        panic!("not an insert");
    };
    // prefix 4 + tag 1 + id 8 + key length 4 = 17; value after key (3) and its length (4).
    assert_eq!(key.as_ptr() as usize, base + 17);
    assert_eq!(value.as_ptr() as usize, base + 17 + 3 + 4);
}

#[test]
fn oversized_length_prefix_is_invalid_from_the_header_alone() {
    let limits = Limits::default();
    let over_limit = u32::try_from(limits.max_frame + 1).unwrap();
    for declared in [u32::MAX, over_limit] {
        let mut buf = BytesMut::from(&declared.to_be_bytes()[..]);
        let message = invalid(decode_request(&mut buf, &limits));
        assert!(message.contains("exceeds the limit"), "{message}");
        let mut buf = BytesMut::from(&declared.to_be_bytes()[..]);
        invalid(decode_response(&mut buf, &limits));
    }
    // Exactly max_frame is merely incomplete.
    let mut buf = BytesMut::from(&u32::try_from(limits.max_frame).unwrap().to_be_bytes()[..]);
    assert_eq!(decode_request(&mut buf, &limits), Ok(None));
}

#[test]
fn length_prefix_shorter_than_the_header_is_invalid() {
    for declared in 0u32..9 {
        let mut buf = BytesMut::from(&declared.to_be_bytes()[..]);
        invalid(decode_request(&mut buf, &SMALL));
        let mut buf = BytesMut::from(&declared.to_be_bytes()[..]);
        invalid(decode_response(&mut buf, &SMALL));
    }
}

#[test]
fn oversized_key_is_rejected_and_the_stream_goes_on() {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    encode_request(
        &Request {
            id: 7,
            op: Op::Insert {
                key: Bytes::from(vec![b'k'; limits.max_key + 1]),
                value: Bytes::from_static(b"v"),
            },
            session: None,
        },
        &mut buf,
    );
    encode_request(&get(8), &mut buf);
    assert_eq!(
        decode_request(&mut buf, &limits),
        Err(DecodeError::Rejected {
            id: 7,
            code: ErrorCode::KeyTooLarge,
            message: "key of 65537 bytes exceeds the limit of 65536 bytes".into(),
        })
    );
    assert_eq!(decode_request(&mut buf, &limits), Ok(Some(get(8))));
    assert!(buf.is_empty());

    // A key exactly at the limit is fine.
    let at_limit = Request {
        id: 9,
        op: Op::Get {
            key: Bytes::from(vec![b'k'; limits.max_key]),
        },
        session: None,
    };
    let mut buf = encoded_request(&at_limit);
    assert_eq!(decode_request(&mut buf, &limits), Ok(Some(at_limit)));
}

#[test]
fn oversized_value_is_rejected_and_the_stream_goes_on() {
    let limits = Limits::default();
    let big = Bytes::from(vec![0u8; limits.max_value + 1]);
    for (op, what) in [
        (
            Op::Update {
                key: Bytes::from_static(b"k"),
                value: big.clone(),
            },
            "value",
        ),
        (Op::Ping(big.clone()), "ping payload"),
    ] {
        let mut buf = encoded_request(&Request {
            id: 3,
            op,
            session: None,
        });
        encode_request(&get(4), &mut buf);
        assert_eq!(
            decode_request(&mut buf, &limits),
            Err(DecodeError::Rejected {
                id: 3,
                code: ErrorCode::ValueTooLarge,
                message: format!("{what} of 16777217 bytes exceeds the limit of 16777216 bytes"),
            })
        );
        assert_eq!(decode_request(&mut buf, &limits), Ok(Some(get(4))));
    }
}

#[test]
fn unknown_request_tag_is_rejected_and_the_stream_goes_on() {
    let mut buf = BytesMut::from(&raw_frame(0x42, 99, b"whatever follows")[..]);
    encode_request(&get(100), &mut buf);
    assert_eq!(
        decode_request(&mut buf, &SMALL),
        Err(DecodeError::Rejected {
            id: 99,
            code: ErrorCode::UnknownOp,
            message: "unknown request tag 0x42".into(),
        })
    );
    assert_eq!(decode_request(&mut buf, &SMALL), Ok(Some(get(100))));

    // A response sent the wrong way is an unknown request tag too.
    let mut buf = encoded_response(&Response {
        id: 5,
        reply: Reply::Ok,
    });
    assert!(matches!(
        decode_request(&mut buf, &SMALL),
        Err(DecodeError::Rejected {
            id: 5,
            code: ErrorCode::UnknownOp,
            ..
        })
    ));
}

#[test]
fn huge_dump_entry_count_is_invalid_without_allocating() {
    let mut fields = vec![1u8]; // last
    fields.put_u32(1_000_000_000);
    let mut buf = BytesMut::from(&raw_frame(0x8A, 1, &fields)[..]);
    let message = invalid(decode_response(&mut buf, &Limits::default()));
    assert!(message.contains("1000000000 entries"), "{message}");

    // An honest count that the bytes then fail to back is also invalid.
    let mut fields = vec![0u8];
    fields.put_u32(2);
    fields.extend_from_slice(&[0; 12]);
    let mut buf = BytesMut::from(&raw_frame(0x8A, 1, &fields)[..]);
    invalid(decode_response(&mut buf, &SMALL));
}

#[test]
fn structural_errors_are_invalid() {
    // Key length overrunning the frame.
    let mut fields = Vec::new();
    fields.put_u32(1000);
    fields.put_slice(b"short");
    let mut buf = BytesMut::from(&raw_frame(0x06, 1, &fields)[..]);
    assert!(invalid(decode_request(&mut buf, &SMALL)).contains("overruns"));

    // Bytes left over after a complete request, even one that would also be over a limit.
    let mut fields = Vec::new();
    fields.put_u32(40);
    fields.put_slice(&[b'k'; 40]);
    fields.put_u8(0);
    let mut buf = BytesMut::from(&raw_frame(0x06, 1, &fields)[..]);
    assert!(invalid(decode_request(&mut buf, &SMALL)).contains("left over"));
    let mut buf = BytesMut::from(&raw_frame(0x07, 1, b"x")[..]);
    invalid(decode_request(&mut buf, &SMALL));

    // Hello missing its version.
    let mut buf = BytesMut::from(&raw_frame(0x01, 1, b"")[..]);
    invalid(decode_request(&mut buf, &SMALL));
}

#[test]
fn response_content_errors_are_invalid() {
    let mut buf = BytesMut::from(&raw_frame(0x99, 1, b"")[..]);
    assert!(invalid(decode_response(&mut buf, &SMALL)).contains("unknown response tag 0x99"));

    let mut buf = BytesMut::from(&raw_frame(0x02, 1, &[0, 0, 0, 0])[..]);
    invalid(decode_response(&mut buf, &SMALL));

    let mut fields = Vec::new();
    fields.put_u16(11);
    fields.put_u32(0);
    let mut buf = BytesMut::from(&raw_frame(0x88, 1, &fields)[..]);
    assert!(invalid(decode_response(&mut buf, &SMALL)).contains("unknown error code 11"));

    let mut fields = Vec::new();
    fields.put_u32(2);
    fields.put_slice(&[0xff, 0xfe]);
    let mut buf = BytesMut::from(&raw_frame(0x8B, 1, &fields)[..]);
    assert!(invalid(decode_response(&mut buf, &SMALL)).contains("not UTF-8"));

    let mut fields = vec![2u8];
    fields.put_u32(0);
    let mut buf = BytesMut::from(&raw_frame(0x8A, 1, &fields)[..]);
    assert!(invalid(decode_response(&mut buf, &SMALL)).contains("last flag"));
}

#[test]
fn largest_legal_requests_fit_the_default_frame_limit() {
    let limits = Limits::default();
    let req = Request {
        id: u64::MAX,
        op: Op::Insert {
            key: Bytes::from(vec![1; limits.max_key]),
            value: Bytes::from(vec![2; limits.max_value]),
        },
        session: None,
    };
    let mut buf = encoded_request(&req);
    assert_eq!(decode_request(&mut buf, &limits), Ok(Some(req)));

    let entry_len = encoded_len_entry(&[0; 16], &[0; 100]);
    assert_eq!(entry_len, 4 + 16 + 4 + 100);
    assert_eq!(
        LEN_PREFIX + FRAME_HEADER + 1 + 4 + entry_len,
        LEN_PREFIX + DUMP_CHUNK_HEADER + entry_len
    );
}

#[test]
fn a_stamped_write_has_the_documented_layout() {
    // docs/protocol.md: tag 0x0B..0x0D, id, session u64, seq u64, age u32, then the plain fields.
    let req = Request {
        id: 5,
        op: Op::Delete {
            key: Bytes::from_static(b"k"),
        },
        session: Some(SessionWrite {
            stamp: WriteStamp::new(0xAA, 7),
            age_ms: 250,
        }),
    };
    let mut fields = Vec::new();
    fields.put_u64(0xAA);
    fields.put_u64(7);
    fields.put_u32(250);
    fields.put_u32(1);
    fields.put_u8(b'k');
    assert_eq!(encoded_request(&req)[..], raw_frame(0x0D, 5, &fields)[..]);
    let mut buf = encoded_request(&req);
    assert_eq!(decode_request(&mut buf, &SMALL), Ok(Some(req.clone())));
    // The stamp is a write's: a read never carries one.
    let get = Request {
        id: 6,
        op: Op::Get {
            key: Bytes::from_static(b"k"),
        },
        session: req.session,
    };
    let mut buf = encoded_request(&get);
    assert_eq!(
        decode_request(&mut buf, &SMALL),
        Ok(Some(Request::new(6, get.op)))
    );
    // A stamped frame cut short inside its stamp is invalid, not a crash.
    let mut buf = BytesMut::from(&raw_frame(0x0B, 1, &[0, 0, 0])[..]);
    invalid(decode_request(&mut buf, &SMALL));
}
