//! # quickv-server
//!
//! The quickv server library: an in-memory key-value store whose clients and primary→backup
//! replication both speak QUIC (quinn + rustls, mutual TLS everywhere). The `quickv` binary
//! (the workspace's root package, with the tools) runs it with `quickv server` and `quickv up`.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`replication`] | primary/backup: the peer link's drivers over QUIC |
//! | [`server`] | QUIC endpoint, client connections, routing, limits, graceful shutdown, op metrics; the HTTP/JSON gateway in [`server::http`] |
//! | [`tls`] | certificate generation (rcgen) and the server's rustls/quinn configs |
//! | [`pki`] | client identities with roles, revocation (CRL), server certificate renewal |
//! | [`config`] | typed config and every default, in one place |
//! | [`error`] | typed errors |
//!
//! What it builds on: `quickv-proto` (the sans-IO codec: frames, peer messages, bucket identity),
//! `quickv-core` (the store and its session records, the replication state machine, lanes,
//! applier and transfer, without I/O) and `quickv-net` (framed QUIC streams, the outbox, PEM
//! loading), never the client library or the tools.
//!
//! # The path of a request
//!
//! [`server::conn`] reads a client's long-lived stream through a `quickv_net::FramedReader`,
//! decodes frames with `quickv_proto::decode_request` (which tells *incomplete* from *invalid*
//! and checks lengths before allocating), and hands each request to [`server::router`]. A GET is
//! answered from the `quickv_core::store::Store` at once; a write on a primary goes through
//! [`replication`] to its bucket's lane and is answered when the backup acknowledges it. The
//! answer is encoded into the stream's `quickv_net::Outbox`, whose writer task batches answers
//! into one write. An HTTP request to the optional gateway ([`server::http`]) becomes the same
//! `quickv_proto::Op` and takes the same router.
//!
//! See `docs/architecture.md` for the same walk with file names, and `docs/protocol.md` for bytes.

pub mod config;
pub mod error;
pub mod pki;
pub mod replication;
pub mod server;
pub mod tls;

pub use error::{Error, Result};
