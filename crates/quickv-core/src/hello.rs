//! A server's hello for a warm start.

use std::time::Instant;

use crate::store::Store;
use quickv_proto::peer::PeerHello;

/// A server's hello for a warm start, from its machine's `current` and `epoch` and its store.
///
/// A store that is not current but holds keys is what an interrupted bootstrap leaves behind:
/// some buckets copied, others not. It is never the truth, so it is dropped here (at `now`: its
/// session records go with it), before it can be offered as data (a pair whose only full copy
/// died then restarts empty, not half-full).
pub fn hello_of(
    primary: bool,
    run_id: u64,
    pair: u64,
    current: bool,
    epoch: u64,
    store: &Store,
    now: Instant,
) -> PeerHello {
    if !current && store.count() > 0 {
        tracing::warn!(
            keys = store.count(),
            "discarding a partial copy left by an interrupted bootstrap"
        );
        store.clear(now);
    }
    PeerHello {
        primary,
        run_id,
        pair,
        epoch,
        synced: current,
        keys: store.count(),
        digests: store.digests(),
    }
}
