//! Linearizability of one key's history: Wing and Gong's search with Lowe's memoization.
//!
//! The history of one key is a set of operations, each with an invoke time, a completion time and
//! an outcome. It is *linearizable* if the operations can be put in one sequence that (a) respects
//! real time — an operation that completed before another was invoked comes first — and (b) makes
//! every definite answer the one the model gives in that sequence. The model is a register that
//! may be absent: insert succeeds only on an absent key (else `exists`), update only on
//! a present one (else `not found`), delete answers the old value (or `not found`), get answers the
//! value (or `not found`).
//!
//! Outcomes that are not definite change the problem, not the model:
//! - a *refused* (`unavailable`) or *unsent* write never happened: it is left out, so if its value
//!   is seen, no sequence explains that read and the key fails;
//! - an *indeterminate* write may have happened at any point after its invoke, with no upper
//!   bound (it may sit in a replication queue and surface at a later warm start), or never: it gets
//!   a completion time of infinity, an unchecked answer, and is *optional* — the search succeeds
//!   once every definite operation is placed, whether or not the optional ones are;
//! - a read without an answer tells nothing and is left out.
//!
//! The final dump is one more read, invoked after everything else completed.
//!
//! # The search
//!
//! Operations become call and return entries in a time-ordered doubly linked list. The search
//! walks the list: at a call entry it tries to *linearize* that operation next (apply it to the
//! model; its answer must match); if that works, both its entries are lifted out of the list and
//! the walk restarts at the head. Reaching a return entry means that operation had to be placed
//! before this point but nothing placed so far allowed it: undo the last choice (put its entries
//! back, restore the state) and try the next call entry after it. An empty stack there means no
//! sequence exists. Lowe's memoization prunes revisits: a (set of linearized operations, model
//! state) pair already explored leads nowhere new, so it is not explored twice. The search is
//! exponential in the worst case; a step budget turns a runaway search into an explicit
//! [`Verdict::Undecided`] instead of a hung test, and tests treat undecided as a failure.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::{Kind, Observed, Operation};

/// The result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some sequence explains every answer.
    Linearizable,
    /// No sequence does.
    Violation(Counterexample),
    /// The search used up its step budget without an answer.
    Undecided {
        /// Steps taken.
        steps: u64,
    },
}

/// Where the deepest attempt got stuck: enough to start reading the history by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// Operations placed in the longest partial sequence found.
    pub placed: usize,
    /// Operations that had to be placed (definite answers, plus the final read).
    pub required: usize,
    /// The operation that could not be placed next: an index into the operations given to
    /// [`check_key`], or `None` for the final dump read.
    pub stuck: Option<usize>,
    /// The model's value at that point (`None` = absent).
    pub state: Option<Bytes>,
}

/// What one operation returned, as the register model sees it (values interned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Returned {
    Ok,
    Exists,
    NotFound,
    /// A value, by its interned id.
    Value(u32),
}

/// The model state: the interned id of the present value, or `None` when the key is absent.
type State = Option<u32>;

/// What the search knows of one operation.
#[derive(Clone, Debug)]
struct SearchOp {
    /// The model operation, values interned.
    action: Action,
    /// The answer it must give, or `None` when any answer will do (indeterminate).
    expect: Option<Returned>,
    /// Must be placed for the search to succeed (false: indeterminate, may never have happened).
    required: bool,
    /// Index in the caller's slice; `None` for the final read.
    source: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Insert(u32),
    Update(u32),
    Delete,
    Get,
}

/// The register: applies `action` to `state`, giving its answer and the next state.
struct Model;

impl Model {
    fn step(state: State, action: Action) -> (Returned, State) {
        match (action, state) {
            (Action::Insert(v), None) => (Returned::Ok, Some(v)),
            (Action::Insert(_), Some(x)) => (Returned::Exists, Some(x)),
            (Action::Update(v), Some(_)) => (Returned::Ok, Some(v)),
            (Action::Update(_), None) => (Returned::NotFound, None),
            (Action::Delete, Some(x)) => (Returned::Value(x), None),
            (Action::Delete, None) => (Returned::NotFound, None),
            (Action::Get, Some(x)) => (Returned::Value(x), Some(x)),
            (Action::Get, None) => (Returned::NotFound, None),
        }
    }

    /// Whether an observed answer fits the model's. Only the model's answers differ from what a
    /// server may say in one case: `Ok` to a delete is a retried delete found applied whose
    /// removed value the server did not keep (docs/protocol.md, "Sessions"): a removal of some
    /// value, unknown.
    fn fits(action: Action, observed: Returned, model: Returned) -> bool {
        match (action, observed, model) {
            (Action::Delete, Returned::Ok, Returned::Value(_)) => true,
            _ => observed == model,
        }
    }
}

/// Checks one key's operations, starting from `initial` (`None` = absent), and, if `final_value`
/// is given, against that final state (`Some(None)` = the key is absent at the end). `budget`
/// bounds the search steps.
pub fn check_key(
    ops: &[&Operation],
    initial: Option<&Bytes>,
    final_value: Option<Option<&Bytes>>,
    budget: u64,
) -> Verdict {
    let mut values = Interner::default();
    let initial_state = initial.map(|v| values.id(v));
    let observed = observed_values(ops, final_value);
    let mut search_ops = Vec::new();
    let mut times = Vec::new();
    let mut last_complete = 0u64;
    for (i, op) in ops.iter().enumerate() {
        let expect = match &op.outcome {
            Observed::Ok => Some(Returned::Ok),
            Observed::Exists => Some(Returned::Exists),
            Observed::NotFound => Some(Returned::NotFound),
            Observed::Value(v) => Some(Returned::Value(values.id(v))),
            Observed::Indeterminate(_) if op.kind.is_write() => None,
            // Refused and unsent writes never happened; unanswered reads tell nothing.
            _ => continue,
        };
        // An indeterminate update whose value nobody ever saw can be dropped without changing
        // the verdict: if it happened on a present key, every later answer up to the next
        // overwrite is the same as if it had not (inserts still see `exists`, updates still
        // succeed), except a get or delete answering its value, which by assumption never
        // happened; on an absent key it does nothing. Dropping it keeps the search small.
        if expect.is_none() {
            if let Kind::Update(v) = &op.kind {
                if !observed.contains(v) {
                    continue;
                }
            }
        }
        let action = match &op.kind {
            Kind::Insert(v) => Action::Insert(values.id(v)),
            Kind::Update(v) => Action::Update(values.id(v)),
            Kind::Delete => Action::Delete,
            Kind::Get => Action::Get,
        };
        let invoke = nanos(op.invoke);
        let complete = if expect.is_some() {
            nanos(op.complete).max(invoke)
        } else {
            INFINITY
        };
        if expect.is_some() {
            last_complete = last_complete.max(complete);
        }
        search_ops.push(SearchOp {
            action,
            expect,
            required: expect.is_some(),
            source: Some(i),
        });
        times.push((invoke, complete));
    }
    if let Some(final_value) = final_value {
        let expect = match final_value {
            Some(v) => Returned::Value(values.id(v)),
            None => Returned::NotFound,
        };
        search_ops.push(SearchOp {
            action: Action::Get,
            expect: Some(expect),
            required: true,
            source: None,
        });
        // After every definite answer, before the open end of the indeterminate ones.
        times.push((last_complete.saturating_add(1), INFINITY - 1));
    }
    let mut search = Search::new(search_ops, &times, initial_state);
    let verdict = search.run(budget);
    match verdict {
        Outcome3::Linearizable => Verdict::Linearizable,
        Outcome3::Undecided(steps) => Verdict::Undecided { steps },
        Outcome3::Violation => Verdict::Violation(Counterexample {
            placed: search.best.placed,
            required: search.required_total,
            stuck: search.best.stuck.and_then(|i| search.ops[i].source),
            state: search.best.state.and_then(|id| values.value(id).cloned()),
        }),
    }
}

/// The completion time of an operation that may complete at any time.
const INFINITY: u64 = u64::MAX;

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(INFINITY - 2)
}

/// Values some answer or the final state shows.
fn observed_values<'a>(
    ops: &'a [&Operation],
    final_value: Option<Option<&'a Bytes>>,
) -> HashSet<&'a Bytes> {
    let mut seen: HashSet<&Bytes> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Observed::Value(v) => Some(v),
            _ => None,
        })
        .collect();
    if let Some(Some(v)) = final_value {
        seen.insert(v);
    }
    seen
}

/// Maps values to small ids so the model state is a `u32`.
#[derive(Default)]
struct Interner {
    ids: HashMap<Bytes, u32>,
    values: Vec<Bytes>,
}

impl Interner {
    fn id(&mut self, v: &Bytes) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(v.clone());
        self.ids.insert(v.clone(), id);
        id
    }

    fn value(&self, id: u32) -> Option<&Bytes> {
        self.values.get(id as usize)
    }
}

enum Outcome3 {
    Linearizable,
    Violation,
    Undecided(u64),
}

/// One entry of the time-ordered list.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The operation, by index.
    op: usize,
    /// True for the return entry, false for the call entry.
    is_return: bool,
}

/// A choice on the search stack, to undo on backtracking.
struct Choice {
    op: usize,
    state_before: State,
    call_entry: usize,
}

/// The deepest partial sequence seen, for the counterexample.
#[derive(Default)]
struct Deepest {
    placed: usize,
    stuck: Option<usize>,
    state: State,
}

/// The search over one key. List nodes: 0 is the head, `1..=n` the entries, `n + 1` the tail.
struct Search {
    ops: Vec<SearchOp>,
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per operation: its call and return node.
    nodes: Vec<(usize, usize)>,
    initial: State,
    required_total: usize,
    best: Deepest,
}

impl Search {
    fn new(ops: Vec<SearchOp>, times: &[(u64, u64)], initial: State) -> Search {
        let mut order: Vec<(u64, u8, Entry)> = Vec::with_capacity(ops.len() * 2);
        for (i, &(invoke, complete)) in times.iter().enumerate() {
            // At equal times calls sort before returns: such operations count as concurrent,
            // the lenient reading of a tie.
            order.push((
                invoke,
                0,
                Entry {
                    op: i,
                    is_return: false,
                },
            ));
            order.push((
                complete,
                1,
                Entry {
                    op: i,
                    is_return: true,
                },
            ));
        }
        order.sort_by_key(|&(t, class, e)| (t, class, e.op));
        let entries: Vec<Entry> = order.into_iter().map(|(_, _, e)| e).collect();
        let n = entries.len();
        let next: Vec<usize> = (0..n + 2).map(|i| (i + 1).min(n + 1)).collect();
        let prev: Vec<usize> = (0..n + 2).map(|i| i.saturating_sub(1)).collect();
        let mut nodes = vec![(0, 0); ops.len()];
        for (k, e) in entries.iter().enumerate() {
            if e.is_return {
                nodes[e.op].1 = k + 1;
            } else {
                nodes[e.op].0 = k + 1;
            }
        }
        let required_total = ops.iter().filter(|o| o.required).count();
        Search {
            ops,
            entries,
            next,
            prev,
            nodes,
            initial,
            required_total,
            best: Deepest::default(),
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    fn lift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.nodes[op];
        self.relink(ret);
        self.relink(call);
    }

    fn run(&mut self, budget: u64) -> Outcome3 {
        let tail = self.entries.len() + 1;
        let words = self.ops.len().div_ceil(64);
        let mut placed = vec![0u64; words];
        let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
        let mut stack: Vec<Choice> = Vec::new();
        let mut state = self.initial;
        let mut required_left = self.required_total;
        let mut node = self.next[0];
        let mut steps = 0u64;
        loop {
            if required_left == 0 {
                return Outcome3::Linearizable;
            }
            steps += 1;
            if steps > budget {
                return Outcome3::Undecided(steps);
            }
            let entry = (node != tail).then(|| self.entries[node - 1]);
            match entry {
                Some(Entry {
                    op,
                    is_return: false,
                }) => {
                    let (answer, after) = Model::step(state, self.ops[op].action);
                    let fits = self.ops[op]
                        .expect
                        .is_none_or(|e| Model::fits(self.ops[op].action, e, answer));
                    if fits {
                        placed[op / 64] |= 1 << (op % 64);
                        if seen.insert((placed.clone(), after)) {
                            stack.push(Choice {
                                op,
                                state_before: state,
                                call_entry: node,
                            });
                            state = after;
                            self.lift(op);
                            if self.ops[op].required {
                                required_left -= 1;
                            }
                            node = self.next[0];
                            continue;
                        }
                        placed[op / 64] &= !(1 << (op % 64));
                    }
                    node = self.next[node];
                }
                stuck => {
                    // A return entry (or the end): its operation should have been placed by now.
                    if stack.len() >= self.best.placed {
                        self.best = Deepest {
                            placed: stack.len(),
                            stuck: stuck.map(|e| e.op),
                            state,
                        };
                    }
                    let Some(choice) = stack.pop() else {
                        return Outcome3::Violation;
                    };
                    state = choice.state_before;
                    placed[choice.op / 64] &= !(1 << (choice.op % 64));
                    self.unlift(choice.op);
                    if self.ops[choice.op].required {
                        required_left += 1;
                    }
                    node = self.next[choice.call_entry];
                }
            }
        }
    }
}
