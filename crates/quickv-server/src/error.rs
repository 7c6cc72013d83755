//! Typed errors of the library. Binaries and tools wrap them with `anyhow` at the edge.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong below the binary, one variant per failure kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file (certificates, config) failed.
    #[error("{path}: {error}")]
    File {
        /// The file we were working on, so the message names it.
        path: PathBuf,
        /// The underlying I/O failure (in the message, not chained: printed once).
        error: io::Error,
    },
    /// A certificate or key could not be generated, parsed or used.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// The configuration file or flags are inconsistent.
    #[error("config error: {0}")]
    Config(String),
    /// Binding a socket or another local I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake or QUIC connection failed; the message is a plain sentence.
    #[error("{0}")]
    Connection(String),
    /// The peer broke the protocol (bad frame, unexpected answer).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn file(path: impl Into<PathBuf>, error: io::Error) -> Error {
        Error::File {
            path: path.into(),
            error,
        }
    }
}

impl From<quickv_net::tls::TlsError> for Error {
    /// Same variants, same messages: the client crate's TLS loading failed.
    fn from(e: quickv_net::tls::TlsError) -> Error {
        match e {
            quickv_net::tls::TlsError::Certificate(m) => Error::Certificate(m),
            quickv_net::tls::TlsError::Config(m) => Error::Config(m),
        }
    }
}
