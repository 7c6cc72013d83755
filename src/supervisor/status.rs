//! Waiting on a server's `status`, and the stop signal servers and `up` wait on.

use std::time::{Duration, Instant};

use quickv_client::{Client, ClientConfig, Status};

use super::SupervisorError;

/// Pause between two status polls in [`wait_status`].
const STATUS_POLL: Duration = Duration::from_millis(25);
/// How long one status poll may take (connect or answer) before it counts as no answer.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(2_000);

/// Polls `addr`'s status until `want` holds, at most `limit`; returns that status. One
/// connection is reused while it works; a failed poll reconnects.
pub async fn wait_status(
    addr: &str,
    config: &ClientConfig,
    limit: Duration,
    want: impl Fn(&Status) -> bool,
) -> Result<Status, SupervisorError> {
    let deadline = Instant::now() + limit;
    let mut config = config.clone();
    config.connect_timeout = config.connect_timeout.min(STATUS_PROBE_TIMEOUT);
    let mut last = String::from("nothing (no connection)");
    let mut client: Option<Client> = None;
    while Instant::now() < deadline {
        if client.is_none() {
            match Client::connect(addr, &config).await {
                Ok(c) => client = Some(c),
                Err(e) => last = format!("no connection ({e})"),
            }
        }
        if let Some(c) = &client {
            match tokio::time::timeout(STATUS_PROBE_TIMEOUT, c.status()).await {
                Ok(Ok(status)) if want(&status) => {
                    c.close().await;
                    return Ok(status);
                }
                Ok(Ok(status)) => {
                    last = serde_json::to_string(&status).unwrap_or_else(|e| e.to_string())
                }
                Ok(Err(e)) => {
                    last = format!("no status ({e})");
                    client = None;
                }
                Err(_) => {
                    last = "no status in time".to_string();
                    client = None;
                }
            }
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    if let Some(c) = client {
        c.close().await;
    }
    Err(SupervisorError::StatusTimeout {
        addr: addr.to_string(),
        limit,
        last,
    })
}

/// Whether a status shows a server in steady replication with its link up.
pub fn in_sync(status: &Status) -> bool {
    status.state == "sync" && status.link_up() != Some(false)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: what a server and `quickv up` stop on.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
