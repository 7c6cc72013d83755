//! The checker must fail when it should: fabricated histories, right and wrong, plus a
//! cross-check of the search against brute force on thousands of small random histories.

use std::time::Duration;

use bytes::Bytes;

use super::linearize::{check_key, Verdict};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One operation on key `k` by `client`, invoked at `from` ms, answered at `to` ms.
fn op(client: ClientId, kind: Kind, from: u64, to: u64, outcome: Observed) -> Operation {
    Operation {
        client,
        key: b("k"),
        kind,
        invoke: ms(from),
        complete: ms(to),
        outcome,
        server: None,
    }
}

fn ins(v: &str) -> Kind {
    Kind::Insert(b(v))
}

fn upd(v: &str) -> Kind {
    Kind::Update(b(v))
}

fn val(v: &str) -> Observed {
    Observed::Value(b(v))
}

fn indeterminate() -> Observed {
    Observed::Indeterminate("link lost".into())
}

fn refused() -> Observed {
    Observed::Refused("backup not in sync".into())
}

fn history(ops: Vec<Operation>) -> History {
    History {
        ops,
        marks: Vec::new(),
    }
}

/// The primary's final dump holding `k = v` (or nothing).
fn dump(v: Option<&str>) -> Vec<(Bytes, Bytes)> {
    v.map(|v| vec![(b("k"), b(v))]).unwrap_or_default()
}

fn report(h: &History, final_value: Option<&str>) -> HistoryReport {
    let d = dump(final_value);
    check(h, Some(&d), Some(&d))
}

#[test]
fn a_linearizable_concurrent_history_passes() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        // Overlaps the insert; succeeds, so it must come after it.
        op(2, upd("b"), 5, 15, Observed::Ok),
        // Overlaps both: sees the insert's value, so it sits between them.
        op(3, Kind::Get, 6, 12, val("a")),
        op(1, Kind::Get, 20, 25, val("b")),
        op(2, Kind::Delete, 30, 40, val("b")),
        // Overlaps the delete and succeeds: after it.
        op(3, ins("c"), 35, 45, Observed::Ok),
        op(1, ins("d"), 50, 55, Observed::Exists),
        op(2, upd("e"), 52, 70, Observed::Ok),
        // Three readers overlapping the update: old, new, new is fine…
        op(1, Kind::Get, 56, 60, val("c")),
        op(3, Kind::Get, 57, 65, val("e")),
        op(1, Kind::Get, 61, 69, val("e")),
    ]);
    let r = report(&h, Some("e"));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.acknowledged_writes, 6);
    assert_eq!(r.reads, 5);
    assert_eq!(r.keys_checked, 1);
}

#[test]
fn a_delete_answered_ok_is_a_removal_whose_value_was_not_kept() {
    // A retried delete found applied, its large value not kept (docs/protocol.md, "Sessions").
    let present = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, Kind::Delete, 20, 30, Observed::Ok),
        op(1, Kind::Get, 40, 50, Observed::NotFound),
    ]);
    let r = report(&present, None);
    assert!(r.is_clean(), "{r}");
    // It still removes something: on an absent key it cannot be placed.
    let absent = history(vec![
        op(1, Kind::Get, 0, 10, Observed::NotFound),
        op(2, Kind::Delete, 20, 30, Observed::Ok),
    ]);
    assert!(!report(&absent, None).is_clean());
}

#[test]
fn new_then_old_value_from_concurrent_reads_fails() {
    // …but once a read returned the new value, a later read may not return the old one.
    let h = history(vec![
        op(1, ins("c"), 0, 5, Observed::Ok),
        op(2, upd("e"), 10, 100, Observed::Ok),
        op(3, Kind::Get, 20, 30, val("e")),
        op(1, Kind::Get, 40, 50, val("c")),
    ]);
    let r = report(&h, Some("e"));
    assert_eq!(r.violations, 1, "{r}");
    assert!(!r.is_clean());
}

#[test]
fn a_stale_read_after_an_acknowledged_write_fails() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, Observed::Ok),
        op(3, Kind::Get, 40, 50, val("a")),
    ]);
    let r = report(&h, Some("b"));
    assert_eq!(r.violations, 1, "{r}");
    assert_eq!(r.lost_writes, 0, "a wrong answer is not a lost write: {r}");
    assert!(r.findings[0].contains("not linearizable"), "{r}");
    // Without the final dump the verdict is the same.
    assert_eq!(check(&h, None, None).violations, 1);
}

#[test]
fn wrong_answers_of_writes_fail_too() {
    // An insert answered ok on a present key, a delete answering a value never written.
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, ins("b"), 20, 30, Observed::Ok),
    ]);
    assert_eq!(check(&h, None, None).violations, 1);
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, Kind::Delete, 20, 30, val("zz")),
    ]);
    assert_eq!(check(&h, None, None).violations, 1);
}

#[test]
fn a_lost_acknowledged_write_fails() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, Observed::Ok),
    ]);
    // The final dump still holds the overwritten value: the update was lost.
    let r = report(&h, Some("a"));
    assert_eq!(r.lost_writes, 1, "{r}");
    assert_eq!(r.violations, 0, "{r}");
    assert!(r.findings[0].contains("final dump"), "{r}");
    // Or the key is gone altogether.
    assert_eq!(report(&h, None).lost_writes, 1);
    // The right final state passes.
    assert!(report(&h, Some("b")).is_clean());
}

#[test]
fn a_key_in_the_dump_that_nobody_wrote_fails() {
    let h = history(vec![op(1, ins("a"), 0, 10, Observed::Ok)]);
    let d = vec![(b("k"), b("a")), (b("ghost"), b("boo"))];
    let r = check(&h, Some(&d), Some(&d));
    assert_eq!(r.lost_writes, 1, "{r}");
}

#[test]
fn a_refused_write_whose_value_appears_fails() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, refused()),
        op(3, Kind::Get, 40, 50, val("b")),
    ]);
    let r = report(&h, Some("b"));
    assert_eq!(r.refused_took_effect, 1, "{r}");
    assert_eq!(r.violations, 1, "the read cannot be explained either: {r}");
    // Seen only in the final dump: still caught, and the final state is unexplained.
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, refused()),
    ]);
    let r = report(&h, Some("b"));
    assert_eq!(r.refused_took_effect, 1, "{r}");
    assert_eq!(r.lost_writes, 1, "{r}");
    // A refused write that stayed refused is fine.
    assert!(report(&h, Some("a")).is_clean());
}

#[test]
fn an_unsent_write_whose_value_appears_fails() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(
            2,
            upd("b"),
            20,
            30,
            Observed::Failed("connection closed".into()),
        ),
    ]);
    let r = report(&h, Some("b"));
    assert_eq!(r.unsent_took_effect, 1, "{r}");
    assert!(!r.is_clean());
}

#[test]
fn an_indeterminate_write_that_happened_passes() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, indeterminate()),
        op(3, Kind::Get, 40, 50, val("b")),
    ]);
    let r = report(&h, Some("b"));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.indeterminate, 1);
}

#[test]
fn an_indeterminate_write_that_did_not_happen_passes() {
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, upd("b"), 20, 30, indeterminate()),
        op(3, Kind::Get, 40, 50, val("a")),
    ]);
    assert!(report(&h, Some("a")).is_clean());
    // An indeterminate delete, both ways.
    let h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, Kind::Delete, 20, 30, indeterminate()),
    ]);
    assert!(report(&h, Some("a")).is_clean());
    assert!(report(&h, None).is_clean());
}

#[test]
fn an_indeterminate_write_may_surface_late_but_not_early_nor_vanish() {
    let base = || {
        vec![
            op(1, ins("a"), 0, 10, Observed::Ok),
            op(2, upd("b"), 20, 30, indeterminate()),
        ]
    };
    // Took effect long after its answer (e.g. at a later warm start): fine.
    let mut late = base();
    late.push(op(3, Kind::Get, 40, 50, val("a")));
    late.push(op(3, Kind::Get, 60, 70, val("b")));
    assert!(report(&history(late), Some("b")).is_clean());
    // Seen before it was invoked: impossible.
    let mut early = base();
    early.push(op(3, Kind::Get, 12, 15, val("b")));
    assert_eq!(report(&history(early), Some("b")).violations, 1);
    // Seen, then gone without any other write: impossible.
    let mut flip = base();
    flip.push(op(3, Kind::Get, 40, 50, val("b")));
    flip.push(op(3, Kind::Get, 60, 70, val("a")));
    assert_eq!(report(&history(flip), Some("a")).violations, 1);
    // Seen by a read, then missing from the final dump: lost.
    let mut lost = base();
    lost.push(op(3, Kind::Get, 40, 50, val("b")));
    assert_eq!(report(&history(lost), Some("a")).lost_writes, 1);
}

#[test]
fn an_indeterminate_insert_changes_later_answers() {
    // The key was absent; an indeterminate insert explains a later `exists` and a later
    // successful update, but only if it happened, and then for every later operation.
    let h = history(vec![
        op(1, ins("a"), 0, 10, indeterminate()),
        op(2, ins("b"), 20, 30, Observed::Exists),
        op(3, upd("c"), 40, 50, Observed::Ok),
    ]);
    assert!(report(&h, Some("c")).is_clean());
    let h = history(vec![
        op(1, ins("a"), 0, 10, indeterminate()),
        op(2, ins("b"), 20, 30, Observed::Exists),
        op(3, upd("c"), 40, 50, Observed::NotFound),
    ]);
    assert_eq!(report(&h, None).violations, 1);
}

#[test]
fn a_reset_starts_an_empty_epoch() {
    let mut h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, Kind::Get, 40, 50, Observed::NotFound),
        op(2, ins("z"), 60, 70, Observed::Ok),
    ]);
    // Without a reset, the acknowledged insert cannot vanish.
    assert_eq!(report(&h, Some("z")).violations, 1);
    h.marks.push(Mark {
        at: ms(20),
        kind: MarkKind::Reset,
        label: "both killed".into(),
    });
    let r = report(&h, Some("z"));
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.keys_checked, 2, "one key history per epoch");
    // A value from before the reset seen after it fails.
    h.ops.push(op(3, Kind::Get, 80, 90, val("a")));
    assert_eq!(report(&h, Some("z")).violations, 1);
}

#[test]
fn a_write_straddling_a_reset_may_take_effect_in_either_epoch() {
    // Invoked before both servers were killed, first sent to the restarted pair (its call waited
    // for a connection), answered there: its value is read after the reset.
    let mut h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, ins("b"), 15, 40, Observed::Ok),
        op(3, Kind::Get, 50, 60, val("b")),
    ]);
    h.marks.push(Mark {
        at: ms(20),
        kind: MarkKind::Reset,
        label: "both killed".into(),
    });
    let r = report(&h, Some("b"));
    assert!(r.is_clean(), "{r}");
    // Read before the reset as well, its value would still need its write.
    h.ops.push(op(4, Kind::Get, 11, 14, val("b")));
    assert_eq!(report(&h, Some("b")).violations, 1);
}

#[test]
fn differing_dumps_are_counted() {
    let h = history(vec![op(1, ins("a"), 0, 10, Observed::Ok)]);
    let p = vec![(b("k"), b("a")), (b("x"), b("1"))];
    let bk = vec![(b("k"), b("other"))];
    let r = check(&h, Some(&p), Some(&bk));
    assert_eq!(r.diverged_keys, 2, "{r}");
}

#[test]
fn unavailable_time_and_recovery_are_measured() {
    let mut h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(1, upd("b"), 100, 101, refused()),
        op(2, upd("c"), 150, 151, refused()),
        op(1, upd("d"), 200, 300, indeterminate()),
        op(2, upd("e"), 400, 420, Observed::Ok),
        op(1, upd("f"), 500, 510, Observed::Ok),
    ]);
    h.marks.push(Mark {
        at: ms(90),
        kind: MarkKind::Fault,
        label: "backup SIGKILL".into(),
    });
    let r = report(&h, Some("f"));
    assert!(r.is_clean(), "{r}");
    // Refused from 100 ms until the write invoked at 400 ms completed at 420 ms.
    assert_eq!(r.unavailable, ms(320));
    assert_eq!(r.faults.len(), 1);
    assert_eq!(r.faults[0].disrupted_writes, 3);
    assert_eq!(r.faults[0].recovery, Some(ms(330)));
    assert_eq!((r.refused, r.indeterminate), (2, 1));
}

#[test]
fn histories_round_trip_through_json() {
    let mut h = history(vec![
        op(1, ins("a"), 0, 10, Observed::Ok),
        op(2, Kind::Get, 5, 7, val("a")),
        op(3, upd("b"), 8, 9, indeterminate()),
    ]);
    h.ops[0].key = Bytes::from_static(&[0xff, 0x00, 0x41]);
    h.marks.push(Mark {
        at: ms(3),
        kind: MarkKind::Fault,
        label: "x".into(),
    });
    let back = History::from_json(&h.to_json()).expect("parse");
    assert_eq!(back, h);
}

#[test]
fn an_abandoned_call_is_recorded_as_indeterminate() {
    let rec = Recorder::new();
    let v = rec.unique_value(7);
    drop(rec.begin(7, b("k"), Kind::Insert(v.clone())));
    rec.begin(7, b("k"), Kind::Get).finish(Observed::NotFound);
    drop(rec.begin(7, b("k"), Kind::Get));
    let h = rec.history();
    assert_eq!(h.ops.len(), 3);
    assert!(matches!(h.ops[0].outcome, Observed::Indeterminate(_)));
    assert!(matches!(h.ops[2].outcome, Observed::Failed(_)));
    assert_ne!(rec.unique_value(7), v, "values are unique");
    assert_eq!(rec.indeterminate_writes(), 1);
}

#[test]
fn a_call_result_keeps_the_shared_verdict_and_its_payload() {
    use quickv_proto::ErrorCode;
    let put = Kind::Insert(b("v"));
    let cases = [
        (Kind::Get, Ok(Reply::Value(b("x"))), Observed::Value(b("x"))),
        (put.clone(), Ok(Reply::Ok), Observed::Ok),
        (put.clone(), Err(ClientError::Exists), Observed::Exists),
        (Kind::Delete, Ok(Reply::NotFound), Observed::NotFound),
        (
            put.clone(),
            Err(ClientError::Unavailable("backup down".into())),
            Observed::Refused("backup down".into()),
        ),
        (
            put.clone(),
            Ok(Reply::Indeterminate("no ack".into())),
            Observed::Indeterminate("no ack".into()),
        ),
    ];
    for (kind, result, want) in cases {
        assert_eq!(Observed::from_call(&kind, result), want);
    }
    // Everything that is not a definite answer about the data fails, with the reason kept.
    let failed = [
        (
            Kind::Get,
            Ok(Reply::Indeterminate("lost".into())),
            "indeterminate: lost",
        ),
        (
            put.clone(),
            Err(ClientError::Forbidden("role read".into())),
            "role read",
        ),
        (
            put.clone(),
            Ok(Reply::Error {
                code: ErrorCode::KeyTooLarge,
                message: "big".into(),
            }),
            "big",
        ),
        (Kind::Get, Ok(Reply::Count(3)), "unexpected answer"),
        (put, Err(ClientError::Timeout("2s".into())), "2s"),
    ];
    for (kind, result, words) in failed {
        match Observed::from_call(&kind, result) {
            Observed::Failed(why) => assert!(why.contains(words), "{why:?} lacks {words:?}"),
            other => panic!("{other:?} should be Failed({words:?})"),
        }
    }
}

/// The checker's search: its budget, and agreement with brute force on random small histories.
#[path = "tests_search.rs"]
mod search;
