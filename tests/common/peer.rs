//! A test playing one side of the peer link byte by byte (for the `replication_*` tests that must
//! stop a handshake or a transfer at a chosen message). Real QUIC, the pair's real certificates.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quickv_core::store::{BucketId, Digest};
use quickv_core::transfer::chunks;
use quickv_net::tls;
use quickv_proto::peer::{PeerHello, PeerMsg};
use quickv_proto::Limits;

use crate::common::{self, Pair};

/// The reading half of a raw peer stream.
pub struct RawPeerStream {
    pub recv: quinn::RecvStream,
    pub buf: BytesMut,
}

impl RawPeerStream {
    /// The next message; panics after 30 s of silence or at the end of the stream.
    pub async fn next(&mut self) -> PeerMsg {
        self.try_next()
            .await
            .expect("the peer keeps the stream open")
    }

    /// The next message, or `None` at the end of the stream (or a reset).
    pub async fn try_next(&mut self) -> Option<PeerMsg> {
        let limits = Limits::default();
        loop {
            if let Some(msg) = PeerMsg::decode(&mut self.buf, &limits).expect("valid peer frame") {
                return Some(msg);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(30), self.recv.read(&mut chunk))
                .await
                .expect("the peer answers within 30 s")
                .ok()??;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Encodes and writes `msgs` on a raw peer stream.
pub async fn send_peer(send: &mut quinn::SendStream, msgs: &[PeerMsg]) {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    send.write_all(&out).await.expect("write to the peer");
}

/// A test playing the primary: dials the backup with the pair's peer certificate.
pub struct ScriptedPrimary {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub ctl_send: quinn::SendStream,
    pub ctl: RawPeerStream,
}

impl ScriptedPrimary {
    /// Dials the backup of `pair` and opens the control stream.
    pub async fn dial(pair: &Pair) -> ScriptedPrimary {
        let cfg = common::raw_client_config(pair.certs.path(), tls::Identity::Peer);
        let (endpoint, conn) = common::raw_connection(pair.backup_addr, cfg).await;
        let (ctl_send, recv) = conn.open_bi().await.expect("open the control stream");
        ScriptedPrimary {
            endpoint,
            conn,
            ctl_send,
            ctl: RawPeerStream {
                recv,
                buf: BytesMut::new(),
            },
        }
    }

    /// Sends our hello and returns the backup's first answer (its hello, or a goodbye).
    pub async fn send_hello(&mut self, ours: PeerHello) -> PeerMsg {
        send_peer(&mut self.ctl_send, &[PeerMsg::Hello(Box::new(ours))]).await;
        self.ctl.next().await
    }

    /// Sends our hello and returns the backup's, which it must be.
    pub async fn hello(&mut self, ours: PeerHello) -> PeerHello {
        match self.send_hello(ours).await {
            PeerMsg::Hello(h) => *h,
            other => panic!("expected the backup's hello, got {other:?}"),
        }
    }
}

/// A hello as a primary of the pair whose certificates are in `certs`, at link `epoch`, with
/// `entries` in its store.
pub fn primary_hello(
    certs: &Path,
    run_id: u64,
    synced: bool,
    epoch: u64,
    entries: &[(Bytes, Bytes)],
) -> PeerHello {
    PeerHello {
        primary: true,
        run_id,
        pair: quickv_server::replication::pair_id(certs),
        epoch,
        synced,
        keys: entries.len() as u64,
        digests: std::array::from_fn(|i| {
            Digest::of_entries(
                entries
                    .iter()
                    .filter(|(k, _)| BucketId::of(k).index() == i)
                    .map(|(k, v)| (k, v)),
            )
        }),
    }
}

/// A whole bootstrap of `entries` (every bucket, `TransferDone` last).
pub fn snapshot(entries: &[(Bytes, Bytes)]) -> Vec<PeerMsg> {
    let limits = Limits::default();
    let mut msgs = Vec::new();
    for b in BucketId::all() {
        let mine: Vec<_> = entries
            .iter()
            .filter(|(k, _)| BucketId::of(k) == b)
            .cloned()
            .collect();
        let digest = Digest::of_entries(mine.iter().map(|(k, v)| (k, v)));
        let count = mine.len() as u64;
        msgs.push(PeerMsg::BucketBegin(b));
        msgs.extend(chunks(mine, &limits));
        msgs.push(PeerMsg::BucketEnd {
            bucket: b,
            count,
            digest,
        });
    }
    msgs.push(PeerMsg::TransferDone);
    msgs
}

/// `status["keys"]`, 0 if absent.
pub fn keys_of(status: &serde_json::Value) -> u64 {
    status["keys"].as_u64().unwrap_or(0)
}

/// `n` keys of bucket `b`, each with `value`.
pub fn entries_in(b: BucketId, n: usize, value: &Bytes) -> Vec<(Bytes, Bytes)> {
    (0u64..)
        .map(|i| format!("key{i}"))
        .filter(|k| BucketId::of(k.as_bytes()) == b)
        .take(n)
        .map(|k| (Bytes::from(k), value.clone()))
        .collect()
}
