//! Unit tests of the session tables.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

/// The tests' time origin (the only clock they read, through [`crate::testing::origin`]).
fn origin() -> Instant {
    crate::testing::origin()
}

fn write(session: u64, seq: u64, age_ms: u32) -> SessionWrite {
    SessionWrite {
        stamp: WriteStamp::new(session, seq),
        age_ms,
    }
}

fn b0() -> BucketId {
    BucketId::new(0).expect("bucket 0")
}

fn is_expired(l: &Lookup) -> bool {
    matches!(
        l,
        Lookup::Expired(Reply::Error {
            code: ErrorCode::SessionExpired,
            ..
        })
    )
}

#[test]
fn a_duplicate_gets_the_original_answer_and_an_unknown_write_is_fresh() {
    let s = Sessions::new(SessionLimits::default(), origin());
    // A minute after the table was made, so the retries below postdate it.
    let now = origin() + Duration::from_secs(60);
    assert_eq!(s.lookup(b0(), &write(1, 1, 0), now), Lookup::Fresh);
    s.record(b0(), write(1, 1, 0).stamp, None, now);
    s.record(b0(), write(1, 2, 0).stamp, Some(Bytes::from("old")), now);
    assert_eq!(
        s.lookup(b0(), &write(1, 1, 300), now),
        Lookup::Answered(Reply::Ok)
    );
    assert_eq!(
        s.lookup(b0(), &write(1, 2, 300), now),
        Lookup::Answered(Reply::Value(Bytes::from("old")))
    );
    // Another sequence, another session, another bucket: all unknown, all fresh.
    assert_eq!(s.lookup(b0(), &write(1, 3, 0), now), Lookup::Fresh);
    assert_eq!(s.lookup(b0(), &write(2, 1, 900), now), Lookup::Fresh);
    let b1 = BucketId::new(1).expect("bucket 1");
    assert_eq!(s.lookup(b1, &write(1, 1, 900), now), Lookup::Fresh);
}

#[test]
fn answers_recorded_out_of_order_are_all_found() {
    // Pipelined writes of one session reach the lane in any order.
    let s = Sessions::new(SessionLimits::default(), origin());
    let now = origin() + Duration::from_secs(60);
    for seq in [5, 2, 9, 3] {
        s.record(b0(), WriteStamp::new(4, seq), None, now);
    }
    for seq in [2, 3, 5, 9] {
        assert_eq!(
            s.lookup(b0(), &write(4, seq, 1), now),
            Lookup::Answered(Reply::Ok)
        );
    }
    for seq in [1, 4, 10] {
        assert_eq!(s.lookup(b0(), &write(4, seq, 1), now), Lookup::Fresh);
    }
}

#[test]
fn the_window_evicts_the_oldest_sequences_and_their_retries_expire() {
    let s = Sessions::new(
        SessionLimits {
            window: 3,
            ..SessionLimits::default()
        },
        origin(),
    );
    let now = origin();
    for seq in 1..=5 {
        s.record(b0(), WriteStamp::new(9, seq), None, now);
    }
    assert!(is_expired(&s.lookup(b0(), &write(9, 1, 10), now)));
    assert!(is_expired(&s.lookup(b0(), &write(9, 2, 10), now)));
    for seq in 3..=5 {
        assert_eq!(
            s.lookup(b0(), &write(9, seq, 10), now),
            Lookup::Answered(Reply::Ok)
        );
    }
    assert_eq!(s.lookup(b0(), &write(9, 6, 0), now), Lookup::Fresh);
}

#[test]
fn an_evicted_session_refuses_retries_first_sent_before_the_eviction_only() {
    let s = Sessions::new(
        SessionLimits {
            max_sessions: 8,
            ..SessionLimits::default()
        },
        origin(),
    );
    let t0 = origin();
    s.record(b0(), WriteStamp::new(1, 1), None, t0);
    // Eight younger sessions push session 1 (the least recently used) out.
    let later = t0 + Duration::from_secs(1);
    for session in 2..=9 {
        s.record(b0(), WriteStamp::new(session, 1), None, later);
    }
    let now = t0 + Duration::from_secs(20);
    // The retry of session 1's write, first sent 20 s ago, before the eviction: refused.
    assert!(is_expired(&s.lookup(b0(), &write(1, 1, 20_000), now)));
    // A first attempt of a new write is fresh, whatever was evicted.
    assert_eq!(s.lookup(b0(), &write(1, 2, 0), now), Lookup::Fresh);
    // A retry first sent well after the eviction cannot have been forgotten: fresh.
    assert_eq!(s.lookup(b0(), &write(1, 2, 1_000), now), Lookup::Fresh);
    assert!(s.len() <= 8, "bounded: {}", s.len());
}

#[test]
fn a_new_table_refuses_retries_older_than_itself_until_a_bootstrap_installs_one() {
    let s = Sessions::new(SessionLimits::default(), origin());
    let now = origin() + Duration::from_secs(30);
    // First sent 40 s ago, before this table existed: it may have been applied elsewhere.
    assert!(is_expired(&s.lookup(b0(), &write(1, 1, 40_000), now)));
    // Sent 10 s ago (after creation, beyond the margin): never seen here, so fresh.
    assert_eq!(s.lookup(b0(), &write(1, 1, 10_000), now), Lookup::Fresh);
    // A bootstrap from a peer that never evicted: the peer's knowledge replaces ours.
    s.install(b0(), TableMarks::default(), Vec::new(), now);
    assert_eq!(s.lookup(b0(), &write(1, 1, 40_000), now), Lookup::Fresh);
}

#[test]
fn idle_sessions_are_swept_by_age() {
    let s = Sessions::new(
        SessionLimits {
            max_idle: Duration::from_secs(60),
            ..SessionLimits::default()
        },
        origin(),
    );
    let t0 = origin();
    s.record(b0(), WriteStamp::new(1, 1), None, t0);
    let later = t0 + Duration::from_secs(120);
    s.record(b0(), WriteStamp::new(2, 1), None, later);
    assert_eq!(s.len(), 1, "session 1 was idle for 120 s > 60 s");
    assert!(is_expired(&s.lookup(b0(), &write(1, 1, 119_000), later)));
}

#[test]
fn an_image_installed_elsewhere_answers_the_same() {
    let a = Sessions::new(
        SessionLimits {
            window: 2,
            max_sessions: 1,
            ..SessionLimits::default()
        },
        origin(),
    );
    let t0 = origin();
    a.record(b0(), WriteStamp::new(1, 1), None, t0);
    let t1 = t0 + Duration::from_secs(10);
    for seq in 1..=3 {
        a.record(b0(), WriteStamp::new(2, seq), Some(Bytes::from("v")), t1);
    }
    let (marks, answers) = a.image(b0(), t1);
    assert!(marks.evicted_ms_ago.is_some(), "session 1 was evicted");
    let b = Sessions::new(SessionLimits::default(), origin());
    b.install(b0(), marks, answers, t1);
    let kind = |l: Lookup| match l {
        Lookup::Fresh => "fresh".to_string(),
        Lookup::Answered(r) => format!("{r:?}"),
        Lookup::Expired(_) => "expired".to_string(),
    };
    for w in [
        write(2, 1, 5),
        write(2, 2, 5),
        write(2, 3, 5),
        write(1, 1, 10_000),
    ] {
        let (x, y) = (a.lookup(b0(), &w, t1), b.lookup(b0(), &w, t1));
        assert_eq!(kind(x), kind(y), "{w:?}");
    }
    assert!(is_expired(&b.lookup(b0(), &write(1, 1, 10_000), t1)));
    assert_eq!(
        b.lookup(b0(), &write(2, 3, 5), t1),
        Lookup::Answered(Reply::Value(Bytes::from("v")))
    );
}

fn owned(owner: u64, session: u64, seq: u64) -> WriteStamp {
    WriteStamp {
        owner,
        session,
        seq,
    }
}

#[test]
fn a_large_removed_value_is_not_kept_and_its_retry_is_answered_ok() {
    let s = Sessions::new(SessionLimits::default(), origin());
    let now = origin() + Duration::from_secs(60);
    let big = Bytes::from(vec![7u8; 16 << 20]);
    s.record(b0(), WriteStamp::new(1, 1), Some(big), now);
    s.record(b0(), WriteStamp::new(1, 2), Some(Bytes::from("small")), now);
    assert_eq!(
        s.lookup(b0(), &write(1, 1, 300), now),
        Lookup::Answered(Reply::Ok),
        "applied, value not kept"
    );
    assert_eq!(
        s.lookup(b0(), &write(1, 2, 300), now),
        Lookup::Answered(Reply::Value(Bytes::from("small")))
    );
    let u = s.usage();
    assert_eq!((u.records, u.values_not_kept), (2, 1));
    assert!(u.bytes < 4096, "a 16 MiB delete costs a marker: {u:?}");
}

#[test]
fn the_tables_stay_inside_their_byte_budget() {
    let limits = SessionLimits {
        max_bytes: 32 * 8192,
        max_bytes_per_identity: 32 * 8192,
        ..SessionLimits::default()
    };
    let s = Sessions::new(limits, origin());
    let t0 = origin();
    let value = Bytes::from(vec![1u8; 1000]);
    for i in 0..2_000u64 {
        let at = t0 + Duration::from_millis(i);
        s.record(b0(), WriteStamp::new(i, 1), Some(value.clone()), at);
        assert!(s.bytes() <= 8192, "after {i}: {:?}", s.usage());
        assert_eq!(s.bytes(), s.usage().bytes, "the total follows the buckets");
    }
    let u = s.usage();
    assert!(u.evicted > 0 && u.records > 0, "{u:?}");
    // The newest session is still answered; the evicted oldest one's retry is refused.
    let last = t0 + Duration::from_millis(1_999);
    assert_eq!(
        s.lookup(b0(), &write(1_999, 1, 1), last),
        Lookup::Answered(Reply::Value(value))
    );
    assert!(is_expired(&s.lookup(b0(), &write(0, 1, 1_500), last)));
}

/// Security review L1: a flood of session ids from one identity made every honest retry of
/// every client `SessionExpired`. Now only the flooding identity's own records go.
#[test]
fn a_session_flood_of_one_identity_does_not_expire_another_identitys_retry() {
    let s = Sessions::new(
        SessionLimits {
            max_sessions: 256,
            ..SessionLimits::default()
        },
        origin(),
    );
    let t0 = origin() + Duration::from_secs(60);
    let (honest, flooder) = (0xA11CE, 0xBAD);
    s.record(b0(), owned(honest, 0xA, 6), None, t0);
    for i in 0..5_000u64 {
        let at = t0 + Duration::from_micros(300 * i);
        s.record(b0(), owned(flooder, 0xBAD_0000 + i, 1), None, at);
    }
    // The honest client's write 7 was lost before it reached the server, retried 2 s later.
    let retry = SessionWrite {
        stamp: owned(honest, 0xA, 7),
        age_ms: 2_000,
    };
    assert_eq!(
        s.lookup(b0(), &retry, t0 + Duration::from_secs(2)),
        Lookup::Fresh
    );
    // Its applied write is still remembered; the flooder's own old retries are refused.
    let applied = SessionWrite {
        stamp: owned(honest, 0xA, 6),
        age_ms: 2_000,
    };
    assert_eq!(
        s.lookup(b0(), &applied, t0 + Duration::from_secs(2)),
        Lookup::Answered(Reply::Ok)
    );
    let flood_retry = SessionWrite {
        stamp: owned(flooder, 0xBAD_0000, 2),
        age_ms: 2_000,
    };
    assert!(is_expired(&s.lookup(
        b0(),
        &flood_retry,
        t0 + Duration::from_secs(2)
    )));
}

#[test]
fn the_timer_sweep_drops_idle_records_of_a_bucket_without_writes() {
    let s = Sessions::new(
        SessionLimits {
            max_idle: Duration::from_secs(60),
            ..SessionLimits::default()
        },
        origin(),
    );
    let t0 = origin();
    s.record(b0(), WriteStamp::new(1, 1), Some(Bytes::from("v")), t0);
    assert_eq!(s.sweep(t0 + Duration::from_secs(30)), 0);
    assert_eq!(s.usage().records, 1);
    let later = t0 + Duration::from_secs(61);
    assert_eq!(s.sweep(later), 1);
    let u = s.usage();
    assert_eq!(
        (u.records, u.sessions, u.bytes, u.identities),
        (0, 0, 0, 0),
        "{u:?}"
    );
    assert_eq!(s.bytes(), 0);
    assert!(is_expired(&s.lookup(b0(), &write(1, 1, 61_000), later)));
}
