//! The runner's connection to one server: open, closed, or refused until the next server action.

use std::path::Path;
use std::time::Duration;

use super::CLIENT_IDLE_TIMEOUT;
use quickv_client::{Client, ClientConfig};

/// The runner's connection to one server.
pub(super) enum Conn {
    /// None yet, or dropped after a server action.
    Closed,
    /// Usable; clones share it.
    Open(Client),
    /// Connecting failed while the server was believed down. Until the next server action
    /// requests fail at once with this reason instead of waiting out another connect timeout:
    /// nothing but a script instruction brings a server back.
    Refused(String),
}

/// Connects to `addr` as the runner does: a short idle timeout, and no retried writes.
pub(super) async fn connect(addr: &str, certs: &Path, timeout: Duration) -> Result<Client, String> {
    let mut config = ClientConfig::new(certs);
    config.connect_timeout = timeout;
    config.idle_timeout = CLIENT_IDLE_TIMEOUT;
    // Scripts judge each answer as the classic harness did: a write cut off is indeterminate at
    // once, not retried with its session stamp.
    config.retry_writes = false;
    Client::connect(addr, &config)
        .await
        .map_err(|e| e.to_string())
}
