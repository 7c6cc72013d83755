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
use crate::store::BucketId;

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
/// are not UTF-8 show U+FFFD for bad bytes (as every gateway answer does).
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
            json_string(&key, &mut text);
            text.put_u8(b':');
            json_string(&value, &mut text);
            if text.len() >= PIECE_BYTES && tx.send(text.split().freeze()).await.is_err() {
                return;
            }
        }
    }
    text.put_u8(b'}');
    let _ = tx.send(text.freeze()).await;
}

/// Appends `bytes` as a JSON string (lossy UTF-8).
fn json_string(bytes: &[u8], out: &mut BytesMut) {
    let text = String::from_utf8_lossy(bytes);
    // Serializing a string cannot fail; the fallback keeps the document well formed regardless.
    match serde_json::to_vec(&text) {
        Ok(encoded) => out.put_slice(&encoded),
        Err(_) => out.put_slice(b"\"\""),
    }
}
