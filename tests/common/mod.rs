//! Test harness: real `quickv` processes on free loopback ports with fresh certificates.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use quickv::client::{Client, ClientConfig};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_quickv")
}

/// A fresh certificate directory (CA, server, client), deleted with the guard.
pub fn fresh_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(bin())
        .args(["certs", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .expect("run quickv certs");
    assert!(status.success(), "quickv certs failed");
    dir
}

/// A loopback UDP address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    sock.local_addr().expect("local addr")
}

/// A running server process; SIGKILLed when dropped.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub certs: PathBuf,
}

impl ServerProc {
    /// Starts `quickv server --role ROLE --listen ADDR [extra...]` and waits until it reports that it
    /// listens (reads its stdout; no sleeping).
    pub fn start(role: &str, addr: SocketAddr, certs: &Path, extra: &[&str]) -> ServerProc {
        let mut child = Command::new(bin())
            .args([
                "server",
                "--role",
                role,
                "--listen",
                &addr.to_string(),
                "--certs",
            ])
            .arg(certs)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quickv server");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => panic!("server exited before listening: {:?}", child.wait()),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        ServerProc {
            child,
            addr,
            certs: certs.to_path_buf(),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_exit(Duration::from_secs(15))
    }

    /// Waits for the process to exit on its own, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string(), &ClientConfig::new(&self.certs))
            .await
            .expect("connect")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal by name with the `kill` command (no libc dependency in tests).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Runs the CLI against `server`; returns (exit code, stdout, stderr).
pub fn cli(server: SocketAddr, certs: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["--server", &server.to_string(), "--certs"])
        .arg(certs)
        .args(args)
        .output()
        .expect("run quickv cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
