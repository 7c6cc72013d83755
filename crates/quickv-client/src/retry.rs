//! Exactly-once writes from the client's side: a write gets a (session, sequence) stamp and is
//! resent with it while its fate is unknown, until the pair answers or the deadline passes (see
//! `docs/client.md`, "Sessions and retries").

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::owed::Deadline;
use quickv_proto::{ErrorCode, Op, Reply, WriteStamp};

/// How long a write is retried when the call has no deadline ([`Client::without_timeout`]).
const RETRY_WINDOW_WITHOUT_DEADLINE: Duration = Duration::from_secs(60);

impl Client {
    /// A write with a fresh (session, sequence) stamp, resent with the same stamp while its fate
    /// is unknown (lost connection, `Indeterminate`, a primary restarting) until the pair gives a
    /// definite answer or the deadline passes. See `docs/client.md`, "Sessions and retries".
    pub(crate) async fn write_with_retries(&self, op: Op) -> Result<Reply, ClientError> {
        let inner = &self.inner;
        let stamp = WriteStamp::new(
            inner.session_id,
            inner.next_seq.fetch_add(1, Ordering::Relaxed) + 1,
        );
        let budget = self.timeout().unwrap_or(RETRY_WINDOW_WITHOUT_DEADLINE);
        let first = Instant::now();
        // A budget beyond what the clock can name: no deadline in practice.
        let deadline = first
            .checked_add(budget)
            .unwrap_or_else(|| first + Duration::from_secs(86_400 * 365 * 30));
        // Set once an attempt may have reached the server: from then on only a definite answer
        // (or the deadline) ends the call, never a refusal that says nothing about that attempt.
        let mut maybe_applied = false;
        let mut pause = inner.config.backoff_min;
        let mut last = ClientError::Timeout(format!("no answer within the deadline of {budget:?}"));
        loop {
            let now = Instant::now();
            if now >= deadline {
                return match maybe_applied {
                    true => Ok(Reply::Indeterminate(format!(
                        "no definite answer within the deadline of {budget:?} ({last}); the                          write may have been applied"
                    ))),
                    false => Err(last),
                };
            }
            if maybe_applied {
                inner.write_retries.fetch_add(1, Ordering::Relaxed);
            }
            // A first attempt (or one after attempts that never left) is new to the server: age 0.
            // A retry's age is counted from the call's start, an over-estimate, which is the safe
            // side (the server may refuse a retry as expired, never take it for a new write).
            let session = Some((stamp, maybe_applied.then_some(first)));
            // The attempt ends at the call's deadline (settled by the pipe's sweeper, no timer
            // per attempt): as `Indeterminate`, which makes the loop end just below.
            let due = Deadline {
                at: deadline,
                budget,
            };
            let outcome = match inner
                .primary
                .start(op.clone(), session, &inner.config, &inner.closed, Some(due))
                .await
            {
                Ok(pending) => pending.await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(Reply::Indeterminate(why)) => {
                    maybe_applied = true;
                    last = ClientError::Indeterminate(why);
                }
                Ok(Reply::Unavailable(why)) if maybe_applied => {
                    last = ClientError::Unavailable(why);
                }
                // A call that never left this process: retried only if an earlier attempt may
                // have, otherwise reported at once as before.
                Err(err @ ClientError::Connection(_)) if maybe_applied => last = err,
                // The server no longer knows whether an earlier attempt was applied: exactly
                // what indeterminate means.
                Ok(Reply::Error {
                    code: ErrorCode::SessionExpired,
                    message,
                }) if maybe_applied => {
                    return Ok(Reply::Indeterminate(format!(
                        "the server cannot tell whether an earlier attempt was applied: {message}"
                    )))
                }
                Ok(definite) => return Ok(definite),
                Err(other) => return Err(other),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(inner.config.backoff_max);
        }
    }
}
