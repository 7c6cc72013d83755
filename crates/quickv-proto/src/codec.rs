//! Frames to bytes and back, without I/O.
//!
//! Encoders append one frame to a [`BytesMut`]; decoders take at most one frame off the front of a
//! [`BytesMut`] that the caller fills from the network. A decoder answers one of three things:
//! `Ok(None)` (incomplete: read more, nothing was consumed), `Ok(Some(_))` (exactly one frame consumed),
//! or a [`DecodeError`] that says whether the stream may continue ([`DecodeError::Rejected`]) or not
//! ([`DecodeError::Invalid`]). The layout is written down in `docs/protocol.md`.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{
    ErrorCode, Limits, Op, Reply, Request, RequestId, Response, SessionWrite, WriteStamp,
    LEN_PREFIX,
};

/// One-byte frame tags, first byte after the length prefix. Requests use `0x01..`, responses set the
/// high bit, so a frame sent the wrong way is refused as an unknown tag.
mod tag {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const PING: u8 = 0x02;
    pub(super) const INSERT: u8 = 0x03;
    pub(super) const UPDATE: u8 = 0x04;
    pub(super) const DELETE: u8 = 0x05;
    pub(super) const GET: u8 = 0x06;
    pub(super) const COUNT: u8 = 0x07;
    pub(super) const DUMP: u8 = 0x08;
    pub(super) const STATUS: u8 = 0x09;
    pub(super) const SHUTDOWN: u8 = 0x0A;
    // Version 2: the same writes with a session stamp (session, seq, age) before their fields.
    pub(super) const S_INSERT: u8 = 0x0B;
    pub(super) const S_UPDATE: u8 = 0x0C;
    pub(super) const S_DELETE: u8 = 0x0D;

    pub(super) const R_HELLO: u8 = 0x81;
    pub(super) const R_OK: u8 = 0x82;
    pub(super) const R_VALUE: u8 = 0x83;
    pub(super) const R_NOT_FOUND: u8 = 0x84;
    pub(super) const R_EXISTS: u8 = 0x85;
    pub(super) const R_UNAVAILABLE: u8 = 0x86;
    pub(super) const R_INDETERMINATE: u8 = 0x87;
    pub(super) const R_ERROR: u8 = 0x88;
    pub(super) const R_COUNT: u8 = 0x89;
    pub(super) const R_DUMP_CHUNK: u8 = 0x8A;
    pub(super) const R_STATUS: u8 = 0x8B;
}

/// Bytes every frame carries after its length prefix: the tag (1) and the request id (8). A length
/// prefix below this cannot describe a frame.
pub const FRAME_HEADER: usize = 1 + 8;

/// Bytes of a dump chunk frame after its length prefix and before its entries: [`FRAME_HEADER`], the
/// `last` flag (1) and the entry count (4).
///
/// A chunk whose entries add up to `S` bytes (see [`encoded_len_entry`]) has a length prefix of
/// `DUMP_CHUNK_HEADER + S`, which must stay within [`Limits::max_frame`] for the client to accept it.
pub const DUMP_CHUNK_HEADER: usize = FRAME_HEADER + 1 + 4;

/// Bytes of a session stamp in a version 2 write: session (8), sequence (8), age in ms (4).
const SESSION_STAMP: usize = 8 + 8 + 4;

/// Bytes of the length field in front of every byte string.
const STR_LEN: usize = 4;

/// Smallest encoding of one dump entry, in bytes (two empty byte strings); bounds the entry count a
/// frame of a given size can honestly claim.
const MIN_ENTRY: usize = 2 * STR_LEN;

/// Why a frame could not be decoded, and whether the stream survives it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame was well delimited but its content is refused; the decoder has consumed the whole
    /// frame, so the stream may continue. The server answers `Reply::Error { code, message }` to `id`.
    #[error("{message}")]
    Rejected {
        /// The id of the refused request, to answer it.
        id: RequestId,
        /// Why it was refused, for the client program.
        code: ErrorCode,
        /// Why it was refused, for humans; states the limit that was exceeded.
        message: String,
    },
    /// The byte stream cannot be trusted any more (frame length over `max_frame`, frame shorter than its
    /// header, fields overrunning the frame, trailing bytes, bad UTF-8, unknown response tag ...).
    /// Nothing more can be read from this stream; what was consumed is unspecified.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Appends `req` as one frame to `dst`.
///
/// The encoder does not know the peer's [`Limits`]: callers keep keys and values within them (the
/// client library checks before sending), or the peer refuses the request.
///
/// # Panics
/// If a key, value or payload is longer than `u32::MAX` bytes, which no limit allows; such a request
/// is a bug in the caller, not network input.
pub fn encode_request(req: &Request, dst: &mut BytesMut) {
    let session = req.session.filter(|_| req.op.is_write());
    let tag = match (session, &req.op) {
        (Some(_), Op::Insert { .. }) => tag::S_INSERT,
        (Some(_), Op::Update { .. }) => tag::S_UPDATE,
        (Some(_), Op::Delete { .. }) => tag::S_DELETE,
        _ => request_tag(&req.op),
    };
    let start = begin_frame(dst, tag, req.id, request_hint(&req.op) + SESSION_STAMP);
    if let Some(s) = session {
        dst.put_u64(s.stamp.session);
        dst.put_u64(s.stamp.seq);
        dst.put_u32(s.age_ms);
    }
    match &req.op {
        Op::Hello { version } => dst.put_u16(*version),
        Op::Ping(payload) => put_bytes(dst, payload),
        Op::Insert { key, value } | Op::Update { key, value } => {
            put_bytes(dst, key);
            put_bytes(dst, value);
        }
        Op::Delete { key } | Op::Get { key } => put_bytes(dst, key),
        Op::Count | Op::Dump | Op::Status | Op::Shutdown => {}
    }
    end_frame(dst, start);
}

/// Appends `resp` as one frame to `dst`.
///
/// The encoder does not check [`Limits`]: the server cuts dumps into chunks with
/// [`encoded_len_entry`] and [`DUMP_CHUNK_HEADER`], and every other reply is bounded by what the
/// server accepted.
///
/// # Panics
/// If a field is longer than `u32::MAX` bytes or a chunk holds more than `u32::MAX` entries; that is a
/// bug in the caller, not network input.
pub fn encode_response(resp: &Response, dst: &mut BytesMut) {
    let start = begin_frame(
        dst,
        reply_tag(&resp.reply),
        resp.id,
        reply_hint(&resp.reply),
    );
    match &resp.reply {
        Reply::Hello { version, server } => {
            dst.put_u16(*version);
            put_bytes(dst, server.as_bytes());
        }
        Reply::Ok | Reply::NotFound | Reply::Exists => {}
        Reply::Value(value) => put_bytes(dst, value),
        Reply::Unavailable(reason) | Reply::Indeterminate(reason) => {
            put_bytes(dst, reason.as_bytes())
        }
        Reply::Error { code, message } => {
            dst.put_u16(*code as u16);
            put_bytes(dst, message.as_bytes());
        }
        Reply::Count(count) => dst.put_u64(*count),
        Reply::DumpChunk { entries, last } => {
            dst.put_u8(u8::from(*last));
            dst.put_u32(wire_len(entries.len()));
            for (key, value) in entries {
                put_bytes(dst, key);
                put_bytes(dst, value);
            }
        }
        Reply::Status(json) => put_bytes(dst, json.as_bytes()),
    }
    end_frame(dst, start);
}

/// Appends the frame of `Reply::Value(value)` answering request `id`: byte for byte what
/// [`encode_response`] writes for it, from a borrowed slice (the server copies a stored value
/// straight into the answer, with no `Bytes` handle to make and drop).
///
/// # Panics
/// If `value` is longer than `u32::MAX` bytes, as [`encode_response`].
pub fn encode_value_response(id: RequestId, value: &[u8], dst: &mut BytesMut) {
    let start = begin_frame(dst, tag::R_VALUE, id, STR_LEN + value.len());
    put_bytes(dst, value);
    end_frame(dst, start);
}

/// Takes one request frame off the front of `src`.
///
/// `Ok(None)`: incomplete, read more bytes; nothing was consumed. `Ok(Some)`: exactly one frame was
/// consumed; keys and values are zero-copy slices of it. [`DecodeError::Rejected`]: the frame was
/// consumed and refused (unknown tag, key over `max_key`, value or payload over `max_value`); answer it
/// and go on. [`DecodeError::Invalid`]: stop reading this stream.
///
/// The length prefix is checked against `max_frame` as soon as its 4 bytes are here, so an oversized
/// frame is refused without waiting for its body, and nothing is ever allocated from an unchecked
/// length.
pub fn decode_request(src: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, DecodeError> {
    let Some(body) = split_frame(src, limits)? else {
        return Ok(None);
    };
    let mut reader = Reader::new(body);
    let tag = reader.u8("tag")?;
    let id = reader.u64("request id")?;
    let (tag, session) = match tag {
        tag::S_INSERT | tag::S_UPDATE | tag::S_DELETE => {
            // The owner is not on the client wire: the server sets it from the connection.
            let stamp = WriteStamp::new(reader.u64("session")?, reader.u64("sequence")?);
            let age_ms = reader.u32("attempt age")?;
            let plain = tag - tag::S_INSERT + tag::INSERT;
            (plain, Some(SessionWrite { stamp, age_ms }))
        }
        plain => (plain, None),
    };
    let op = match tag {
        tag::HELLO => Op::Hello {
            version: reader.u16("version")?,
        },
        tag::PING => Op::Ping(reader.bytes("ping payload")?),
        tag::INSERT => Op::Insert {
            key: reader.bytes("key")?,
            value: reader.bytes("value")?,
        },
        tag::UPDATE => Op::Update {
            key: reader.bytes("key")?,
            value: reader.bytes("value")?,
        },
        tag::DELETE => Op::Delete {
            key: reader.bytes("key")?,
        },
        tag::GET => Op::Get {
            key: reader.bytes("key")?,
        },
        tag::COUNT => Op::Count,
        tag::DUMP => Op::Dump,
        tag::STATUS => Op::Status,
        tag::SHUTDOWN => Op::Shutdown,
        unknown => {
            return Err(DecodeError::Rejected {
                id,
                code: ErrorCode::UnknownOp,
                message: format!("unknown request tag 0x{unknown:02x}"),
            })
        }
    };
    // Structure first, then limits: a frame that lies about its fields is Invalid even if it also
    // carries an oversized key, because the stream after it cannot be trusted.
    reader.finish()?;
    check_limits(id, &op, limits)?;
    Ok(Some(Request { id, op, session }))
}

/// Takes one response frame off the front of `src`.
///
/// Same contract as [`decode_request`], except that nothing is [`DecodeError::Rejected`]: a response
/// the client does not understand (unknown tag, unknown [`ErrorCode`], bad UTF-8, a `last` flag other
/// than 0 or 1) leaves it unable to tell what happened to a request, so every failure is
/// [`DecodeError::Invalid`]. Only `max_frame` applies to responses; it bounds every field in them.
pub fn decode_response(
    src: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Response>, DecodeError> {
    let Some(body) = split_frame(src, limits)? else {
        return Ok(None);
    };
    let mut reader = Reader::new(body);
    let tag = reader.u8("tag")?;
    let id = reader.u64("request id")?;
    let reply = match tag {
        tag::R_HELLO => Reply::Hello {
            version: reader.u16("version")?,
            server: reader.string("server name")?,
        },
        tag::R_OK => Reply::Ok,
        tag::R_VALUE => Reply::Value(reader.bytes("value")?),
        tag::R_NOT_FOUND => Reply::NotFound,
        tag::R_EXISTS => Reply::Exists,
        tag::R_UNAVAILABLE => Reply::Unavailable(reader.string("unavailable reason")?),
        tag::R_INDETERMINATE => Reply::Indeterminate(reader.string("indeterminate reason")?),
        tag::R_ERROR => {
            let raw = reader.u16("error code")?;
            let code = ErrorCode::from_u16(raw)
                .ok_or_else(|| DecodeError::Invalid(format!("unknown error code {raw}")))?;
            Reply::Error {
                code,
                message: reader.string("error message")?,
            }
        }
        tag::R_COUNT => Reply::Count(reader.u64("count")?),
        tag::R_DUMP_CHUNK => decode_dump_chunk(&mut reader)?,
        tag::R_STATUS => Reply::Status(reader.string("status")?),
        unknown => {
            return Err(DecodeError::Invalid(format!(
                "unknown response tag 0x{unknown:02x}"
            )))
        }
    };
    reader.finish()?;
    Ok(Some(Response { id, reply }))
}

/// Bytes one dump entry adds to a [`Reply::DumpChunk`] frame as `encode_response` writes it: a length
/// field and the bytes, for the key and for the value.
///
/// The server sums these to cut a dump into chunks whose length prefix,
/// `DUMP_CHUNK_HEADER + Σ encoded_len_entry`, stays within [`Limits::max_frame`].
pub fn encoded_len_entry(key: &[u8], value: &[u8]) -> usize {
    MIN_ENTRY
        .saturating_add(key.len())
        .saturating_add(value.len())
}

/// The tag of a request frame.
fn request_tag(op: &Op) -> u8 {
    match op {
        Op::Hello { .. } => tag::HELLO,
        Op::Ping(_) => tag::PING,
        Op::Insert { .. } => tag::INSERT,
        Op::Update { .. } => tag::UPDATE,
        Op::Delete { .. } => tag::DELETE,
        Op::Get { .. } => tag::GET,
        Op::Count => tag::COUNT,
        Op::Dump => tag::DUMP,
        Op::Status => tag::STATUS,
        Op::Shutdown => tag::SHUTDOWN,
    }
}

/// The tag of a response frame.
fn reply_tag(reply: &Reply) -> u8 {
    match reply {
        Reply::Hello { .. } => tag::R_HELLO,
        Reply::Ok => tag::R_OK,
        Reply::Value(_) => tag::R_VALUE,
        Reply::NotFound => tag::R_NOT_FOUND,
        Reply::Exists => tag::R_EXISTS,
        Reply::Unavailable(_) => tag::R_UNAVAILABLE,
        Reply::Indeterminate(_) => tag::R_INDETERMINATE,
        Reply::Error { .. } => tag::R_ERROR,
        Reply::Count(_) => tag::R_COUNT,
        Reply::DumpChunk { .. } => tag::R_DUMP_CHUNK,
        Reply::Status(_) => tag::R_STATUS,
    }
}

/// Roughly the bytes a request's fields take, so the frame is written with a single reservation.
fn request_hint(op: &Op) -> usize {
    match op {
        Op::Ping(payload) => STR_LEN + payload.len(),
        Op::Insert { key, value } | Op::Update { key, value } => encoded_len_entry(key, value),
        Op::Delete { key } | Op::Get { key } => STR_LEN + key.len(),
        Op::Hello { .. } | Op::Count | Op::Dump | Op::Status | Op::Shutdown => 8,
    }
}

/// Roughly the bytes a reply's fields take, so the frame is written with a single reservation.
fn reply_hint(reply: &Reply) -> usize {
    match reply {
        Reply::Hello { server, .. } => 2 + STR_LEN + server.len(),
        Reply::Value(value) => STR_LEN + value.len(),
        Reply::Unavailable(text) | Reply::Indeterminate(text) | Reply::Status(text) => {
            STR_LEN + text.len()
        }
        Reply::Error { message, .. } => 2 + STR_LEN + message.len(),
        Reply::DumpChunk { entries, .. } => entries
            .iter()
            .fold(5, |sum, (k, v)| sum.saturating_add(encoded_len_entry(k, v))),
        Reply::Ok | Reply::NotFound | Reply::Exists | Reply::Count(_) => 8,
    }
}

/// Writes a placeholder length prefix, the tag and the id; returns where the frame starts so
/// [`end_frame`] can fill the prefix in once the body is written.
fn begin_frame(dst: &mut BytesMut, tag: u8, id: RequestId, fields_hint: usize) -> usize {
    dst.reserve((LEN_PREFIX + FRAME_HEADER).saturating_add(fields_hint));
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(tag);
    dst.put_u64(id);
    start
}

/// Fills in the length prefix of the frame that starts at `start` and ends at the end of `dst`.
fn end_frame(dst: &mut BytesMut, start: usize) {
    let len = wire_len(dst.len() - start - LEN_PREFIX);
    dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Writes a byte string: its length as `u32`, then the bytes.
pub(super) fn put_bytes(dst: &mut BytesMut, bytes: &[u8]) {
    dst.put_u32(wire_len(bytes.len()));
    dst.put_slice(bytes);
}

/// A length as the `u32` the wire carries.
///
/// # Panics
/// Above `u32::MAX`: only a caller bug gets here (no limit allows it), and writing a truncated length
/// would corrupt the stream for the peer, which is worse.
pub(super) fn wire_len(len: usize) -> u32 {
    u32::try_from(len)
        .unwrap_or_else(|_| panic!("{len} bytes do not fit the u32 length of a quickv frame"))
}

/// Splits one whole frame off `src` and returns its body (everything after the length prefix), or
/// `None` if the frame is not all here yet. Checks the length prefix before anything else.
fn split_frame(src: &mut BytesMut, limits: &Limits) -> Result<Option<Bytes>, DecodeError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut be = [0u8; LEN_PREFIX];
    be.copy_from_slice(prefix);
    let declared = u32::from_be_bytes(be);
    // A u32 always fits a usize on the platforms we build for; saturate rather than assume.
    let len = usize::try_from(declared).unwrap_or(usize::MAX);
    if len > limits.max_frame {
        return Err(DecodeError::Invalid(format!(
            "frame of {declared} bytes exceeds the limit of {} bytes",
            limits.max_frame
        )));
    }
    if len < FRAME_HEADER {
        return Err(DecodeError::Invalid(format!(
            "frame of {len} bytes is shorter than its {FRAME_HEADER}-byte header"
        )));
    }
    if src.len() - LEN_PREFIX < len {
        return Ok(None);
    }
    let frame = src.split_to(LEN_PREFIX + len).freeze();
    Ok(Some(frame.slice(LEN_PREFIX..)))
}

/// Refuses an operation whose key, value or payload is over the limits, with the request's id so the
/// server can answer it.
fn check_limits(id: RequestId, op: &Op, limits: &Limits) -> Result<(), DecodeError> {
    let reject = |code, what: &str, len: usize, limit: usize| DecodeError::Rejected {
        id,
        code,
        message: format!("{what} of {len} bytes exceeds the limit of {limit} bytes"),
    };
    if let Some(key) = op.key() {
        if key.len() > limits.max_key {
            return Err(reject(
                ErrorCode::KeyTooLarge,
                "key",
                key.len(),
                limits.max_key,
            ));
        }
    }
    let (what, value) = match op {
        Op::Insert { value, .. } | Op::Update { value, .. } => ("value", value),
        Op::Ping(payload) => ("ping payload", payload),
        _ => return Ok(()),
    };
    if value.len() > limits.max_value {
        return Err(reject(
            ErrorCode::ValueTooLarge,
            what,
            value.len(),
            limits.max_value,
        ));
    }
    Ok(())
}

/// Decodes the fields of a dump chunk, checking the entry count against the bytes left before
/// allocating room for the entries.
fn decode_dump_chunk(reader: &mut Reader) -> Result<Reply, DecodeError> {
    let last = match reader.u8("last flag")? {
        0 => false,
        1 => true,
        other => {
            return Err(DecodeError::Invalid(format!(
                "dump chunk last flag is {other}, not 0 or 1"
            )))
        }
    };
    let declared = reader.u32("entry count")?;
    let n = usize::try_from(declared).unwrap_or(usize::MAX);
    if n > reader.remaining() / MIN_ENTRY {
        return Err(DecodeError::Invalid(format!(
            "dump chunk claims {declared} entries but only {} bytes remain",
            reader.remaining()
        )));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let key = reader.bytes("dump key")?;
        let value = reader.bytes("dump value")?;
        entries.push((key, value));
    }
    Ok(Reply::DumpChunk { entries, last })
}

/// A cursor over one frame's body that refuses to read past its end. Byte strings come out as
/// zero-copy slices of the body.
pub(super) struct Reader {
    /// The frame body (after the length prefix), shared with the byte strings sliced out of it.
    body: Bytes,
    /// Offset of the next unread byte in `body`.
    pos: usize,
}

impl Reader {
    pub(super) fn new(body: Bytes) -> Self {
        Reader { body, pos: 0 }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    /// The next `N` bytes, or `Invalid` naming the field `what` if the frame ends first.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let Some(slice) = self.body.get(self.pos..).and_then(|rest| rest.get(..N)) else {
            return Err(self.overrun(what, N));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos += N;
        Ok(out)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// A byte string: a `u32` length, checked against the bytes left, then a slice of the body.
    pub(super) fn bytes(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let declared = self.u32(what)?;
        let len = usize::try_from(declared).unwrap_or(usize::MAX);
        if len > self.remaining() {
            return Err(self.overrun(what, len));
        }
        let out = self.body.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// A byte string that must be UTF-8.
    pub(super) fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let bytes = self.bytes(what)?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(err) => Err(DecodeError::Invalid(format!("{what} is not UTF-8: {err}"))),
        }
    }

    /// Succeeds only if the whole body was read: trailing bytes mean the peer and we disagree on the
    /// layout, so nothing after them can be trusted.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Invalid(format!(
                "{extra} bytes left over at the end of the frame"
            ))),
        }
    }

    fn overrun(&self, what: &str, len: usize) -> DecodeError {
        DecodeError::Invalid(format!(
            "{what} of {len} bytes overruns the frame ({} bytes left)",
            self.remaining()
        ))
    }
}
