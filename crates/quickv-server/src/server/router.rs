//! Request routing: one decoded request in, one answer out. No I/O here beyond handing replicated
//! writes to the replicator; connections own the streams.

use crate::config::Role;
use crate::server::node::Node;
use bytes::Bytes;
use quickv_core::lanes::ReadNow;
use quickv_core::reply::ReplyTo;
use quickv_core::store::sessions::Lookup;
use quickv_proto::{
    ErrorCode, Op, Reply, Request, SessionWrite, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// How a request is answered.
#[derive(Debug)]
pub enum Handled {
    /// The answer is known now.
    Now(Reply),
    /// The answer comes later (a replicated write waiting for the backup's ack), at the
    /// `ReplyTo` the caller gave. A waiter dropped unanswered answers `indeterminate`.
    Later,
    /// A dump is allowed: the caller streams the store as one or more chunks, a bucket at a time.
    Dump,
    /// Answer `Ok`, then start a graceful shutdown of the whole server.
    Shutdown,
}

/// Answers one request against the node's store, role and replication state: the one way in.
/// `reply_to` names where a replicated write's answer goes; it is called once if the write waits
/// for the backup's ack ([`Handled::Later`]), and the task that applies the ack answers there (a
/// client stream's sink: no channel, no wake-up of the caller; the HTTP gateway's oneshot, see
/// `replication::oneshot::reply_to`).
pub fn handle(node: &Node, req: Request, reply_to: impl FnOnce() -> ReplyTo) -> Handled {
    let Request { op, session, .. } = req;
    match op {
        Op::Hello { version } if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) => {
            Handled::Now(Reply::Hello {
                version,
                server: format!(
                    "quickv {} role={}",
                    env!("CARGO_PKG_VERSION"),
                    node.config.role
                ),
            })
        }
        Op::Hello { version } => Handled::Now(Reply::Error {
            code: ErrorCode::UnsupportedVersion,
            message: format!(
                "protocol version {version} is not supported; this server speaks versions \
                 {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
        }),
        Op::Ping(payload) => Handled::Now(Reply::Value(payload)),
        Op::Status => Handled::Now(Reply::Status(
            // Plain structs of strings and numbers: serialising them cannot fail.
            serde_json::to_string(&node.status()).expect("the status serialises"),
        )),
        Op::Shutdown => Handled::Shutdown,
        Op::Get { key } => match get(node, &key, reply_to, |read| read.into_reply()) {
            Some(reply) => Handled::Now(reply),
            None => Handled::Later,
        },
        read @ (Op::Count | Op::Dump) => {
            if let Some(r) = node.repl.as_ref().filter(|r| !r.reads_allowed()) {
                return Handled::Now(Reply::Unavailable(r.read_refusal().into()));
            }
            match read {
                Op::Count => Handled::Now(Reply::Count(node.store.count())),
                Op::Dump => Handled::Dump,
                other => Handled::Now(not_a(&other)),
            }
        }
        write @ (Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. }) => {
            if let Some(refusal) = over_memory(node, &write) {
                return Handled::Now(refusal);
            }
            match (node.config.role, &node.repl) {
                (Role::Standalone, _) => Handled::Now(apply_stamped(node, write, session)),
                (Role::Backup, _) => Handled::Now(Reply::Unavailable(
                    "this server is the backup; send writes to the primary".into(),
                )),
                (Role::Primary, Some(repl)) => match repl.submit(write, session, reply_to) {
                    None => Handled::Later,
                    Some(now) => Handled::Now(now),
                },
                (Role::Primary, None) => Handled::Now(not_a(&write)),
            }
        }
    }
}

/// A get of `key`, as [`handle`] routes it, whose immediate answer goes to `answer` with a stored
/// value borrowed under the map's guard (the stream encodes it straight into its answers: no
/// reference count, no allocation). `None`: the read waits for a write in flight on the key and
/// is answered at `reply_to()`.
pub fn get<R>(
    node: &Node,
    key: &Bytes,
    reply_to: impl FnOnce() -> ReplyTo,
    answer: impl FnOnce(ReadNow<'_>) -> R,
) -> Option<R> {
    match &node.repl {
        Some(r) if !r.reads_allowed() => Some(answer(ReadNow::Refused(Reply::Unavailable(
            r.read_refusal().into(),
        )))),
        // The primary's dirty check: a key with a write in flight is answered after that
        // write's ack (the commit point is the backup).
        Some(repl) => repl.read_with(key, reply_to, answer),
        None => Some(
            node.store
                .get_with(key, |value| answer(ReadNow::Stored(value))),
        ),
    }
}

/// Refuses a write that adds data when the store and the session tables together are over
/// `max_memory`; deletes always pass (they are how an operator gets back under the limit, and
/// what they leave in the session tables is bounded by the tables' own budget, at most half of
/// `max_memory`: see `store::sessions`).
fn over_memory(node: &Node, op: &Op) -> Option<Reply> {
    let limit = node.config.max_memory?;
    let stored = node.store.approx_bytes();
    let used = stored.saturating_add(node.store.sessions().bytes());
    (used >= limit && !matches!(op, Op::Delete { .. })).then(|| {
        Reply::Unavailable(format!(
            "memory limit reached: {used} bytes used ({stored} stored, the rest session records), \
             limit {limit} (--max-memory); delete keys or raise the limit"
        ))
    })
}

/// Applies a write that may carry a session stamp directly to the store (standalone servers): a
/// retry gets the recorded answer, as on a pair (see `store::sessions`).
fn apply_stamped(node: &Node, op: Op, session: Option<SessionWrite>) -> Reply {
    let Some(write) = session else {
        return node.store.apply(op);
    };
    let Some(bucket) = op.key().map(|k| quickv_core::store::BucketId::of(k)) else {
        return not_a(&op);
    };
    let sessions = node.store.sessions();
    let now = std::time::Instant::now();
    match sessions.lookup(bucket, &write, now) {
        Lookup::Fresh => {}
        Lookup::Answered(reply) | Lookup::Expired(reply) => return reply,
    }
    let reply = node.store.apply(op);
    match &reply {
        Reply::Ok => sessions.record(bucket, write.stamp, None, now),
        Reply::Value(old) => sessions.record(bucket, write.stamp, Some(old.clone()), now),
        _ => {}
    }
    reply
}

/// The answer to a request routed to the wrong arm: a bug, reported rather than panicking.
fn not_a(op: &Op) -> Reply {
    Reply::Error {
        code: ErrorCode::Internal,
        message: format!("internal routing error for {}", op.name()),
    }
}
