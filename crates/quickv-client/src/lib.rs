//! The quickv client library: what an application depends on to talk to a quickv server.
//!
//! This crate carries no server: QUIC (quinn), TLS (rustls, ring), tokio with the few features it
//! uses, the sans-IO wire protocol (`quickv-proto`, re-exported as [`protocol`]) and the shared
//! stream and TLS plumbing (`quickv-net`, used but not re-exported).
//!
//! A [`Client`] holds one QUIC connection with a few long-lived bidirectional streams ("pipes").
//! Calls from any number of tasks are spread over the pipes round-robin and pipelined: each pipe
//! has a writer task that batches queued requests into one write and a reader task that matches
//! answers to callers by request id, so answers may arrive in any order. `Client` is cheap to clone
//! and every clone shares the connection.
//!
//! Beyond one server: [`Client::connect_pair`] knows a primary and its backup and, if allowed by
//! [`ReadFrom`], answers [`Client::read`] from the backup while the primary is down, or spreads
//! reads over both servers ([`ReadFrom::Any`], linearizable), saying which in [`Read::from`]. Every call has a deadline ([`ClientConfig::timeout`], [`Client::with_timeout`]);
//! dropping a call's future cancels it. [`Client::get_many`], [`Client::insert_many`] and
//! [`Client::pipeline`] put many requests in flight at once. [`Client::status`] is typed
//! ([`Status`], the one status type the server fills, from `quickv-proto`). docs/client.md explains read modes, deadlines, retries and the planned
//! exactly-once sessions.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use quickv_client::{Client, ClientConfig};
//! # let certs_dir = std::path::Path::new("certs");
//! # let (addr, primary_addr, backup_addr) = ("127.0.0.1:4470", "127.0.0.1:4470", "127.0.0.1:4471");
//! # // A throw-away standalone server on a free loopback port, with fresh certificates.
//!
//! // `addr` is e.g. "127.0.0.1:4470"; `certs_dir` holds ca.pem, client.pem, client.key.
//! let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
//! client.insert("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! let old = client.delete("greeting").await?;
//! assert_eq!(&old[..], b"hello");
//! assert_eq!(client.get("greeting").await?, None);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | `client` | [`Client`]: connect, the calls, deadlines, reads from the backup |
//! | `batch` | [`Pipeline`] and the batch calls: many requests in flight at once |
//! | `retry` | writes retried with their session stamp after a lost connection |
//! | `link` | one server: its connection (redialled with backoff) and the pipes on it |
//! | `pipe` | one long-lived stream: its queue, writer, reader and deadline sweeper |
//! | `owed` | the answers a pipe owes, by request id, with their deadlines |
//! | `config` | [`ClientConfig`] and its builder, [`ReadFrom`], [`Source`] |
//! | `error` | [`ClientError`] and the mapping of refusals |
//! | [`outcome`] | the one mapping of a call's result to the protocol's [`Outcome`](protocol::Outcome) |

#![warn(missing_docs)]

mod batch;
mod client;
mod config;
mod error;
mod link;
pub mod outcome;
mod owed;
mod pipe;
mod retry;

pub use batch::Pipeline;
pub use client::{Client, Read};
pub use config::{
    ClientConfig, ClientConfigBuilder, ReadFrom, Source, DEFAULT_BACKOFF_MAX_MS,
    DEFAULT_BACKOFF_MIN_MS, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_STREAMS,
    DEFAULT_TIMEOUT_MS,
};
pub use error::ClientError;
/// The server's status document, typed ([`Client::status`]): the types the server itself fills,
/// from the protocol crate.
pub use quickv_proto::status::{
    CertificateStatus, CrlNumber, LaneStatus, LastTransition, ReplicationStatus, SessionUsage,
    Status,
};

/// The wire protocol the client speaks ([`Op`](protocol::Op), [`Reply`](protocol::Reply),
/// [`Limits`](protocol::Limits), …), re-exported so that an application needs no second
/// dependency.
pub use quickv_proto as protocol;
