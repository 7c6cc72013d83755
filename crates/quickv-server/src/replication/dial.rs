//! The primary's dialer: overlapping connection attempts, so the link comes up within a dial
//! spacing of the backup starting to listen.
//!
//! QUIC runs over UDP, which hears no "connection refused": an Initial packet sent before the
//! backup listens is simply lost, and quinn retransmits it only on its probe timeout, which backs
//! off exponentially (about 1 s, then 2 s) until the handshake gives up after about 3 s. One
//! attempt at a time therefore links up to 3 s after the backup started. Instead the dialer
//! starts a fresh attempt every [`DIAL_SPACING`] while earlier ones are still waiting, keeps the
//! [`MAX_DIALS`] most recent, and takes the first that completes: a backup that starts listening
//! is reached by the next fresh Initial, within one spacing.
//!
//! Every attempt is a task in a [`JoinSet`] owned by one [`dial`] call: the attempts that lose
//! the race (and any still pending when the call returns or is cancelled) are aborted with it,
//! so nothing outlives the dial that started it. When to start the next attempt is decided by [`next_attempt`], a plain function of the time.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::VecDeque;

use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::replication::link::LinkError;
use quickv_net::tls;

/// Time between two dial attempts while none has completed.
pub const DIAL_SPACING: Duration = Duration::from_millis(100);

/// Attempts kept in flight at once; beyond it the oldest is dropped. Each attempt so lives at
/// least `MAX_DIALS × DIAL_SPACING` (400 ms): far more than a handshake between the two servers of
/// a pair takes. Few, because quinn closes a dropped attempt with a packet that a backup which has
/// started listening meanwhile sees (and logs) as a failed handshake.
pub const MAX_DIALS: usize = 4;

/// When the next attempt may start, given when the latest one did: a plain decision, without I/O
/// or clock. `None` for the latest means none yet (start now).
pub fn next_attempt(latest: Option<Instant>) -> Option<Instant> {
    latest.map(|t| t + DIAL_SPACING)
}

/// Dials `peer` until an attempt completes its handshake, and returns that connection. Attempts
/// overlap (module doc); a failed one is logged (the first at `info`, then at `debug`). Runs until
/// it succeeds: the caller bounds it (a graceful stop drops it, aborting every attempt).
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    peer: SocketAddr,
) -> Result<quinn::Connection, LinkError> {
    // Owned here: dropping the set (on return, or when the caller stops waiting) aborts every
    // attempt still pending.
    let mut attempts: JoinSet<Result<quinn::Connection, LinkError>> = JoinSet::new();
    // Abort handles in start order, to drop the oldest attempt beyond `MAX_DIALS`.
    let mut order: VecDeque<AbortHandle> = VecDeque::new();
    let mut latest = None;
    let mut announced = false;
    loop {
        let now = Instant::now();
        let Some(next) = next_attempt(latest).filter(|&t| t > now) else {
            let connecting = endpoint
                .connect_with(config.clone(), peer, &peer.ip().to_string())
                .map_err(LinkError::new)?;
            order.retain(|h| !h.is_finished());
            if order.len() >= MAX_DIALS {
                if let Some(oldest) = order.pop_front() {
                    oldest.abort();
                }
            }
            order.push_back(attempts.spawn(async move {
                connecting
                    .await
                    .map_err(|e| LinkError(tls::explain_connection_error(&e)))
            }));
            latest = Some(now);
            continue;
        };
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) if !announced => {
                    info!(%peer, reason = %e, "backup not reachable yet; dialing again every {DIAL_SPACING:?}");
                    announced = true;
                }
                Ok(Err(e)) => debug!(%peer, reason = %e, "dial failed"),
                // Aborted (dropped as the oldest): nothing to learn.
                Err(_) => {}
            },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_spaced_and_the_first_starts_at_once() {
        let t = Instant::now();
        assert_eq!(next_attempt(None), None);
        assert_eq!(next_attempt(Some(t)), Some(t + DIAL_SPACING));
    }
}
