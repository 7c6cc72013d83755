//! The wire types: what a client asks ([`Request`], [`Op`]), what a server answers ([`Response`],
//! [`Reply`]), the numbers both sides must agree on, and the [`Limits`] a decoder enforces.
//!
//! Nothing here knows about bytes; [`super::codec`] turns these types into frames and back.

use std::fmt;

use bytes::Bytes;

/// Version of the frame layout and semantics described in `docs/protocol.md`.
///
/// A client states the version it speaks in [`Op::Hello`]; the server answers with the same number in
/// [`Reply::Hello`] or refuses with [`ErrorCode::UnsupportedVersion`]. Any change a version 1 peer could
/// not decode (a new tag, a new error code, a new field) needs a new version.
///
/// Version 2 added session-stamped writes ([`Request::session`]) and [`ErrorCode::SessionExpired`].
/// A version 2 server still accepts version 1 clients (their frames are a subset of version 2's);
/// a version 1 server refuses a version 2 hello with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Oldest client protocol version a server still accepts in [`Op::Hello`].
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// TLS application protocol name (ALPN) of the client protocol.
///
/// QUIC requires ALPN; carrying the major version in it lets a handshake between incompatible peers
/// fail before a single frame is exchanged.
pub const ALPN: &[u8] = b"quickv/1";

/// ALPN of the primary↔backup link (the [`crate::peer`] protocol); a server tells the two kinds of
/// connection apart by it. Version 2 carries session records with replicated writes and transfers;
/// version 4 the backup's [`PeerMsg::Applied`](crate::peer::PeerMsg::Applied) after its hello; a
/// server of a previous version fails the handshake instead of misreading them.
pub const PEER_ALPN: &[u8] = b"quickv-peer/4";

/// Bytes of the length prefix that starts every frame (a big-endian `u32`).
pub const LEN_PREFIX: usize = 4;

/// Size limits a decoder enforces, all in bytes.
///
/// They exist so that a peer can never make us allocate more than we chose to: every length read from
/// the network is compared against them before any buffer is sized from it. Both ends of a stream
/// should use the same limits; a server's limits are the ones that count for requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key accepted, in bytes. Keys are held in memory for as long as they are stored, so this
    /// bounds the per-entry overhead a client can force.
    pub max_key: usize,
    /// Largest value (and [`Op::Ping`] payload) accepted, in bytes.
    pub max_value: usize,
    /// Largest frame accepted, in bytes counted *after* the [`LEN_PREFIX`] (that is, the largest value of
    /// the length prefix). A longer frame is refused from its 4-byte header alone, before its body is
    /// awaited, so it bounds the memory one stream can pin in its read buffer.
    pub max_frame: usize,
}

impl Limits {
    /// Default largest key: 64 KiB, in bytes.
    pub const DEFAULT_MAX_KEY: usize = 64 * 1024;
    /// Default largest value: 16 MiB, in bytes.
    pub const DEFAULT_MAX_VALUE: usize = 16 * 1024 * 1024;
    /// Room in a frame beyond one key and one value, in bytes: tag, id, length fields and headers. The
    /// largest fixed overhead of any frame is 22 bytes (a one-entry dump chunk), so 1 KiB leaves the
    /// frame limit comfortably above the largest legitimate frame.
    pub const FRAME_OVERHEAD: usize = 1024;

    /// Limits for the given key and value sizes (bytes), with `max_frame` derived as
    /// `max_key + max_value + FRAME_OVERHEAD` so that every request carrying an acceptable key and value
    /// also fits in a frame (saturating, so absurd inputs cannot overflow).
    pub fn new(max_key: usize, max_value: usize) -> Limits {
        Limits {
            max_key,
            max_value,
            max_frame: max_key
                .saturating_add(max_value)
                .saturating_add(Self::FRAME_OVERHEAD),
        }
    }
}

impl Default for Limits {
    /// 64 KiB keys, 16 MiB values, frames of `64 KiB + 16 MiB + 1 KiB`.
    fn default() -> Self {
        Limits::new(Self::DEFAULT_MAX_KEY, Self::DEFAULT_MAX_VALUE)
    }
}

/// Identifies a request among those in flight, chosen by the client.
///
/// Responses carry the id of the request they answer because a stream is pipelined and the server may
/// answer out of order; the id is the only way to pair them.
pub type RequestId = u64;

/// One client request as it travels on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed in every response to this request, so the client can match answers to questions.
    pub id: RequestId,
    /// What the client asks for.
    pub op: Op,
    /// For a write (insert, update, delete): the client session and sequence that make a retry of
    /// it recognisable, so the primary answers the original answer instead of applying it twice.
    /// `None` for reads and for clients that do not retry (protocol version 1). Ignored by the
    /// encoder for operations that are not writes.
    pub session: Option<SessionWrite>,
}

impl Request {
    /// A request without a session stamp.
    pub fn new(id: RequestId, op: Op) -> Request {
        Request {
            id,
            op,
            session: None,
        }
    }
}

/// Identifies one write of one client session across retries, reconnects and a primary restart.
///
/// The client picks `session` at random when it is built and numbers its writes `seq = 1, 2, …`;
/// a retry resends the same pair. The primary keeps the answer of recent stamped writes (see
/// `docs/client.md`, "Sessions"), and the record travels with the write to the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteStamp {
    /// Whose session this is, as the *server* knows it: a hash of the client's certificate
    /// ([`WriteStamp::owner_of`]), so one client's records are never another's. Not on the client
    /// wire (a client cannot choose it): the client codec decodes it as 0 and the server sets it
    /// from the connection; the peer link carries it to the backup.
    pub owner: u64,
    /// The client session, random per client.
    pub session: u64,
    /// The write's number in the session, from 1, never reused.
    pub seq: u64,
}

impl WriteStamp {
    /// A stamp as a client makes it (owner unset: the server fills it in).
    pub const fn new(session: u64, seq: u64) -> WriteStamp {
        WriteStamp {
            owner: 0,
            session,
            seq,
        }
    }

    /// The owner id of a client certificate (its DER bytes): a 64-bit hash, never 0 (0 means
    /// "no identity").
    pub fn owner_of(certificate_der: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(certificate_der).max(1)
    }
}

/// A write's stamp as a client sends it: the stamp and how long ago the client first sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionWrite {
    /// Which write this is.
    pub stamp: WriteStamp,
    /// Milliseconds since the client first sent this write (0 on the first attempt). The server
    /// refuses a retry with [`ErrorCode::SessionExpired`] if a record it may have needed was evicted
    /// after the write was first sent; this age is how it knows, without synchronised clocks.
    pub age_ms: u32,
}

/// The operation a request asks for. Variants carry only their own arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Opens a connection: the first frame on the connection's first stream, so that both ends agree on
    /// the protocol version before anything else is interpreted.
    Hello {
        /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
        version: u16,
    },
    /// Asks the server to echo the payload back in [`Reply::Value`]; measures round trips and keeps
    /// idle links observable. The payload is bounded by [`Limits::max_value`].
    Ping(Bytes),
    /// Stores `value` under `key` only if the key is absent ([`Reply::Exists`] otherwise).
    Insert {
        /// The key to create.
        key: Bytes,
        /// The value to store.
        value: Bytes,
    },
    /// Replaces the value of `key` only if the key is present ([`Reply::NotFound`] otherwise).
    Update {
        /// The key to change.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`, answering its old value.
    Delete {
        /// The key to remove.
        key: Bytes,
    },
    /// Reads the value of `key`.
    Get {
        /// The key to read.
        key: Bytes,
    },
    /// Asks for the number of stored entries.
    Count,
    /// Asks for every entry, answered as one or more [`Reply::DumpChunk`]s so that no frame outgrows
    /// [`Limits::max_frame`].
    Dump,
    /// Asks for the server's state (role, replication state, counters) as JSON text.
    Status,
    /// Asks the server to stop gracefully.
    Shutdown,
}

impl Op {
    /// A lowercase name for logs and metrics, one per variant.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Ping(_) => "ping",
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Get { .. } => "get",
            Op::Count => "count",
            Op::Dump => "dump",
            Op::Status => "status",
            Op::Shutdown => "shutdown",
        }
    }

    /// True for the operations that change the store (insert, update, delete): those must be
    /// replicated, and are refused when the backup is not in sync.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. }
        )
    }

    /// The key the operation addresses, if it addresses one; routing (bucket, lane) depends on it.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Insert { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key }
            | Op::Get { key } => Some(key),
            Op::Hello { .. } | Op::Ping(_) | Op::Count | Op::Dump | Op::Status | Op::Shutdown => {
                None
            }
        }
    }
}

/// One server answer as it travels on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The id of the request this answers; responses may arrive out of request order.
    pub id: RequestId,
    /// The answer itself.
    pub reply: Reply,
}

/// The outcome of a request. Variants carry only their own data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Accepts [`Op::Hello`].
    Hello {
        /// The version the connection will use (the one the client asked for).
        version: u16,
        /// Who answered, for humans and logs, e.g. `"quickv 0.1.0 role=primary"`.
        server: String,
    },
    /// The operation took effect (insert, update, shutdown) and has nothing to return.
    Ok,
    /// The value read by get, the old value removed by delete, or the payload echoed by ping.
    Value(Bytes),
    /// The key is absent (get, update, delete).
    NotFound,
    /// The key is already present (insert).
    Exists,
    /// Refused before it took effect anywhere (e.g. backup down, not yet synced): safe to retry.
    /// Carries the reason for humans.
    Unavailable(String),
    /// A write was sent to the backup but no acknowledgement came back: it may or may not have
    /// happened. Carries the reason for humans.
    Indeterminate(String),
    /// The request itself was bad or could not be served; `code` is for programs, `message` for
    /// humans.
    Error {
        /// What kind of failure, stable across versions.
        code: ErrorCode,
        /// Details, e.g. `"key of 70000 bytes exceeds the limit of 65536 bytes"`.
        message: String,
    },
    /// The number of stored entries.
    Count(u64),
    /// Part of the answer to [`Op::Dump`]: a dump is one or more chunks with the request's id, and the
    /// final one has `last = true` (an empty store answers one empty chunk with `last = true`).
    DumpChunk {
        /// Key and value pairs in no particular order.
        entries: Vec<(Bytes, Bytes)>,
        /// Whether this chunk ends the dump; the client waits for it before completing the request.
        last: bool,
    },
    /// The server's state as JSON text.
    Status(String),
}

/// Why a request failed, as a stable number on the wire.
///
/// Numbers are never reused; a new code comes with a new [`PROTOCOL_VERSION`], so a version 1 decoder
/// treats an unknown code as a broken peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame was delimited but its content made no sense (a field the server could not accept).
    BadFrame = 1,
    /// The key is longer than [`Limits::max_key`].
    KeyTooLarge = 2,
    /// The value or ping payload is longer than [`Limits::max_value`].
    ValueTooLarge = 3,
    /// The request tag is not one this version knows.
    UnknownOp = 4,
    /// [`Op::Hello`] asked for a version the server does not speak.
    UnsupportedVersion = 5,
    /// The client has more requests in flight than the server allows on this stream or connection.
    TooManyRequests = 6,
    /// The server failed in a way that is not the client's fault.
    Internal = 7,
    /// The request is valid but not permitted here (e.g. a write on the backup, a request before
    /// hello, a second hello).
    NotAllowed = 8,
    /// The client's certificate does not grant this operation (its role is too low); the request
    /// never took effect. Only certificates with a restricted role (`read`, `write`) ever get it,
    /// so clients that predate roles, which hold `admin` certificates, never see it.
    Forbidden = 9,
    /// A retried write (same session and sequence as an earlier attempt) arrived after the server
    /// evicted the record that would tell whether the earlier attempt took effect: its fate is
    /// unknown and it was not applied again. New in protocol version 2.
    SessionExpired = 10,
}

impl ErrorCode {
    /// The code for a wire number, or `None` for a number this version does not define.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::KeyTooLarge,
            3 => ErrorCode::ValueTooLarge,
            4 => ErrorCode::UnknownOp,
            5 => ErrorCode::UnsupportedVersion,
            6 => ErrorCode::TooManyRequests,
            7 => ErrorCode::Internal,
            8 => ErrorCode::NotAllowed,
            9 => ErrorCode::Forbidden,
            10 => ErrorCode::SessionExpired,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::BadFrame => "bad frame",
            ErrorCode::KeyTooLarge => "key too large",
            ErrorCode::ValueTooLarge => "value too large",
            ErrorCode::UnknownOp => "unknown op",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::Internal => "internal",
            ErrorCode::NotAllowed => "not allowed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::SessionExpired => "session expired",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_leave_room_for_the_largest_request() {
        let limits = Limits::default();
        assert_eq!(limits.max_key, 64 * 1024);
        assert_eq!(limits.max_value, 16 * 1024 * 1024);
        assert_eq!(limits.max_frame, 64 * 1024 + 16 * 1024 * 1024 + 1024);
    }

    #[test]
    fn limits_new_saturates() {
        assert_eq!(Limits::new(usize::MAX, 1).max_frame, usize::MAX);
    }

    #[test]
    fn error_codes_round_trip_through_their_numbers() {
        for n in 0..=u16::MAX {
            if let Some(code) = ErrorCode::from_u16(n) {
                assert_eq!(code as u16, n);
            }
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(9), Some(ErrorCode::Forbidden));
        assert_eq!(ErrorCode::from_u16(10), Some(ErrorCode::SessionExpired));
        assert_eq!(ErrorCode::from_u16(11), None);
        assert_eq!(ErrorCode::NotAllowed.to_string(), "not allowed");
    }

    #[test]
    fn op_helpers() {
        let key = Bytes::from_static(b"k");
        let insert = Op::Insert {
            key: key.clone(),
            value: Bytes::new(),
        };
        assert!(insert.is_write());
        assert_eq!(insert.key(), Some(&key));
        assert_eq!(insert.name(), "insert");
        assert!(!Op::Get { key: key.clone() }.is_write());
        assert_eq!(Op::Count.key(), None);
    }
}
