//! The quickv wire protocol as a sans-IO codec: how requests and responses travel over QUIC streams
//! ([`encode_request`], [`decode_response`], …), what the primary and the backup say to each other
//! ([`peer`]), the bucket identity both servers must agree on ([`BucketId`], [`Digest`]), and the
//! server's status document ([`status::Status`]).
//!
//! This crate depends on `bytes`, `thiserror` and `xxhash-rust` only (and, with the `serde` feature,
//! `serde`, for the [`status`] document): no tokio, no quinn, so the compiler itself keeps it free
//! of I/O. The client (`quickv-client`) and the server (`quickv-server`) both build on it.
//!
//! This crate turns [`Request`]s and [`Response`]s into bytes and back. It never touches a socket, a
//! stream or a clock, so the client, the server and the tests all drive the same code with whatever
//! I/O they have: the caller appends what it read to a [`bytes::BytesMut`] and asks for frames; it
//! encodes frames into a `BytesMut` and writes them out. The byte-level layout is in
//! `docs/protocol.md`; this page says why it looks the way it does.
//!
//! # Framing
//!
//! A QUIC stream is a byte stream, so messages need boundaries. Every frame starts with a big-endian
//! `u32` length ([`LEN_PREFIX`] bytes) counting the bytes after it, then a one-byte tag and the
//! eight-byte [`RequestId`], then fields that depend on the tag. Byte strings are a `u32` length and
//! the bytes; text is a UTF-8 byte string. A length prefix lets a reader know how much to wait for
//! before parsing, and lets it refuse an oversized frame from its first four bytes.
//!
//! Request tags are `0x01..=0x0A`; response tags are the same range with the high bit set
//! (`0x81..=0x8B`), so a frame sent the wrong way never decodes as something else.
//!
//! # Pipelining and out-of-order responses
//!
//! A client keeps a few long-lived bidirectional streams per connection and writes many requests on
//! each without waiting for answers. The server answers on the stream a request came in on, and may
//! answer in any order: a read need not wait behind a write that is waiting for the backup's
//! acknowledgement. The [`RequestId`], chosen by the client and unique among the requests it has in
//! flight on the connection, is what pairs an answer with its question. Every request gets exactly one
//! response, except [`Op::Dump`], which gets one or more [`Reply::DumpChunk`]s with the same id, the
//! last one flagged `last`; other responses may be interleaved between chunks.
//!
//! # Versioning
//!
//! Two layers. The TLS handshake negotiates [`ALPN`] `quickv/1`, so peers that do not speak the same
//! major protocol never get as far as a frame. Then the first frame on a connection's first stream is
//! [`Op::Hello`] carrying [`PROTOCOL_VERSION`]; the server answers [`Reply::Hello`] with the version in
//! use and a human-readable server description, or [`ErrorCode::UnsupportedVersion`]. A new tag, a new
//! field or a new [`ErrorCode`] is a new version: a version 1 decoder treats all of those as a broken
//! peer rather than guessing.
//!
//! # Limits and errors
//!
//! [`Limits`] bound the key, the value and the whole frame. The decoder checks every length it reads
//! against them, or against the bytes actually present, *before* allocating or waiting, so a peer can
//! never make us reserve more than `max_frame` bytes per stream. Decoding answers one of:
//!
//! - `Ok(None)`: incomplete. Nothing was consumed; read more and call again.
//! - `Ok(Some(frame))`: exactly one frame consumed; keys and values are zero-copy slices of it.
//! - [`DecodeError::Rejected`]: a well-delimited request whose content is refused (unknown tag, key or
//!   value over its limit). The frame was consumed, the stream goes on, and the server answers
//!   [`Reply::Error`] to the request's id: a bad request never kills its neighbours.
//! - [`DecodeError::Invalid`]: the framing itself is broken (frame over `max_frame`, shorter than its
//!   header, a field overrunning it, bytes left over, bad UTF-8, unknown response tag or error code).
//!   Nothing after it can be trusted, so the reader stops reading that stream; the connection and
//!   the process go on.
//!
//! Encoding cannot fail: the encoder trusts its caller to respect the peer's limits.

mod bucket;
mod codec;
mod frame;
mod outcome;
pub mod peer;
pub mod status;

pub use bucket::{BucketId, Digest, BUCKETS};
pub use outcome::{OpKind, Outcome};

pub use codec::{
    decode_request, decode_response, encode_request, encode_response, encode_value_response,
    encoded_len_entry, DecodeError, DUMP_CHUNK_HEADER, FRAME_HEADER,
};
pub use frame::{
    ErrorCode, Limits, Op, Reply, Request, RequestId, Response, SessionWrite, WriteStamp, ALPN,
    LEN_PREFIX, MIN_PROTOCOL_VERSION, PEER_ALPN, PROTOCOL_VERSION,
};

#[cfg(test)]
mod tests;
