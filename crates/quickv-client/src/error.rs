//! What a call can fail with ([`ClientError`]), and the mapping of raw answers to results.

use bytes::Bytes;

use crate::config::ClientConfig;
use quickv_net::tls::{self, CertPaths, Identity};
use quickv_proto::status::Status;
use quickv_proto::{ErrorCode, Reply};

/// Why a call did not succeed. The first four are answers from the server about the operation;
/// the rest mean the call could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// `insert` of a key that exists.
    #[error("the key already exists")]
    Exists,
    /// `update`/`delete` of a key that does not exist.
    #[error("the key does not exist")]
    NotFound,
    /// The server refused the operation; it did not take effect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have taken effect (the connection died after it was sent, or its
    /// deadline passed before the answer came).
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// The client's certificate does not grant this operation (its role is too low); it did not
    /// take effect.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The server rejected the request as invalid.
    #[error("server error ({code}): {message}")]
    Server {
        /// Machine-readable kind.
        code: ErrorCode,
        /// The server's sentence.
        message: String,
    },
    /// Connecting, TLS, or the connection broke; the message is a plain sentence.
    #[error("{0}")]
    Connection(String),
    /// The server's answer did not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A read (or a call that changes nothing) got no answer within its deadline. Writes past
    /// their deadline are [`ClientError::Indeterminate`] instead.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Not a failure of the delete: it **took effect** (the key is gone), but the value it removed
    /// is unknown. A retry of the delete found it applied by an earlier attempt, and the server had
    /// not kept a removed value that large for retries (it answers `Ok` instead of the value:
    /// docs/protocol.md, "Sessions"). Only [`Client::delete`](crate::Client::delete) returns it.
    #[error("deleted by an earlier attempt; the removed value was too large to keep")]
    DeletedValueNotKept,
}

impl ClientError {
    /// True when the server answered about the operation itself (exists, not found, unavailable,
    /// indeterminate, forbidden): the CLI exits 1 for these and 2 for everything else.
    ///
    /// ```
    /// use quickv_client::ClientError;
    /// assert!(ClientError::Exists.is_refusal());
    /// assert!(!ClientError::Timeout("no answer".into()).is_refusal());
    /// ```
    pub fn is_refusal(&self) -> bool {
        // `DeletedValueNotKept` is not here: the delete took effect (see `took_effect`).
        matches!(
            self,
            ClientError::Exists
                | ClientError::NotFound
                | ClientError::Unavailable(_)
                | ClientError::Indeterminate(_)
                | ClientError::Forbidden(_)
        )
    }
}

impl ClientError {
    /// True when the write this error answers certainly took effect (only
    /// [`ClientError::DeletedValueNotKept`]): treat the delete as done.
    ///
    /// ```
    /// use quickv_client::ClientError;
    /// assert!(ClientError::DeletedValueNotKept.took_effect());
    /// assert!(!ClientError::NotFound.took_effect());
    /// ```
    pub fn took_effect(&self) -> bool {
        matches!(self, ClientError::DeletedValueNotKept)
    }
}

/// The client TLS settings of `config`.
pub(crate) fn client_tls(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    tls::client_config(
        &CertPaths::new(&config.certs_dir),
        Identity::Client,
        config.idle_timeout,
        config.idle_timeout / 3,
    )
    .map_err(|e| ClientError::Connection(e.to_string()))
}

/// A status document, typed.
pub(crate) fn parse_status(text: &str) -> Result<Status, ClientError> {
    serde_json::from_str(text).map_err(|e| {
        ClientError::Protocol(format!(
            "the status document does not parse (not JSON, or without a field this client needs): {e}"
        ))
    })
}

/// The answer to a Get.
pub(crate) fn get_answer(reply: Reply) -> Result<Option<Bytes>, ClientError> {
    match reply {
        Reply::Value(v) => Ok(Some(v)),
        Reply::NotFound => Ok(None),
        other => Err(refusal(other)),
    }
}

pub(crate) fn no_answer(addr: &str, config: &ClientConfig) -> ClientError {
    ClientError::Connection(format!(
        "no answer from {addr} within {:?}: is the server running and reachable over UDP?",
        config.connect_timeout
    ))
}

pub(crate) fn expect_ok(reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(refusal(other)),
    }
}

/// Maps a non-success answer to its error.
pub(crate) fn refusal(reply: Reply) -> ClientError {
    match reply {
        Reply::Exists => ClientError::Exists,
        Reply::NotFound => ClientError::NotFound,
        Reply::Unavailable(r) => ClientError::Unavailable(r),
        Reply::Indeterminate(r) => ClientError::Indeterminate(r),
        Reply::Error {
            code: ErrorCode::Forbidden,
            message,
        } => ClientError::Forbidden(message),
        Reply::Error { code, message } => ClientError::Server { code, message },
        other => unexpected(other),
    }
}

pub(crate) fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {reply:?}"))
}
