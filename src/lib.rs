//! # quickv
//!
//! An in-memory key-value server whose clients and primary→backup replication both speak QUIC
//! (quinn + rustls, mutual TLS everywhere).
//!
//! # Layout
//!
//! This is the server library of a Cargo workspace (see `docs/architecture.md`): the wire protocol
//! is the `quickv-proto` crate and the client the `quickv-client` crate, re-exported here as
//! [`protocol`] and [`client`] so that their old paths still work.
//!
//! | module | concern |
//! |---|---|
//! | [`protocol`] | `quickv-proto`, the sans-IO codec: frames, requests, answers, peer messages, bucket identity |
//! | [`store`] | the table: 32 flurry buckets, per-bucket counts and order-independent digests |
//! | [`tls`] | certificate generation (rcgen), server rustls/quinn configs; re-exports the client side |
//! | [`pki`] | client identities with roles, revocation (CRL), server certificate renewal |
//! | [`config`] | typed config and every default, in one place |
//! | [`replication`] | primary/backup: sans-IO state machine, lanes, peer link drivers |
//! | [`server`] | QUIC endpoint, client sessions, routing, limits, graceful shutdown, op metrics; the HTTP/JSON gateway (the classic API, Prometheus `/metrics`) in [`server::http`], a second front-end beside the QUIC session |
//! | [`client`] | `quickv-client`, the public async client library, pipelined over long-lived streams |
//! | [`tester`] | scenario scripts: parser, model of the table, judge, runner (`quickv test`) |
//! | [`bench`](mod@bench) | `quickv bench`: the load generator, HDR histograms, plots, comparison tables |
//! | [`history`] | recorded client histories, a recorded load, and the per-key linearizability checker |
//! | [`cli`] | the `quickv` command line (the binary is a thin wrapper around it) |
//! | [`up`] | `quickv up`: the local pair as supervised child processes |
//! | [`supervisor`] | servers as child processes: spawn, wait for the ready line, signal, wait for a status (used by `up`, the tester and the tests) |
//! | [`error`] | typed errors |
//!
//! # The path of a request
//!
//! A client ([`client::Client`]) queues a call on one of its streams (long-lived bidirectional
//! QUIC streams). The stream's writer encodes it with [`protocol::encode_request`] — a length-prefixed
//! frame carrying a request id — batching whatever else is queued into the same write. On the
//! server, [`server::session`] reads the stream, decodes frames with
//! [`protocol::decode_request`] (which tells *incomplete* from *invalid* and checks lengths before
//! allocating), and hands each request to [`server::router::handle`]. A GET is answered from the
//! [`store::Store`] at once; an INSERT on a standalone server is applied to its bucket
//! (`BucketId::of(key)`), updating the bucket's digest in O(1). The answer is queued to the
//! stream's writer task, which batches answers into one write; the client's stream reader matches it
//! to the waiting caller by id, so answers may come back in any order.
//!
//! An HTTP request to the optional gateway ([`server::http`]) becomes the same [`protocol::Op`] and takes
//! the same [`server::router::handle`], so it gets the same answers and replication guarantees.
//!
//! See `docs/architecture.md` for the same walk with file names, and `docs/protocol.md` for bytes.

/// Prints a line to stdout, ignoring a closed pipe (`quickv status | head` must not panic).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod bench;
pub mod cli;
pub use quickv_client as client;
pub mod config;
pub mod error;
pub mod history;
/// The HTTP gateway, at its old path; it lives in [`server::http`], a front-end beside the QUIC session.
pub use server::http;
pub mod pki;
pub use quickv_proto as protocol;
pub mod replication;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod tester;
pub mod tls;
pub mod up;

pub use client::{Client, ClientConfig, ClientError};
pub use error::{Error, Result};
