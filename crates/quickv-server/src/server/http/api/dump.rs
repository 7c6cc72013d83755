//! `/kvman/dump`, streamed: a task walks the store a bucket at a time and hands the JSON text to
//! the response body through a small bounded channel, so a dump holds one bucket's entry handles
//! and a few pieces of text however large the store and however slowly the client reads. The task
//! belongs to the body: a client that goes away drops the body, which ends the task.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::task::AbortOnDropHandle;

use crate::server::node::Node;
use quickv_core::store::BucketId;

/// Size at which a piece of the dump's text is handed to the body, in bytes.
const PIECE_BYTES: usize = 64 * 1024;
/// Pieces waiting in the channel at most: with [`PIECE_BYTES`], the text a slow client pins.
const PIECES_QUEUED: usize = 4;

/// The body of a streamed dump.
#[derive(Debug)]
pub struct DumpBody {
    /// Pieces of JSON text, in order; closed after the last.
    pieces: mpsc::Receiver<Bytes>,
    /// The task writing them: aborted if the body is dropped first.
    _task: AbortOnDropHandle<()>,
}

impl DumpBody {
    /// Starts the walk; `slot` is the server-wide dump slot it holds until the last piece.
    pub fn start(node: Arc<Node>, slot: OwnedSemaphorePermit) -> DumpBody {
        let (tx, pieces) = mpsc::channel(PIECES_QUEUED);
        let task = tokio::spawn(async move {
            let _slot = slot;
            walk(&node, &tx).await;
        });
        DumpBody {
            pieces,
            _task: AbortOnDropHandle::new(task),
        }
    }
}

impl Body for DumpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.pieces
            .poll_recv(cx)
            .map(|piece| piece.map(|p| Ok(Frame::data(p))))
    }
}

/// Writes `{"key":"value",…}`: buckets in order, each bucket's keys sorted. Keys and values that
/// are not UTF-8 show U+FFFD for bad bytes (as every gateway answer does). Text is handed on in
/// pieces of about [`PIECE_BYTES`], a large value split across pieces, so a dump's text in memory
/// is bounded whatever the values (escaping can make a value's text 6 times its size).
async fn walk(node: &Node, tx: &mpsc::Sender<Bytes>) {
    let mut text = BytesMut::with_capacity(PIECE_BYTES);
    text.put_u8(b'{');
    let mut first = true;
    for bucket in BucketId::all() {
        let mut entries = node.store.bucket_snapshot(bucket);
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in entries {
            if !first {
                text.put_u8(b',');
            }
            first = false;
            if !json_string(&key, &mut text, tx).await {
                return;
            }
            text.put_u8(b':');
            if !json_string(&value, &mut text, tx).await {
                return;
            }
        }
    }
    text.put_u8(b'}');
    let _ = tx.send(text.freeze()).await;
}

/// Bytes of text escaped at a time (at most 6 times as many come out).
const ESCAPE_SLICE_BYTES: usize = 8 * 1024;

/// Appends `bytes` as a JSON string (lossy UTF-8: one U+FFFD per invalid sequence, as
/// `String::from_utf8_lossy`), handing full pieces to `tx` on the way; false if the body is gone.
async fn json_string(bytes: &[u8], text: &mut BytesMut, tx: &mpsc::Sender<Bytes>) -> bool {
    text.put_u8(b'"');
    for chunk in bytes.utf8_chunks() {
        let mut valid = chunk.valid();
        while !valid.is_empty() {
            let mut cut = valid.len().min(ESCAPE_SLICE_BYTES);
            while !valid.is_char_boundary(cut) {
                cut -= 1;
            }
            escape(&valid[..cut], text);
            valid = &valid[cut..];
            if text.len() >= PIECE_BYTES && tx.send(text.split().freeze()).await.is_err() {
                return false;
            }
        }
        if !chunk.invalid().is_empty() {
            text.put_slice(
                char::REPLACEMENT_CHARACTER
                    .encode_utf8(&mut [0; 4])
                    .as_bytes(),
            );
        }
    }
    text.put_u8(b'"');
    true
}

/// Appends the JSON escape of `s`, without the quotes.
fn escape(s: &str, out: &mut BytesMut) {
    // Serializing a string cannot fail; the fallback keeps the document well formed regardless.
    match serde_json::to_vec(s) {
        Ok(encoded) if encoded.len() >= 2 => out.put_slice(&encoded[1..encoded.len() - 1]),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escapes `bytes` through [`json_string`] with a receiver that takes every piece.
    async fn encoded(bytes: &[u8]) -> String {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut text = BytesMut::new();
        assert!(json_string(bytes, &mut text, &tx).await);
        drop(tx);
        let mut all = Vec::new();
        while let Some(piece) = rx.recv().await {
            all.extend_from_slice(&piece);
        }
        all.extend_from_slice(&text);
        String::from_utf8(all).expect("utf-8")
    }

    #[tokio::test]
    async fn strings_are_escaped_as_serde_does_lossy_and_in_pieces() {
        let cases: [&[u8]; 4] = [
            b"plain",
            b"quote \" and \\ and \n",
            b"bad \xff\xfe end",
            b"",
        ];
        for bytes in cases {
            let expected = serde_json::to_string(&String::from_utf8_lossy(bytes)).expect("json");
            assert_eq!(encoded(bytes).await, expected);
        }
        // A large value with multi-byte characters and control bytes, cut across many pieces.
        let mut big = "é€\u{1}x".repeat(40_000).into_bytes();
        big.push(0xff);
        let got = encoded(&big).await;
        let expected = serde_json::to_string(&String::from_utf8_lossy(&big)).expect("json");
        assert_eq!(got, expected);
    }
}
