//! The HTTPS gateway's budget for connections that have not finished their TLS handshake.
//!
//! A connection slot ([`super::max_connections`]) is taken only once the TLS handshake is done and
//! the client's certificate verified: before that, anyone can open a TCP connection and send
//! nothing. Such unauthenticated connections get their own small budget instead — at most
//! [`PENDING_HANDSHAKES`] at once, at most [`PENDING_PER_SOURCE`] from one IP address — and
//! the server's handshake timeout (`--handshake-timeout-ms`, default 3 s) to finish. A connection over budget is closed at once, so a
//! source that keeps idle connections open cannot queue ahead of others, nor hold the slots of
//! authenticated clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// TLS handshakes in progress at once, over every source.
pub const PENDING_HANDSHAKES: usize = 64;
/// TLS handshakes in progress at once from one IP address.
pub const PENDING_PER_SOURCE: usize = 8;

/// Handshakes in progress, by source address.
#[derive(Debug, Default)]
pub struct Handshakes {
    /// Count per source; the total is their sum (kept beside them).
    pending: Mutex<Pending>,
}

/// The counts behind [`Handshakes`].
#[derive(Debug, Default)]
struct Pending {
    /// Handshakes in progress per source IP (no entry at zero).
    by_source: HashMap<IpAddr, usize>,
    /// Their sum.
    total: usize,
}

impl Handshakes {
    /// Admits one more handshake from `source`, or `None` when over budget (close the connection).
    pub fn begin(self: &Arc<Self>, source: IpAddr) -> Option<InHandshake> {
        let mut pending = self.lock();
        let from_source = pending.by_source.get(&source).copied().unwrap_or(0);
        if pending.total >= PENDING_HANDSHAKES || from_source >= PENDING_PER_SOURCE {
            return None;
        }
        pending.total += 1;
        pending.by_source.insert(source, from_source + 1);
        Some(InHandshake {
            budget: self.clone(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted handshake; gives its place back when dropped (handshake done, failed or timed out).
#[derive(Debug)]
pub struct InHandshake {
    /// The budget it counts in.
    budget: Arc<Handshakes>,
    /// Its source address.
    source: IpAddr,
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        let mut pending = self.budget.lock();
        pending.total = pending.total.saturating_sub(1);
        if let Some(n) = pending.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_places_come_back() {
        let budget = Arc::new(Handshakes::default());
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let held: Vec<_> = (0..PENDING_PER_SOURCE)
            .map(|_| budget.begin(a).expect("within budget"))
            .collect();
        assert!(budget.begin(a).is_none(), "over the per-source share");
        let other = budget.begin(b).expect("another source still gets in");
        drop(held);
        drop(other);
        assert_eq!(budget.lock().total, 0);
        assert!(budget.lock().by_source.is_empty());
        assert!(budget.begin(a).is_some());
    }
}
