//! `quickv up`: a local primary + backup pair as two supervised child processes.
//!
//! Each server is the same binary run as `quickv server --role …`. `up` waits until both report
//! `sync`, prints how to use the pair, restarts a server that dies (it re-syncs from its peer on its
//! own), and on Ctrl-C/SIGTERM stops both gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::client::{Client, ClientConfig};

/// What `up` runs.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The primary's address.
    pub primary: SocketAddr,
    /// The backup's address.
    pub backup: SocketAddr,
    /// Certificate directory (created before).
    pub certs: PathBuf,
    /// Runtime threads per server.
    pub threads: usize,
    /// `[primary, backup]` HTTP gateway addresses, when asked for (`quickv up --http`).
    pub http: Option<[SocketAddr; 2]>,
}

/// The primary's gateway address under `quickv up --http` (the classic API's).
pub const DEFAULT_PRIMARY_HTTP: &str = "127.0.0.1:8088";
/// The backup's gateway address under `quickv up --http`.
pub const DEFAULT_BACKUP_HTTP: &str = "127.0.0.1:8089";

/// How long `up` waits for the pair to reach sync before saying so.
const SYNC_WAIT: Duration = Duration::from_secs(20);
/// Polling interval of the status check while waiting for sync.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// Runs the pair until Ctrl-C or SIGTERM.
pub async fn run_pair(pair: Pair) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the quickv binary")?;
    let spawn = |role: &str| -> anyhow::Result<Child> {
        let (listen, peer, http) = match role {
            "primary" => (pair.primary, pair.backup, pair.http.map(|[p, _]| p)),
            _ => (pair.backup, pair.primary, pair.http.map(|[_, b]| b)),
        };
        let mut command = Command::new(&exe);
        command.args(["server", "--role", role, "--listen", &listen.to_string()]);
        if let Some(http) = http {
            command.args(["--http", &http.to_string()]);
        }
        command
            .args([
                "--peer",
                &peer.to_string(),
                "--threads",
                &pair.threads.to_string(),
            ])
            .arg("--certs")
            .arg(&pair.certs)
            .stdout(Stdio::null())
            // Own process group: the terminal's Ctrl-C reaches only `up`, which then stops both in
            // order instead of racing their exits against the restart logic.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {role}"))
    };
    let mut primary = spawn("primary")?;
    let mut backup = spawn("backup")?;
    say!(
        "primary on {} (UDP), backup on {} (UDP); certificates in {}",
        pair.primary,
        pair.backup,
        pair.certs.display()
    );
    if let Some([primary, backup]) = pair.http {
        say!("HTTP gateways: primary http://{primary}, backup http://{backup}");
    }
    match wait_for_sync(&pair).await {
        Ok(statuses) => {
            for status in &statuses {
                say!(
                    "  {} {}: {}, {} keys",
                    status["role"].as_str().unwrap_or("?"),
                    status["listen"].as_str().unwrap_or("?"),
                    status["state"].as_str().unwrap_or("?"),
                    status["keys"]
                );
            }
            say!("pair in sync. Try:");
            let mut cli = String::from("quickv");
            if pair.primary.to_string() != crate::config::DEFAULT_PRIMARY_ADDR {
                cli.push_str(&format!(" --server {}", pair.primary));
            }
            if pair.certs != std::path::Path::new(crate::config::DEFAULT_CERTS_DIR) {
                cli.push_str(&format!(" --certs {}", pair.certs.display()));
            }
            say!("  {cli} insert hello world && {cli} get hello && {cli} status");
            say!("Ctrl-C stops both servers.");
        }
        Err(e) => say!("the pair is not in sync yet ({e}); see the servers' logs above"),
    }
    loop {
        tokio::select! {
            status = primary.wait() => {
                say!("primary exited ({}); restarting it - it will re-sync from the backup", describe(status));
                primary = spawn("primary")?;
            }
            status = backup.wait() => {
                say!("backup exited ({}); restarting it - it will re-sync from the primary", describe(status));
                backup = spawn("backup")?;
            }
            _ = crate::cli::stop_signal() => break,
        }
    }
    say!("stopping both servers");
    for child in [&mut primary, &mut backup] {
        if let Some(pid) = child.id() {
            // SIGTERM asks for the graceful stop.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for child in [&mut primary, &mut backup] {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Ok(())
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Polls both servers' status until both report `sync`; returns both status documents.
async fn wait_for_sync(pair: &Pair) -> anyhow::Result<Vec<serde_json::Value>> {
    let config = ClientConfig::new(&pair.certs);
    let deadline = tokio::time::Instant::now() + SYNC_WAIT;
    loop {
        let mut statuses = Vec::new();
        for addr in [pair.primary, pair.backup] {
            if let Ok(client) = Client::connect(&addr.to_string(), &config).await {
                if let Ok(status) = client.status_json().await {
                    statuses.push(status);
                }
                client.close().await;
            }
        }
        if statuses.len() == 2 && statuses.iter().all(|s| s["state"] == "sync") {
            return Ok(statuses);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no sync within {SYNC_WAIT:?}"
        );
        tokio::time::sleep(STATUS_POLL).await;
    }
}
