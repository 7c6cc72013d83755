//! The I/O both ends of every quickv link share, written once: what the client library, the
//! server's sessions and the peer link are built from.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`stream`] | framed QUIC streams: [`FramedReader`] (bytes in, for a sans-IO decoder), [`BatchWriter`] (one write per burst), [`Outbox`] (frames encoded by one task for another task's writer) |
//! | [`tls`] | a cluster's certificate files ([`CertPaths`]), PEM loading, the rustls/quinn client configs (client and peer dial), and plain sentences for QUIC/TLS refusals ([`explain_connection_error`]) |
//!
//! The crate holds no protocol decisions (those are `quickv-proto`'s codec) and no server or
//! client policy: an application depends on `quickv-client`, which uses this crate without
//! re-exporting it; the server depends on it directly.

#![warn(missing_docs)]

pub mod stream;
pub mod tls;

pub use stream::{BatchWriter, ByteBudget, FramedReader, Outbox, Taken, READ_CHUNK_BYTES};
pub use tls::{
    client_config, client_config_from_files, explain_connection_error, load_certs, load_key,
    load_roots, quic_client_config, CertPaths, Identity, TlsError,
};
