//! The checker's search: a runaway search ends undecided within its budget, and the search agrees
//! with brute force on random small histories.

use super::*;

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
            server: None,
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
