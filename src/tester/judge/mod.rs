//! The judge: compares every answer with what the model allows, records violations, and keeps the
//! model up to date. It does no I/O, so it is tested on fabricated answers.
//!
//! Two questions are asked of each answer (DESIGN §5):
//! 1. *May a server in this state answer like that at all?* With both servers up only a definite
//!    answer (ok, a value, not found, exists) will do; with the backup down a write must be
//!    refused (`unavailable`/`indeterminate`) and a read may be refused or answered; with the
//!    primary down the request must fail.
//! 2. *Does a definite answer agree with the model?* Insert succeeds iff the key may be absent,
//!    update and remove iff it may be present (remove returns one of the model's values), get
//!    returns one of them.
//!
//! Then the model takes what the answer teaches: a definite answer settles the key, a refusal
//! leaves it alone, an indeterminate write (or one without an answer) adds its effect to the
//! possibilities. A wrong answer to a write leaves the key uncertain, so one fault is reported
//! once rather than again at every later read.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::tester::model::{Model, Possible, Up};
use crate::tester::script::{Action, KvOp, PairMember, Step};
use quickv_client::ClientError;
use quickv_proto::{Outcome, Reply};

/// What a server (or the attempt to reach it) answered to one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Insert or update took effect.
    Ok,
    /// Get read this value, or remove removed it.
    Value(Bytes),
    /// The key is absent.
    NotFound,
    /// Insert of a key that exists.
    Exists,
    /// Refused before it took effect anywhere.
    Unavailable(String),
    /// A write that may or may not have taken effect.
    Indeterminate(String),
    /// An error answer, or an answer that does not fit the operation.
    Error(String),
    /// Refused: the client's certificate role does not grant the operation.
    Forbidden(String),
    /// No connection: the request was never sent.
    Unreachable(String),
    /// Sent, but nothing came back in time; a write may have taken effect. Says how long the
    /// wait was, or the client's own deadline error.
    Timeout(String),
}

impl Answer {
    /// The answer in the shared vocabulary (what metrics and reports count).
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Ok | Answer::Value(_) => Outcome::Ok,
            Answer::NotFound => Outcome::NotFound,
            Answer::Exists => Outcome::Exists,
            Answer::Unavailable(_) => Outcome::Unavailable,
            Answer::Indeterminate(_) => Outcome::Indeterminate,
            Answer::Error(_) => Outcome::Error,
            Answer::Forbidden(_) => Outcome::Forbidden,
            Answer::Unreachable(_) => Outcome::Unreachable,
            Answer::Timeout(_) => Outcome::Timeout,
        }
    }

    /// Nothing came back within `wait` (the runner's own timer).
    pub fn no_answer_within(wait: Duration) -> Answer {
        Answer::Timeout(format!("no answer within {} s", wait.as_secs_f64()))
    }

    /// A definite answer about the data (the request was served).
    pub fn is_definite(&self) -> bool {
        self.outcome().is_definite()
    }

    /// The answer to a call that returned a reply.
    pub fn from_reply(reply: Reply) -> Answer {
        match reply {
            Reply::Ok => Answer::Ok,
            Reply::Value(v) => Answer::Value(v),
            Reply::NotFound => Answer::NotFound,
            Reply::Exists => Answer::Exists,
            Reply::Unavailable(r) => Answer::Unavailable(r),
            Reply::Indeterminate(r) => Answer::Indeterminate(r),
            Reply::Error { code, message } => match Outcome::of_error(code) {
                Outcome::Forbidden => Answer::Forbidden(format!("{code}: {message}")),
                _ => Answer::Error(format!("{code}: {message}")),
            },
            other => Answer::Error(format!("unexpected answer {other:?}")),
        }
    }
}

impl From<ClientError> for Answer {
    /// The verdict is the one mapping, [`Outcome::from(&ClientError)`](Outcome::from); this keeps
    /// the reason beside it, so that `Answer::from(e).outcome() == Outcome::from(&e)`.
    fn from(e: ClientError) -> Answer {
        let outcome = Outcome::from(&e);
        let took_effect = e.took_effect();
        let why = match e {
            ClientError::Unavailable(r)
            | ClientError::Indeterminate(r)
            | ClientError::Forbidden(r)
            | ClientError::Connection(r) => r,
            other => other.to_string(),
        };
        match outcome {
            Outcome::Exists => Answer::Exists,
            Outcome::NotFound => Answer::NotFound,
            Outcome::Unavailable => Answer::Unavailable(why),
            Outcome::Indeterminate => Answer::Indeterminate(why),
            Outcome::Forbidden => Answer::Forbidden(why),
            Outcome::Timeout => Answer::Timeout(why),
            Outcome::Unreachable => Answer::Unreachable(why),
            // The one error that is a success: a delete found applied, value not kept.
            Outcome::Ok if took_effect => Answer::Ok,
            // Any other error is never `Ok`; should the mapping say so one day, it is not one.
            Outcome::Error | Outcome::Ok => Answer::Error(why),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Ok => f.write_str("ok"),
            Answer::Value(v) => write!(f, "value {:?}", String::from_utf8_lossy(v)),
            Answer::NotFound => f.write_str("not found"),
            Answer::Exists => f.write_str("exists"),
            Answer::Unavailable(r) => write!(f, "unavailable ({r})"),
            Answer::Indeterminate(r) => write!(f, "indeterminate ({r})"),
            Answer::Error(r) => write!(f, "error ({r})"),
            Answer::Forbidden(r) => write!(f, "forbidden ({r})"),
            Answer::Unreachable(r) => write!(f, "no connection ({r})"),
            Answer::Timeout(r) => f.write_str(r),
        }
    }
}

/// Where in the script a violation happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// At this 1-based line.
    Line(usize),
    /// In the final comparison of dumps with the model, after the last line.
    End,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::End => f.write_str("end"),
        }
    }
}

/// One expectation the servers did not meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The line (or the final check) it belongs to.
    pub at: At,
    /// The instruction as written, or what the final check looked at.
    pub instruction: String,
    /// What the server answered.
    pub answer: String,
    /// What the model expected.
    pub expected: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: answered {}; expected {}",
            self.at, self.instruction, self.answer, self.expected
        )
    }
}

/// The model, the beliefs about the servers, and the violations found so far.
#[derive(Debug)]
pub struct Judge {
    /// What the table should hold.
    model: Model,
    /// Which servers are believed up.
    up: Up,
    /// Whether beliefs change only through `Switch` (see [`Up::after`]).
    uses_switch: bool,
    /// Everything found wrong, in the order found.
    violations: Vec<Violation>,
}

impl Judge {
    /// A judge for a script that starts with both servers down and the table empty.
    pub fn new(uses_switch: bool) -> Judge {
        Judge {
            model: Model::default(),
            up: Up::Neither,
            uses_switch,
            violations: Vec::new(),
        }
    }

    /// Which servers are believed up.
    pub fn up(&self) -> Up {
        self.up
    }

    /// The model as it stands.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Everything found wrong so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Gives up the violations (the judge is done).
    pub fn into_violations(self) -> Vec<Violation> {
        self.violations
    }

    /// Records a failure the runner saw itself (a server that did not stop cleanly, a command
    /// that failed).
    pub fn record(&mut self, violation: Violation) {
        self.violations.push(violation);
    }

    /// Judges one sequential operation.
    pub fn operation(&mut self, step: &Step<KvOp>, answer: &Answer) {
        let after = self.judge(step, answer, &[self.up]);
        self.model.set(step.item.key(), after);
    }

    /// Judges the operations of a block, which ran concurrently with `actions` (in that order).
    ///
    /// An operation may have been served at any point of the action sequence, so an answer is
    /// acceptable if the servers could have given it in any of the states the block went through.
    /// The keys are distinct, so every operation is judged against the model as it was before the
    /// block; the model takes their effects first and the actions' belief changes after (a block
    /// that takes both servers down empties the model even of its own writes: they went to the
    /// old primary, whose connection was closed when it went down).
    pub fn block(&mut self, outcomes: &[(&Step<KvOp>, Answer)], actions: &[&Action]) {
        let mut phases = vec![self.up];
        for action in actions {
            let next = self.up_after(phases[phases.len() - 1], action);
            phases.push(next);
        }
        let settled: Vec<(&str, Possible)> = outcomes
            .iter()
            .map(|(step, answer)| (step.item.key(), self.judge(step, answer, &phases)))
            .collect();
        for (key, possible) in settled {
            self.model.set(key, possible);
        }
        for action in actions {
            self.action(action);
        }
    }

    /// Updates beliefs after a server action; both servers down empties the model.
    pub fn action(&mut self, action: &Action) {
        self.up = self.up_after(self.up, action);
        if self.up == Up::Neither {
            self.model.clear();
        }
    }

    /// Judges the final dump of `server` (sorted or not): every key must hold one of the model's
    /// values, and every key the model is sure of must be there. Dumping the primary first
    /// settles uncertain keys, so a backup that differs from the primary is caught too.
    pub fn dump(&mut self, server: PairMember, answer: Result<&[(Bytes, Bytes)], &Answer>) {
        let entries = match answer {
            Ok(entries) => entries,
            Err(refusal) => {
                // A server alone may not know it is current (DESIGN §3 invariant 6).
                let excused =
                    matches!(refusal, Answer::Unavailable(_)) && !self.up.contains(server.other());
                if !excused {
                    self.violations.push(Violation {
                        at: At::End,
                        instruction: format!("dump of the {server}"),
                        answer: refusal.to_string(),
                        expected: format!("every pair (the {server} is up)"),
                    });
                }
                return;
            }
        };
        let mut seen = BTreeSet::new();
        for (key, value) in entries {
            let shown = String::from_utf8_lossy(key);
            let possible = match std::str::from_utf8(key) {
                Ok(key) => self.model.possible(key),
                Err(_) => Possible::absent(),
            };
            if possible.may_hold(value) {
                self.model
                    .set(&shown, Possible::value(String::from_utf8_lossy(value)));
            } else {
                self.violations.push(Violation {
                    at: At::End,
                    instruction: format!("dump of the {server}, key {shown:?}"),
                    answer: format!("value {:?}", String::from_utf8_lossy(value)),
                    expected: possible.to_string(),
                });
            }
            seen.insert(shown.into_owned());
        }
        let missing: Vec<(String, Possible)> = self
            .model
            .entries()
            .filter(|(key, _)| !seen.contains(*key))
            .map(|(key, possible)| (key.to_string(), possible.clone()))
            .collect();
        for (key, possible) in missing {
            if possible.may_be_absent() {
                self.model.set(&key, Possible::absent());
            } else {
                self.violations.push(Violation {
                    at: At::End,
                    instruction: format!("dump of the {server}, key {key:?}"),
                    answer: "absent".into(),
                    expected: possible.to_string(),
                });
            }
        }
    }

    fn up_after(&self, up: Up, action: &Action) -> Up {
        up.after(action, self.uses_switch)
    }

    /// Checks one answer against every state in `phases`, records a violation if it fits none
    /// or contradicts the model, and returns what the key may hold afterwards.
    fn judge(&mut self, step: &Step<KvOp>, answer: &Answer, phases: &[Up]) -> Possible {
        let op = &step.item;
        let before = self.model.possible(op.key());
        let learned = learn(op, answer, &before);
        let permitted = phases.iter().any(|up| permitted(op, answer, *up));
        if !permitted || learned.is_none() {
            let mut expected: Vec<String> = Vec::new();
            for up in phases {
                let e = expectation(op, &before, *up);
                if !expected.contains(&e) {
                    expected.push(e);
                }
            }
            self.violations.push(Violation {
                at: At::Line(step.line),
                instruction: step.text.clone(),
                answer: answer.to_string(),
                expected: expected.join("; or "),
            });
        }
        learned.unwrap_or_else(|| {
            if op.is_write() {
                before.maybe_after(op)
            } else {
                before
            }
        })
    }
}

/// Whether a server in state `up` may answer `op` with `answer` (regardless of the model).
fn permitted(op: &KvOp, answer: &Answer, up: Up) -> bool {
    match (
        up.contains(PairMember::Primary),
        up.contains(PairMember::Backup),
    ) {
        (false, _) => !answer.is_definite(),
        (true, true) => answer.is_definite(),
        (true, false) if op.is_write() => {
            matches!(answer, Answer::Unavailable(_) | Answer::Indeterminate(_))
        }
        (true, false) => answer.is_definite() || matches!(answer, Answer::Unavailable(_)),
    }
}

/// What the key may hold after `answer`, or `None` if a definite answer contradicts `before`.
fn learn(op: &KvOp, answer: &Answer, before: &Possible) -> Option<Possible> {
    let fits = |ok: bool, then: Possible| ok.then_some(then);
    match (op, answer) {
        (KvOp::Insert { value, .. }, Answer::Ok) => {
            fits(before.may_be_absent(), Possible::value(value.clone()))
        }
        (KvOp::Insert { .. }, Answer::Exists) => fits(before.may_be_present(), before.present()),
        (KvOp::Update { value, .. }, Answer::Ok) => {
            fits(before.may_be_present(), Possible::value(value.clone()))
        }
        (KvOp::Remove { .. }, Answer::Value(v)) => fits(before.may_hold(v), Possible::absent()),
        // A retried remove found applied, its (large) value not kept (docs/protocol.md).
        (KvOp::Remove { .. }, Answer::Ok) => fits(before.may_be_present(), Possible::absent()),
        (KvOp::Get { .. }, Answer::Value(v)) => fits(
            before.may_hold(v),
            Possible::value(String::from_utf8_lossy(v)),
        ),
        (KvOp::Update { .. } | KvOp::Remove { .. } | KvOp::Get { .. }, Answer::NotFound) => {
            fits(before.may_be_absent(), Possible::absent())
        }
        (
            _,
            Answer::Unavailable(_)
            | Answer::Error(_)
            | Answer::Forbidden(_)
            | Answer::Unreachable(_),
        ) => Some(before.clone()),
        (_, Answer::Indeterminate(_) | Answer::Timeout(_)) => Some(before.maybe_after(op)),
        // A definite answer that does not fit the operation at all (e.g. `exists` to a get).
        _ => None,
    }
}

/// The answers a server in state `up` may give, in words.
fn expectation(op: &KvOp, before: &Possible, up: Up) -> String {
    match (
        up.contains(PairMember::Primary),
        up.contains(PairMember::Backup),
    ) {
        (false, _) => format!("a failure ({up})"),
        (true, true) => definite_answers(op, before),
        (true, false) if op.is_write() => format!("unavailable or indeterminate ({up})"),
        (true, false) => format!("{} or unavailable ({up})", definite_answers(op, before)),
    }
}

/// The definite answers the model allows, e.g. `ok or exists` for an insert of an uncertain key.
fn definite_answers(op: &KvOp, before: &Possible) -> String {
    let mut answers: Vec<String> = Vec::new();
    for v in before.iter() {
        let answer = match (op, v) {
            (KvOp::Insert { .. }, None) | (KvOp::Update { .. }, Some(_)) => "ok".to_string(),
            (KvOp::Insert { .. }, Some(_)) => "exists".to_string(),
            (_, None) => "not found".to_string(),
            (KvOp::Remove { .. } | KvOp::Get { .. }, Some(v)) => format!("value {v:?}"),
        };
        if !answers.contains(&answer) {
            answers.push(answer);
        }
    }
    answers.join(" or ")
}

#[cfg(test)]
mod tests;
