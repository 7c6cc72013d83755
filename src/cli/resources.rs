//! `quickv server` flags for what one client may hold: queued answer bytes, dumps, handshakes,
//! connections per certificate (docs/security.md, "Resources"). Defaults live in `config`.

use std::time::Duration;

use clap::Args;

use quickv_server::config::ServerConfig;

#[derive(Debug, Args)]
pub(crate) struct ResourceArgs {
    /// Bytes of answers one stream may hold unwritten before the server stops reading it
    /// (default 4 MiB; one answer may go over).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_queued_bytes_per_stream: Option<usize>,
    /// The same, over all the streams of one connection (default 32 MiB).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_queued_bytes_per_connection: Option<usize>,
    /// Dumps (QUIC and HTTP) sent at once; more are answered `unavailable` (default 8).
    #[arg(long, value_name = "N")]
    pub(crate) max_dumps: Option<usize>,
    /// QUIC handshakes in progress at once; more are refused (default 256).
    #[arg(long, value_name = "N")]
    pub(crate) max_pending_handshakes: Option<usize>,
    /// Drop a QUIC handshake not completed within this many milliseconds (default 3000).
    #[arg(long, value_name = "MS")]
    pub(crate) handshake_timeout_ms: Option<u64>,
    /// Demand a QUIC Retry (address validation) from new clients once this many handshakes are
    /// in progress; 0 = always (default 0).
    #[arg(long, value_name = "N")]
    pub(crate) retry_above_pending: Option<usize>,
    /// Client connections one certificate may hold at once (default 256).
    #[arg(long, value_name = "N")]
    pub(crate) max_connections_per_identity: Option<usize>,
}

impl ResourceArgs {
    /// Overrides `cfg` with the flags given.
    pub(crate) fn apply(&self, cfg: &mut ServerConfig) {
        let or = |flag: Option<usize>, current: usize| flag.unwrap_or(current);
        cfg.max_queued_bytes_per_stream = or(
            self.max_queued_bytes_per_stream,
            cfg.max_queued_bytes_per_stream,
        );
        cfg.max_queued_bytes_per_connection = or(
            self.max_queued_bytes_per_connection,
            cfg.max_queued_bytes_per_connection,
        );
        cfg.max_dumps = or(self.max_dumps, cfg.max_dumps);
        cfg.max_pending_handshakes = or(self.max_pending_handshakes, cfg.max_pending_handshakes);
        cfg.retry_above_pending = or(self.retry_above_pending, cfg.retry_above_pending);
        cfg.max_connections_per_identity = or(
            self.max_connections_per_identity,
            cfg.max_connections_per_identity,
        );
        if let Some(ms) = self.handshake_timeout_ms {
            cfg.handshake_timeout = Duration::from_millis(ms);
        }
    }
}
