//! Admission: who may hold a connection slot, counted in three budgets that never share slots.
//!
//! - **Handshakes in progress** (`max_pending_handshakes`), counted from the first Initial until
//!   the handshake completes or [`ServerConfig::handshake_timeout`] passes, apart from established
//!   connections. Before a slot is taken, a client whose address is not validated gets a QUIC
//!   Retry (RFC 9000 §8.1) once `retry_above_pending` handshakes are in progress (0: always): a
//!   spoofed Initial then costs the server a stateless Retry and no slot at all.
//! - **Client connections** (`max_connections`), taken once the handshake is done and the ALPN is
//!   known, and per certificate (`max_connections_per_identity`). A client past either cap has its
//!   connection closed with [`CLOSE_BUSY`] and a reason naming the cap (docs/protocol.md).
//! - **The peer link's reserve** on a backup ([`PEER_SLOTS`] handshakes), for the configured peer
//!   address only, and only once that address is validated: flooding the clients' budget cannot
//!   keep a restarted primary from re-linking.
//!
//! Every slot is a guard: dropped however its task ends, it gives the slot back.
//!
//! [`ServerConfig::handshake_timeout`]: crate::config::ServerConfig::handshake_timeout

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Role, ServerConfig};

/// Handshakes in progress reserved for the backup's configured peer (a restarted primary redials
/// while its old connection may still be open).
pub const PEER_SLOTS: usize = 2;

/// Application close code for a client past a connection cap (`max_connections`, or
/// `max_connections_per_identity` for its certificate); the reason says which.
pub const CLOSE_BUSY: u32 = 6;

/// What to do with a new Initial.
#[derive(Debug)]
pub enum Verdict {
    /// Send a Retry: the client must prove its address first.
    Retry,
    /// Refuse at the transport level (QUIC `CONNECTION_REFUSED`): no handshake slot is free.
    Refuse,
    /// Go on with the handshake, holding this slot until it ends.
    Handshake(Pending),
}

/// The counters of one server.
#[derive(Debug, Default)]
pub struct Admission {
    /// Client handshakes in progress.
    pending: Arc<AtomicUsize>,
    /// Handshakes in progress from the configured peer address (backup only).
    peer_pending: Arc<AtomicUsize>,
    /// Open client connections per certificate (its DER bytes).
    identities: Mutex<HashMap<Vec<u8>, usize>>,
}

impl Admission {
    /// Decides on an Initial from `remote` (`validated`: it carried a valid Retry token).
    pub fn initial(&self, config: &ServerConfig, remote: SocketAddr, validated: bool) -> Verdict {
        let from_peer = config.role == Role::Backup && config.peer == Some(remote);
        let (gauge, cap) = match from_peer {
            // The reserve is worth something only if the address is the peer's: always validated.
            true if !validated => return Verdict::Retry,
            true => (&self.peer_pending, PEER_SLOTS),
            false => (&self.pending, config.max_pending_handshakes),
        };
        if !validated && gauge.load(Ordering::Acquire) >= config.retry_above_pending {
            return Verdict::Retry;
        }
        match take(gauge, cap) {
            true => Verdict::Handshake(Pending(gauge.clone())),
            false => Verdict::Refuse,
        }
    }

    /// Handshakes in progress (clients and the peer's reserve).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed) + self.peer_pending.load(Ordering::Relaxed)
    }

    /// Takes a client connection slot for a certificate, or says which cap refuses it.
    pub fn client<'a>(
        &'a self,
        config: &ServerConfig,
        open: &'a AtomicU64,
        identity: &[u8],
    ) -> Result<ClientSlot<'a>, String> {
        let cap = config.max_connections as u64;
        if open.fetch_add(1, Ordering::AcqRel) >= cap {
            open.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "connection limit reached (max_connections {cap}); try again later"
            ));
        }
        let mut identities = lock(&self.identities);
        let held = identities.entry(identity.to_vec()).or_insert(0);
        if *held >= config.max_connections_per_identity {
            drop(identities);
            open.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "connection limit for this certificate reached (max_connections_per_identity {}); \
                 try again later",
                config.max_connections_per_identity
            ));
        }
        *held += 1;
        Ok(ClientSlot {
            open,
            identities: &self.identities,
            identity: identity.to_vec(),
        })
    }
}

/// Takes one unit of `gauge` if it is under `cap`.
fn take(gauge: &AtomicUsize, cap: usize) -> bool {
    gauge
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters consistent after every statement: a poisoned lock holds nothing half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handshake slot, given back on drop.
#[derive(Debug)]
pub struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection slot (the server's and its certificate's), given back on drop.
#[derive(Debug)]
pub struct ClientSlot<'a> {
    /// The server's open client connections.
    open: &'a AtomicU64,
    /// Per certificate.
    identities: &'a Mutex<HashMap<Vec<u8>, usize>>,
    /// This connection's certificate.
    identity: Vec<u8>,
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut identities = lock(self.identities);
        if let Some(held) = identities.get_mut(&self.identity) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                identities.remove(&self.identity);
            }
        }
    }
}
