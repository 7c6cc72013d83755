//! Why a peer link failed.

/// Why the link failed, in words for the log and for the state transition.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

impl LinkError {
    /// A link error from anything displayable.
    pub fn new(e: impl std::fmt::Display) -> LinkError {
        LinkError(e.to_string())
    }
}
