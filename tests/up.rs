//! The README's main command: `quickv up` creates certificates, runs a supervised pair, restarts a
//! killed server (which re-syncs), and stops both on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;

use common::{bin, connect, free_addr, signal, wait_state};

#[tokio::test]
async fn quickv_up_runs_a_pair_that_survives_a_kill_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, b) = (free_addr(), free_addr());
    let mut up = Command::new(bin())
        .args([
            "up",
            "--primary",
            &p.to_string(),
            "--backup",
            &b.to_string(),
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn quickv up");
    let stdout = up.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_line = |needle: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("quickv up went quiet");
        if line.contains(needle) {
            return line;
        }
    };
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

    signal(up.id(), "TERM");
    let status = up.wait().expect("wait");
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
