//! Recorded client histories and the checker that judges them.
//!
//! A fault test is only as good as its judge. Counting errors says nothing about whether the
//! answers that *did* come back were right; this module answers that question for every key of a
//! run, the way Jepsen-style testers do:
//!
//! 1. **Record.** A [`Recorder`] notes every client operation: who (client id), which key, what
//!    (insert / update / delete / get, each write with a value unique in the run), the monotonic
//!    time it was invoked and the time its answer came back, and the outcome: a definite answer
//!    (`ok`, a value, `not found`, `exists`) and, for a read, which server of the pair gave it
//!    ([`Server`]: reads at both servers go into one history), *refused* (`unavailable`: the server promises it never
//!    took effect), *indeterminate* (sent, no answer: it may or may not have happened) or *failed*
//!    (no answer; for a write, never sent). An operation dropped half-way (a cancelled task)
//!    records itself as indeterminate, so nothing invoked is ever missing from a history.
//!    [`load`] drives several recorded clients against a server with bounded count and time.
//! 2. **Check.** [`check`] splits the history by key (single-key operations compose: a history is
//!    linearizable iff each key's sub-history is) and searches each key for a linearization, Wing
//!    and Gong's algorithm with Lowe's memoization on (operations linearized, model state); see
//!    [`linearize`]. The model is one register that may be absent: insert succeeds only on an
//!    absent key, update and delete only on a present one, delete answers the old value.
//!    Indeterminate writes may take effect at any point after their invoke, or never; refused and
//!    unsent writes never do. The final dump of the primary is checked as one more read after
//!    everything.
//! 3. **Report.** A [`HistoryReport`] gives the figures a fault run must hold to: acknowledged writes lost
//!    (the answers linearize but the final dump contradicts every linearization), linearizability
//!    violations, refused writes that took effect (their unique value seen anywhere), keys differing
//!    between the two servers' dumps, and, for information, indeterminate count, unavailable time
//!    and recovery time after each marked fault.
//!
//! A history can span a deliberate loss of everything (both servers killed: the pair restarts
//! empty by design); [`Recorder::mark_reset`] splits it into epochs, each checked from an empty
//! store, and only the last one against the final dump.
//!
//! Histories serialize to JSON, so a client running in another network namespace (see
//! `tests/netlab.rs`) can hand its history to the process that checks it.

pub mod linearize;
pub mod load;
mod recorder;
mod report;

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use quickv_client::outcome::of_call;
use quickv_client::ClientError;
use quickv_proto::{Op, OpKind, Outcome, Reply};

pub use load::{Workload, WorkloadFigures};
pub use recorder::{Invocation, Recorder};
pub use report::{check, check_with_budget, FaultFigure, HistoryReport, DEFAULT_SEARCH_BUDGET};

/// Identifies one recorded client: its operations are sequential (one at a time), which is what
/// lets the checker trust their real-time order.
pub type ClientId = u32;

/// What an operation asked for. Writes carry their value, unique within a run so that a value seen
/// anywhere names exactly one write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Create the key with this value; `exists` if present.
    Insert(#[serde(with = "text_or_bytes")] Bytes),
    /// Replace the value of a present key; `not found` if absent.
    Update(#[serde(with = "text_or_bytes")] Bytes),
    /// Remove a present key, answering its old value; `not found` if absent.
    Delete,
    /// Read the key.
    Get,
}

impl Kind {
    /// The operation kind in the shared vocabulary.
    pub fn op_kind(&self) -> OpKind {
        match self {
            Kind::Insert(_) => OpKind::Insert,
            Kind::Update(_) => OpKind::Update,
            Kind::Delete => OpKind::Delete,
            Kind::Get => OpKind::Get,
        }
    }

    /// True for insert, update and delete.
    pub fn is_write(&self) -> bool {
        self.op_kind().is_write()
    }

    /// The value a write stores, if any.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            Kind::Insert(v) | Kind::Update(v) => Some(v),
            Kind::Delete | Kind::Get => None,
        }
    }

    /// The protocol operation for `key`.
    pub fn op(&self, key: Bytes) -> Op {
        match self {
            Kind::Insert(value) => Op::Insert {
                key,
                value: value.clone(),
            },
            Kind::Update(value) => Op::Update {
                key,
                value: value.clone(),
            },
            Kind::Delete => Op::Delete { key },
            Kind::Get => Op::Get { key },
        }
    }

    /// A short lowercase name for reports ([`OpKind::name`]).
    pub fn name(&self) -> &'static str {
        self.op_kind().name()
    }
}

/// The words that came with a result: the server's reason for a refusal or an indeterminate
/// write, a server error, an answer that does not fit the operation, or the client's error.
fn reason(result: Result<Reply, ClientError>) -> String {
    match result {
        Ok(Reply::Unavailable(r) | Reply::Indeterminate(r))
        | Err(ClientError::Unavailable(r) | ClientError::Indeterminate(r)) => r,
        Ok(Reply::Error { code, message }) => format!("server error ({code}): {message}"),
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    }
}

/// How an operation ended, as far as the client can tell: the shared [`Outcome`] label plus what
/// a checker needs beside it (the value read, the reason given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// Insert or update succeeded.
    Ok,
    /// A get found this value, or a delete removed it.
    Value(#[serde(with = "text_or_bytes")] Bytes),
    /// Update, delete or get of an absent key.
    NotFound,
    /// Insert of a present key.
    Exists,
    /// Answered `unavailable`: the server promises the operation never took effect.
    Refused(String),
    /// A write sent without an answer (link or connection lost): it may or may not have happened.
    Indeterminate(String),
    /// No answer at all. For a write the client library guarantees it was never sent (a write that
    /// was sent and lost answers indeterminate); a failed read tells nothing.
    Failed(String),
}

impl Observed {
    /// Classifies the raw result of [`quickv_client::Client::call`] for an operation of kind `kind`.
    ///
    /// The mapping follows the client's contract: a connection error on a write means it was never
    /// written to the stream (written writes are failed as indeterminate), so it is `Failed`.
    /// A server `Error` answer is a refusal of bad input, which never takes effect either.
    ///
    /// The verdict is the shared one ([`quickv_client::outcome::of_call`]); this only keeps the
    /// payload beside it: the value read, the server's reason, or what went wrong.
    pub fn from_call(kind: &Kind, result: Result<Reply, ClientError>) -> Observed {
        match (of_call(&result), result) {
            (Outcome::Ok, Ok(Reply::Ok)) => Observed::Ok,
            (Outcome::Ok, Ok(Reply::Value(v))) => Observed::Value(v),
            (Outcome::NotFound, _) => Observed::NotFound,
            (Outcome::Exists, _) => Observed::Exists,
            (Outcome::Unavailable, result) => Observed::Refused(reason(result)),
            (Outcome::Indeterminate, result) if kind.is_write() => {
                Observed::Indeterminate(reason(result))
            }
            (Outcome::Indeterminate, result) => {
                Observed::Failed(format!("a read answered indeterminate: {}", reason(result)))
            }
            (_, result) => Observed::Failed(reason(result)),
        }
    }

    /// A definite answer from a server that was serving: ok, value, not found, exists.
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            Observed::Ok | Observed::Value(_) | Observed::NotFound | Observed::Exists
        )
    }
}

/// Which server of a pair answered an operation. Reads at both servers go into one history and
/// are judged together: with the commit point at the backup (DESIGN.md §3), a read is
/// linearizable wherever it was answered, so the checker treats every read alike and only
/// names the server in its findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// The primary (every write, and reads sent there).
    Primary,
    /// The backup (reads only).
    Backup,
}

impl Server {
    /// `primary` or `backup`, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Server::Primary => "primary",
            Server::Backup => "backup",
        }
    }
}

impl From<quickv_client::Source> for Server {
    fn from(source: quickv_client::Source) -> Server {
        match source {
            quickv_client::Source::Primary => Server::Primary,
            quickv_client::Source::Backup => Server::Backup,
        }
    }
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The client that issued it.
    pub client: ClientId,
    /// The key it touched.
    #[serde(with = "text_or_bytes")]
    pub key: Bytes,
    /// What it asked.
    pub kind: Kind,
    /// When it was invoked, since the recorder's start (monotonic clock).
    pub invoke: Duration,
    /// When its outcome was known, since the recorder's start.
    pub complete: Duration,
    /// How it ended.
    pub outcome: Observed,
    /// The server that answered, when known: a read sent to either server of a pair records
    /// which one gave its answer (`None`: the primary, or a history from before reads at both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
}

/// A point in a run the test wants figures about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When, since the recorder's start.
    pub at: Duration,
    /// What kind of event.
    pub kind: MarkKind,
    /// In words, for the report ("backup SIGKILL").
    pub label: String,
}

/// Kinds of [`Mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// A fault was injected: the report gives the time to the first acknowledged write after it.
    Fault,
    /// Everything stored was lost on purpose (both servers killed): the store is empty again and
    /// operations invoked after this point are checked from an empty store.
    Reset,
}

/// A complete record of a run, as the checker consumes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Every operation, in completion order (the checker does not rely on the order).
    pub ops: Vec<Operation>,
    /// Faults and resets, in time order.
    pub marks: Vec<Mark>,
}

impl History {
    /// The history as JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data (strings, numbers, enums) cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a history written by [`History::to_json`].
    pub fn from_json(text: &str) -> Result<History, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Keys and values as JSON text when they are UTF-8 (readable histories), else as byte arrays.
mod text_or_bytes {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(b.iter()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct TextOrBytes;
        impl<'de> Visitor<'de> for TextOrBytes {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v.as_bytes()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(Bytes::from(out))
            }
        }
        d.deserialize_any(TextOrBytes)
    }
}

#[cfg(test)]
mod tests;
