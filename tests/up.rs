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
    let left = Command::new("pgrep")
        .args(["-f", &format!("--listen {p}")])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "servers left running after up stopped"
    );
}
