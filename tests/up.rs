//! The README's main command: `quickv up` creates certificates, runs a supervised pair, restarts a
//! killed server (which re-syncs), and stops both on SIGTERM.

mod common;

use std::process::Command;

use bytes::Bytes;

use common::{connect, free_addr, signal, wait_state, Up};

#[tokio::test]
async fn quickv_up_runs_a_pair_that_survives_a_kill_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, b) = (free_addr(), free_addr());
    let mut up = Up::spawn(
        dir.path(),
        &["--primary", &p.to_string(), "--backup", &b.to_string()].map(String::from),
    );
    let mut wait_line = |needle: &str| up.wait_line(needle).expect("quickv up");
    wait_line("pair in sync");
    let certs = dir.path().join("certs");
    assert!(
        certs.join("ca.pem").exists(),
        "certificates created on first run"
    );

    let client = connect(p, &certs).await;
    client.insert("hello", "world").await.expect("insert");

    // Kill the backup behind up's back: up restarts it and it re-syncs from the primary.
    let backup_pid = Command::new("pgrep")
        .args(["-f", &format!("role backup --listen {b}")])
        .output()
        .expect("pgrep");
    let pid: u32 = String::from_utf8_lossy(&backup_pid.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("backup pid");
    signal(pid, "KILL");
    wait_line("restarting it");
    wait_state(b, &certs, "sync").await;
    let backup = connect(b, &certs).await;
    assert_eq!(
        backup.get("hello").await.expect("get"),
        Some(Bytes::from("world"))
    );

    signal(up.child.id(), "TERM");
    let status = up.child.wait().expect("wait");
    assert!(status.success(), "quickv up exit status {status:?}");
    assert!(
        servers_listening_on(p).is_empty(),
        "servers left running after up stopped"
    );
}

/// A SIGTERM that reaches `quickv up` before the pair is in sync (here: as soon as it has said
/// where the servers listen) stops both servers in order, as one sent later does: `up` exits 0
/// and leaves no server behind. Before the stop signal was registered up front, `up` met the
/// signal's default action there and died, leaving both servers (in their own process group)
/// running.
#[tokio::test]
async fn a_sigterm_before_the_pair_is_in_sync_stops_both_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, b) = (free_addr(), free_addr());
    let mut up = Up::spawn(
        dir.path(),
        &["--primary", &p.to_string(), "--backup", &b.to_string()].map(String::from),
    );
    up.wait_line("(UDP)").expect("quickv up");
    signal(up.child.id(), "TERM");
    let status = up.child.wait().expect("wait");
    let (left_p, left_b) = (servers_listening_on(p), servers_listening_on(b));
    // Never leave them behind, whatever the verdict.
    for pid in left_p.iter().chain(&left_b) {
        common::signal_quietly(*pid, "KILL");
    }
    assert!(status.success(), "quickv up exit status {status:?}");
    assert!(
        left_p.is_empty() && left_b.is_empty(),
        "servers left running after up stopped"
    );
}

/// The pids of `quickv server` processes listening on `addr` (`pgrep`; a failing `pgrep` fails
/// the test rather than reading as "none left").
fn servers_listening_on(addr: std::net::SocketAddr) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "--", &format!("server --role [a-z]+ --listen {addr}")])
        .output()
        .expect("pgrep");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "pgrep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}
