//! `quickv up`: a local primary + backup pair as two supervised child processes.
//!
//! Each server is the same binary run as `quickv server --role …`. `up` waits until both report
//! `sync`, prints how to use the pair, restarts a server that dies (it re-syncs from its peer on its
//! own), and on Ctrl-C/SIGTERM stops both gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::supervisor::{in_sync, stop_signal, wait_status, ServerCommand, ServerProcess};
use quickv_client::{ClientConfig, Status};

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
/// How long each server gets to stop gracefully after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs the pair until Ctrl-C or SIGTERM.
pub async fn run_pair(pair: Pair) -> anyhow::Result<()> {
    // Registered before anything is spawned or announced: a SIGTERM sent as soon as we say
    // "pair in sync" (or earlier) stops both servers in order instead of killing `up` alone.
    let stop = stop_signal();
    tokio::pin!(stop);
    let exe = std::env::current_exe().context("cannot find the quickv binary")?;
    let command = |role: &str| -> ServerCommand {
        let (listen, peer, http) = match role {
            "primary" => (pair.primary, pair.backup, pair.http.map(|[p, _]| p)),
            _ => (pair.backup, pair.primary, pair.http.map(|[_, b]| b)),
        };
        let command = ServerCommand::new(&exe, role, listen, &pair.certs)
            .peer(peer)
            .threads(pair.threads)
            // Own process group: the terminal's Ctrl-C reaches only `up`, which then stops both
            // in order instead of racing their exits against the restart logic.
            .own_process_group();
        match http {
            Some(http) => command.http(http),
            None => command,
        }
    };
    let commands = [command("primary"), command("backup")];
    let mut servers = [commands[0].spawn()?, commands[1].spawn()?];
    say!(
        "primary on {} (UDP), backup on {} (UDP); certificates in {}",
        pair.primary,
        pair.backup,
        pair.certs.display()
    );
    if let Some([primary, backup]) = pair.http {
        say!("HTTP gateways: primary http://{primary}, backup http://{backup}");
    }
    let synced = tokio::select! {
        synced = wait_for_sync(&pair, &servers) => Some(synced),
        _ = &mut stop => None,
    };
    match synced {
        None => return stop_both(&servers).await,
        Some(Ok(statuses)) => {
            for status in &statuses {
                say!(
                    "  {} {}: {}, {} keys",
                    status.role,
                    status.listen,
                    status.state,
                    status.keys
                );
            }
            say!("pair in sync. Try:");
            let mut cli = String::from("quickv");
            if pair.primary.to_string() != quickv_server::config::DEFAULT_PRIMARY_ADDR {
                cli.push_str(&format!(" --server {}", pair.primary));
            }
            if pair.certs != std::path::Path::new(quickv_server::config::DEFAULT_CERTS_DIR) {
                cli.push_str(&format!(" --certs {}", pair.certs.display()));
            }
            say!("  {cli} insert hello world && {cli} get hello && {cli} status");
            say!("Ctrl-C stops both servers.");
        }
        Some(Err(e)) => say!("the pair is not in sync yet ({e}); see the servers' logs above"),
    }
    loop {
        let [primary, backup] = &servers;
        let died = tokio::select! {
            status = primary.exited() => (0, status),
            status = backup.exited() => (1, status),
            _ = &mut stop => break,
        };
        let (i, status) = died;
        let (role, peer) = if i == 0 {
            ("primary", "backup")
        } else {
            ("backup", "primary")
        };
        say!(
            "{role} exited ({}); restarting it - it will re-sync from the {peer}",
            describe(status)
        );
        servers[i] = commands[i].spawn()?;
    }
    stop_both(&servers).await
}

/// The graceful stop of the pair: SIGTERM to both at once, each killed if it outlasts STOP_WAIT.
async fn stop_both(servers: &[ServerProcess; 2]) -> anyhow::Result<()> {
    say!("stopping both servers");
    let [primary, backup] = servers;
    // SIGTERM to both at once (the graceful stop), each killed if it outlasts STOP_WAIT.
    let (p, b) = tokio::join!(primary.stop(STOP_WAIT), backup.stop(STOP_WAIT));
    for (role, stopped) in [("primary", p), ("backup", b)] {
        if !stopped.is_clean() {
            say!("the {role} did not stop cleanly: {stopped}");
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

/// Waits until both servers say they listen, then polls both statuses until both report `sync`;
/// returns both status documents.
async fn wait_for_sync(pair: &Pair, servers: &[ServerProcess; 2]) -> anyhow::Result<Vec<Status>> {
    let deadline = tokio::time::Instant::now() + SYNC_WAIT;
    for server in servers {
        server.ready(SYNC_WAIT).await?;
    }
    let config = ClientConfig::new(&pair.certs);
    let mut statuses = Vec::new();
    for addr in [pair.primary, pair.backup] {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        statuses.push(wait_status(&addr.to_string(), &config, left, in_sync).await?);
    }
    Ok(statuses)
}
