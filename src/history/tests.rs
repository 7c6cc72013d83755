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
fn the_budget_turns_a_runaway_search_into_undecided() {
    // Many overlapping writes and a read nobody can explain: exhaustive search needed.
    let mut ops: Vec<Operation> = (0..14)
        .map(|i| op(i, upd(&format!("v{i}")), 0, 1000, Observed::Ok))
        .collect();
    ops.insert(0, op(99, ins("a"), 0, 1, Observed::Ok));
    ops.push(op(100, Kind::Get, 2000, 2001, val("nobody")));
    let h = history(ops);
    let r = check_with_budget(&h, None, None, 1_000);
    assert_eq!(r.undecided, 1, "{r}");
    assert!(!r.is_clean());
    assert_eq!(check(&h, None, None).violations, 1);
}

// ---------------------------------------------------------------------------------------------
// Cross-check against brute force.

/// xorshift64* for reproducible random histories.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A random small history: a real sequential execution on random overlapping intervals, with
/// some answers turned indeterminate or refused and some corrupted.
fn random_history(rng: &mut Rng, n: usize) -> (Vec<Operation>, Option<Option<Bytes>>) {
    let mut state: Option<Bytes> = None;
    let mut ops = Vec::new();
    // Linearization points in increasing order; intervals around them overlap at random.
    let mut point = 0;
    for i in 0..n {
        point += 1 + rng.below(10);
        let v = format!("v{i}");
        let kind = match rng.below(4) {
            0 => Kind::Insert(b(&v)),
            1 => Kind::Update(b(&v)),
            2 => Kind::Delete,
            _ => Kind::Get,
        };
        let mut outcome = match (&kind, &state) {
            (Kind::Insert(v), None) => {
                state = Some(v.clone());
                Observed::Ok
            }
            (Kind::Insert(_), Some(_)) => Observed::Exists,
            (Kind::Update(v), Some(_)) => {
                state = Some(v.clone());
                Observed::Ok
            }
            (Kind::Update(_), None) | (Kind::Delete, None) | (Kind::Get, None) => {
                Observed::NotFound
            }
            (Kind::Delete, Some(old)) => {
                let old = old.clone();
                state = None;
                Observed::Value(old)
            }
            (Kind::Get, Some(v)) => Observed::Value(v.clone()),
        };
        if kind.is_write() && rng.below(5) == 0 {
            outcome = indeterminate();
        }
        if kind.is_write() && rng.below(12) == 0 {
            outcome = refused();
        }
        if rng.below(6) == 0 {
            outcome = match rng.below(4) {
                0 => Observed::Ok,
                1 => Observed::NotFound,
                2 => Observed::Exists,
                _ => Observed::Value(b(&format!("v{}", rng.below(n as u64)))),
            };
        }
        let from = point - rng.below(point.min(15) + 1);
        let to = point + rng.below(15);
        ops.push(Operation {
            client: i as ClientId,
            key: b("k"),
            kind,
            invoke: ms(from),
            complete: ms(to),
            outcome,
        });
    }
    let final_value = match rng.below(3) {
        0 => None,
        1 => Some(state),
        _ => Some(Some(b(&format!("v{}", rng.below(n as u64))))),
    };
    (ops, final_value)
}

/// Does any order of the definite operations plus any subset of the indeterminate writes,
/// respecting real time, explain every answer and the final value?
fn brute_force(ops: &[Operation], final_value: &Option<Option<Bytes>>) -> bool {
    let usable: Vec<&Operation> = ops
        .iter()
        .filter(|o| {
            o.outcome.is_definite()
                || (o.kind.is_write() && matches!(o.outcome, Observed::Indeterminate(_)))
        })
        .collect();
    let optional: Vec<usize> = (0..usable.len())
        .filter(|&i| !usable[i].outcome.is_definite())
        .collect();
    for mask in 0..(1u32 << optional.len()) {
        let chosen: Vec<usize> = (0..usable.len())
            .filter(|i| match optional.iter().position(|o| o == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        if permute(&usable, &chosen, &mut Vec::new(), final_value) {
            return true;
        }
    }
    false
}

fn permute(
    ops: &[&Operation],
    left: &[usize],
    order: &mut Vec<usize>,
    final_value: &Option<Option<Bytes>>,
) -> bool {
    if left.is_empty() {
        return replay(ops, order, final_value);
    }
    for (pos, &i) in left.iter().enumerate() {
        // `i` may go next only if no remaining operation completed before `i` was invoked.
        let blocked = left
            .iter()
            .any(|&j| j != i && ops[j].outcome.is_definite() && ops[j].complete < ops[i].invoke);
        if blocked {
            continue;
        }
        let mut rest = left.to_vec();
        rest.remove(pos);
        order.push(i);
        let ok = permute(ops, &rest, order, final_value);
        order.pop();
        if ok {
            return true;
        }
    }
    false
}

fn replay(ops: &[&Operation], order: &[usize], final_value: &Option<Option<Bytes>>) -> bool {
    let mut state: Option<Bytes> = None;
    for &i in order {
        let op = ops[i];
        let (answer, next) = match (&op.kind, &state) {
            (Kind::Insert(v), None) => (Observed::Ok, Some(v.clone())),
            (Kind::Insert(_), Some(x)) => (Observed::Exists, Some(x.clone())),
            (Kind::Update(v), Some(_)) => (Observed::Ok, Some(v.clone())),
            (Kind::Update(_), None) => (Observed::NotFound, None),
            (Kind::Delete, Some(x)) => (Observed::Value(x.clone()), None),
            (Kind::Delete, None) => (Observed::NotFound, None),
            (Kind::Get, s) => (
                s.clone().map(Observed::Value).unwrap_or(Observed::NotFound),
                s.clone(),
            ),
        };
        // `Ok` to a delete: a removal whose value was not kept (docs/protocol.md, "Sessions").
        let removal_not_kept = matches!(
            (&op.kind, &op.outcome, &answer),
            (Kind::Delete, Observed::Ok, Observed::Value(_))
        );
        if op.outcome.is_definite() && op.outcome != answer && !removal_not_kept {
            return false;
        }
        state = next;
    }
    match final_value {
        Some(f) => *f == state,
        None => true,
    }
}

#[test]
fn the_search_agrees_with_brute_force_on_random_small_histories() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut yes, mut no) = (0, 0);
    for round in 0..3000 {
        let n = 2 + (round % 6);
        let (ops, final_value) = random_history(&mut rng, n);
        let refs: Vec<&Operation> = ops.iter().collect();
        let expected = brute_force(&ops, &final_value);
        let fv = final_value.as_ref().map(|f| f.as_ref());
        let got = check_key(&refs, None, fv, DEFAULT_SEARCH_BUDGET);
        assert!(
            !matches!(got, Verdict::Undecided { .. }),
            "tiny history undecided"
        );
        assert_eq!(
            got == Verdict::Linearizable,
            expected,
            "round {round}: search says {got:?}, brute force {expected}; final {final_value:?}; ops {ops:#?}"
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both verdicts must be well represented, or this test proves nothing.
    assert!(yes > 500 && no > 500, "linearizable {yes}, not {no}");
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
