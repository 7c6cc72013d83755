//! The classic kit (`tests/classic/bin`) pointed at free ports and fresh certificates: shared by
//! `tests/classic.rs` and `tests/classic_pressure.rs`. HTTP goes through `tests/common/http.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use crate::common::http::call;
use crate::common::{bin, free_addr, free_tcp_addr, fresh_certs};

/// Longest wait for a pair to come up and sync (the tester's own default).
pub const READY_LIMIT: Duration = Duration::from_secs(20);
/// Pause between two status polls while waiting for the pair.
pub const POLL: Duration = Duration::from_millis(20);

/// The kit in `tests/classic`, pointed at free ports and fresh certificates.
pub struct Kit {
    /// Certificates for this test only.
    pub certs: tempfile::TempDir,
    /// Pid files of the wrappers.
    pub run: tempfile::TempDir,
    /// `[primary, backup]` QUIC addresses.
    pub quic: [SocketAddr; 2],
    /// `[primary, backup]` HTTP addresses.
    pub http: [SocketAddr; 2],
}

/// Index of the primary and the backup in the kit's arrays, and their wrapper flags.
pub const PRIMARY: usize = 0;
pub const BACKUP: usize = 1;
pub const FLAGS: [&str; 2] = ["-p", "-b"];

impl Kit {
    pub fn new() -> Kit {
        Kit {
            certs: fresh_certs(),
            run: tempfile::tempdir().expect("tempdir"),
            quic: [free_addr(), free_addr()],
            http: [free_tcp_addr(), free_tcp_addr()],
        }
    }

    pub fn wrapper(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/classic/bin")
            .join(name)
    }

    pub fn command(&self, name: &str, which: usize) -> Command {
        let mut command = Command::new(Kit::wrapper(name));
        command
            .arg(FLAGS[which])
            .env("QUICKV_BIN", bin())
            .env("QUICKV_CERTS", self.certs.path())
            .env("QUICKV_RUN_DIR", self.run.path())
            .env("QUICKV_PRIMARY_QUIC", self.quic[PRIMARY].to_string())
            .env("QUICKV_PRIMARY_HTTP", self.http[PRIMARY].to_string())
            .env("QUICKV_BACKUP_QUIC", self.quic[BACKUP].to_string())
            .env("QUICKV_BACKUP_HTTP", self.http[BACKUP].to_string())
            .stdin(Stdio::null());
        command
    }

    /// `Exec bin/start_server -p|-b` as the classic tester runs it: launched and left running in
    /// the background. A failed start (the process exits, e.g. "address already in use") is
    /// caught by [`Kit::wait_pair`], which watches the process while it waits for the pair.
    pub fn start(&self, which: usize) -> Child {
        // Output to a file, not a pipe nobody reads (a full pipe would stall the server).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(which))
            .expect("open the server log");
        self.command("start_server", which)
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("run bin/start_server")
    }

    /// The log of every server started with this flag (appended across restarts).
    pub fn log(&self, which: usize) -> PathBuf {
        self.run.path().join(format!("server{}.log", FLAGS[which]))
    }

    /// The end of a server's log, for failure messages.
    pub fn log_tail(&self, which: usize) -> String {
        let text = std::fs::read_to_string(self.log(which)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `Exec bin/stop_server -p|-b`: returns once the server is gone.
    pub fn stop(&self, which: usize) {
        let out = self
            .command("stop_server", which)
            .output()
            .expect("run bin/stop_server");
        assert!(
            out.status.success(),
            "bin/stop_server {}: {}",
            FLAGS[which],
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until both servers answer over HTTP and report steady sync; fails at once if a
    /// server process has exited (a failed start).
    pub async fn wait_pair(&self, procs: &mut [Child; 2]) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            for (i, child) in procs.iter_mut().enumerate() {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!(
                        "the server started with {} exited: {status}; log:\n{}",
                        FLAGS[i],
                        self.log_tail(i)
                    );
                }
            }
            let mut synced = 0;
            for http in self.http {
                if let Ok((200, body)) = call(http, Method::GET, "/kvman/status", "").await {
                    let doc: Value = serde_json::from_str(&body).expect("status is JSON");
                    if doc["state"] == "sync" && doc["link_up"] != false {
                        synced += 1;
                    }
                }
            }
            if synced == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "the pair did not sync in time");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Kills whatever is left (the wrappers' servers are the children) and reaps it.
pub fn reap(procs: &mut [Child; 2]) {
    for child in procs.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A request that must be answered 200 with JSON.
pub async fn json(addr: SocketAddr, method: Method, path: &str, form: &str) -> Value {
    let (status, body) = call(addr, method, path, form)
        .await
        .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
    assert_eq!(status, 200, "{path} on {addr}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// The final check of a classic script: the dump of each server equals the model.
pub async fn assert_dumps(kit: &Kit, model: &BTreeMap<String, String>, when: &str) {
    let want: serde_json::Map<String, Value> = model
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for (i, http) in kit.http.iter().enumerate() {
        let dump = json(*http, Method::GET, "/kvman/dump", "").await;
        assert_eq!(
            dump,
            Value::Object(want.clone()),
            "{when}: dump of the server started with {}",
            FLAGS[i]
        );
    }
}
