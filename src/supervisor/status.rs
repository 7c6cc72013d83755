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
///
/// The handlers are registered when this is *called*, not when the future is first polled: a
/// signal that arrives between the call and the first poll (a test's SIGTERM right after the
/// process said it is ready) is kept, instead of meeting the default action and killing the
/// process uncleanly. Call it before announcing readiness. Must be called inside a tokio runtime.
pub fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            // No handler could be installed: the default actions apply, and nothing else stops us.
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}
