//! [`ClientError`] in the shared vocabulary: the one mapping from a client error to an
//! [`Outcome`] (the mapping from a server's answer is [`Outcome::of`], in the protocol crate).

use quickv_proto::{Outcome, Reply};

use crate::error::ClientError;

impl From<&ClientError> for Outcome {
    /// Answers the server gave keep their outcome; a deadline is [`Outcome::Timeout`] (a write
    /// past its deadline is already [`ClientError::Indeterminate`]); a broken connection or a
    /// reply that does not fit the protocol is [`Outcome::Unreachable`]: nothing usable came back.
    fn from(e: &ClientError) -> Outcome {
        match e {
            ClientError::Exists => Outcome::Exists,
            ClientError::NotFound => Outcome::NotFound,
            ClientError::Unavailable(_) => Outcome::Unavailable,
            ClientError::Indeterminate(_) => Outcome::Indeterminate,
            ClientError::Forbidden(_) => Outcome::Forbidden,
            ClientError::Server { code, .. } => Outcome::of_error(*code),
            ClientError::Timeout(_) => Outcome::Timeout,
            // The delete took effect; only its value is unknown.
            ClientError::DeletedValueNotKept => Outcome::Ok,
            ClientError::Connection(_) | ClientError::Protocol(_) => Outcome::Unreachable,
        }
    }
}

/// The outcome of a [`crate::Client::call`]: the server's answer, or the client's error.
pub fn of_call(result: &Result<Reply, ClientError>) -> Outcome {
    match result {
        Ok(reply) => Outcome::of(reply),
        Err(e) => Outcome::from(e),
    }
}

#[cfg(test)]
mod tests {
    use quickv_proto::ErrorCode;

    use super::*;

    #[test]
    fn client_errors_keep_the_servers_verdict_and_name_their_own() {
        let cases = [
            (ClientError::Exists, Outcome::Exists),
            (ClientError::Unavailable("x".into()), Outcome::Unavailable),
            (
                ClientError::Indeterminate("x".into()),
                Outcome::Indeterminate,
            ),
            (ClientError::Forbidden("x".into()), Outcome::Forbidden),
            (
                ClientError::Server {
                    code: ErrorCode::ValueTooLarge,
                    message: "x".into(),
                },
                Outcome::Error,
            ),
            (ClientError::Timeout("x".into()), Outcome::Timeout),
            (ClientError::Connection("x".into()), Outcome::Unreachable),
        ];
        for (e, outcome) in cases {
            assert_eq!(Outcome::from(&e), outcome, "{e:?}");
        }
        assert_eq!(of_call(&Ok(Reply::NotFound)), Outcome::NotFound);
    }
}
