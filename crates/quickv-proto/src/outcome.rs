//! One vocabulary for what a request was ([`OpKind`]) and how it ended ([`Outcome`]), shared by
//! every part of quickv that counts, records or judges requests: the server's metrics, the HTTP
//! gateway, the tester, recorded histories and the load generator.
//!
//! The mapping from a server's answer to an outcome is written once, here ([`Outcome::of`]); the
//! client crate maps its errors once (`impl From<&ClientError> for Outcome` in `quickv-client`).
//! An outcome carries no data: it is a label (a metrics series, a histogram row, a verdict). Tools
//! that need the value or the reason keep them beside it.

use crate::frame::{ErrorCode, Op, Reply};

/// Which operation a request is: the `op` label of the metrics, the row of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// [`Op::Hello`].
    Hello,
    /// [`Op::Ping`].
    Ping,
    /// [`Op::Insert`].
    Insert,
    /// [`Op::Update`].
    Update,
    /// [`Op::Delete`].
    Delete,
    /// [`Op::Get`].
    Get,
    /// [`Op::Count`].
    Count,
    /// [`Op::Dump`].
    Dump,
    /// [`Op::Status`].
    Status,
    /// [`Op::Shutdown`].
    Shutdown,
}

impl OpKind {
    /// Every kind, in label order ([`OpKind::index`]).
    pub const ALL: [OpKind; 10] = [
        OpKind::Hello,
        OpKind::Ping,
        OpKind::Insert,
        OpKind::Update,
        OpKind::Delete,
        OpKind::Get,
        OpKind::Count,
        OpKind::Dump,
        OpKind::Status,
        OpKind::Shutdown,
    ];

    /// The kind of `op` (taken before the op is consumed).
    pub fn of(op: &Op) -> OpKind {
        match op {
            Op::Hello { .. } => OpKind::Hello,
            Op::Ping(_) => OpKind::Ping,
            Op::Insert { .. } => OpKind::Insert,
            Op::Update { .. } => OpKind::Update,
            Op::Delete { .. } => OpKind::Delete,
            Op::Get { .. } => OpKind::Get,
            Op::Count => OpKind::Count,
            Op::Dump => OpKind::Dump,
            Op::Status => OpKind::Status,
            Op::Shutdown => OpKind::Shutdown,
        }
    }

    /// The lowercase name (metrics label, reports, command line).
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Hello => "hello",
            OpKind::Ping => "ping",
            OpKind::Insert => "insert",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
            OpKind::Get => "get",
            OpKind::Count => "count",
            OpKind::Dump => "dump",
            OpKind::Status => "status",
            OpKind::Shutdown => "shutdown",
        }
    }

    /// The kind named `name` ([`OpKind::name`]).
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Its position in [`OpKind::ALL`], for arrays of counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// True for the operations that change the table (insert, update, delete): the ones that
    /// are replicated and can end [`Outcome::Indeterminate`].
    pub const fn is_write(self) -> bool {
        matches!(self, OpKind::Insert | OpKind::Update | OpKind::Delete)
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a request ended. The first seven are answers a server gives ([`Outcome::SERVER`]); the
/// last two happen on the client's side only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered as asked: a write took effect, a read found its value, a count, a dump, a status,
    /// an echoed ping, an accepted shutdown.
    Ok,
    /// The key is absent (get, update, delete).
    NotFound,
    /// The key is present (insert).
    Exists,
    /// Refused before it took effect anywhere (backup down, not yet synced, shutting down).
    Unavailable,
    /// A write sent to the backup without an acknowledgement: it may or may not have happened.
    Indeterminate,
    /// Refused as bad input or failed on the server ([`Reply::Error`]); it never took effect.
    Error,
    /// Refused: the client's certificate role does not grant the operation; it never took effect.
    Forbidden,
    /// No answer within the caller's deadline (a write may have taken effect).
    Timeout,
    /// No answer at all: no connection, or it broke before the request was written.
    Unreachable,
}

impl Outcome {
    /// Every outcome, in label order ([`Outcome::index`]).
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Exists,
        Outcome::Unavailable,
        Outcome::Indeterminate,
        Outcome::Error,
        Outcome::Forbidden,
        Outcome::Timeout,
        Outcome::Unreachable,
    ];

    /// The outcomes a server answers with (what its metrics count), a prefix of [`Outcome::ALL`].
    pub const SERVER: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Exists,
        Outcome::Unavailable,
        Outcome::Indeterminate,
        Outcome::Error,
        Outcome::Forbidden,
    ];

    /// The outcome a server's answer stands for: the one mapping from [`Reply`].
    ///
    /// Every error code but [`ErrorCode::Forbidden`] and [`ErrorCode::SessionExpired`] is
    /// [`Outcome::Error`], including codes added later: a new code is a refusal of the request,
    /// never something that took effect. `SessionExpired` answers a retry whose original may
    /// have been applied: [`Outcome::Indeterminate`].
    pub fn of(reply: &Reply) -> Outcome {
        match reply {
            Reply::Hello { .. }
            | Reply::Ok
            | Reply::Value(_)
            | Reply::Count(_)
            | Reply::DumpChunk { .. }
            | Reply::Status(_) => Outcome::Ok,
            Reply::NotFound => Outcome::NotFound,
            Reply::Exists => Outcome::Exists,
            Reply::Unavailable(_) => Outcome::Unavailable,
            Reply::Indeterminate(_) => Outcome::Indeterminate,
            Reply::Error { code, .. } => Outcome::of_error(*code),
        }
    }

    /// The outcome of an error answer with `code`.
    pub fn of_error(code: ErrorCode) -> Outcome {
        match code {
            ErrorCode::Forbidden => Outcome::Forbidden,
            ErrorCode::SessionExpired => Outcome::Indeterminate,
            _ => Outcome::Error,
        }
    }

    /// The lowercase name (the metrics' `result` label, reports).
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Exists => "exists",
            Outcome::Unavailable => "unavailable",
            Outcome::Indeterminate => "indeterminate",
            Outcome::Error => "error",
            Outcome::Forbidden => "forbidden",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// Its position in [`Outcome::ALL`], for arrays of counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A definite answer about the data from a server that was serving: ok, not found, exists.
    pub fn is_definite(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NotFound | Outcome::Exists)
    }

    /// Whether a request of `kind` that ended so may have changed the table: a write that
    /// succeeded, or whose fate is unknown (indeterminate, or no answer in time).
    pub fn may_have_taken_effect(self, kind: OpKind) -> bool {
        kind.is_write()
            && matches!(
                self,
                Outcome::Ok | Outcome::Indeterminate | Outcome::Timeout
            )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn every_reply_maps_to_the_outcome_its_docs_promise() {
        let cases = [
            (Reply::Ok, Outcome::Ok),
            (Reply::Value(Bytes::from_static(b"v")), Outcome::Ok),
            (Reply::Count(3), Outcome::Ok),
            (Reply::NotFound, Outcome::NotFound),
            (Reply::Exists, Outcome::Exists),
            (
                Reply::Unavailable("backup down".into()),
                Outcome::Unavailable,
            ),
            (
                Reply::Indeterminate("no ack".into()),
                Outcome::Indeterminate,
            ),
            (
                Reply::Error {
                    code: ErrorCode::KeyTooLarge,
                    message: "big".into(),
                },
                Outcome::Error,
            ),
            (
                Reply::Error {
                    code: ErrorCode::Forbidden,
                    message: "role read".into(),
                },
                Outcome::Forbidden,
            ),
        ];
        for (reply, outcome) in cases {
            assert_eq!(Outcome::of(&reply), outcome, "{reply:?}");
        }
    }

    #[test]
    fn names_and_indexes_agree_with_the_label_order() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        assert_eq!(Outcome::SERVER, Outcome::ALL[..7]);
        for (i, k) in OpKind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(OpKind::from_name(k.name()), Some(k));
        }
        // The metrics' label values are an interface (dashboards): keep them.
        let names: Vec<&str> = Outcome::SERVER.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "not_found",
                "exists",
                "unavailable",
                "indeterminate",
                "error",
                "forbidden"
            ]
        );
    }

    #[test]
    fn only_writes_that_succeeded_or_may_have_can_have_taken_effect() {
        assert!(Outcome::Indeterminate.may_have_taken_effect(OpKind::Insert));
        assert!(Outcome::Timeout.may_have_taken_effect(OpKind::Delete));
        assert!(!Outcome::Unavailable.may_have_taken_effect(OpKind::Update));
        assert!(!Outcome::Ok.may_have_taken_effect(OpKind::Get));
        assert!(!Outcome::Error.may_have_taken_effect(OpKind::Insert));
        // A retry refused because its original's record may be gone: the original may have
        // been applied (review F11).
        assert!(Outcome::of_error(ErrorCode::SessionExpired).may_have_taken_effect(OpKind::Insert));
        assert_eq!(Outcome::of_error(ErrorCode::KeyTooLarge), Outcome::Error);
    }
}
