//! Test harness: real `quickv` processes on free loopback ports with fresh certificates.
#![allow(dead_code)]

pub mod http;
pub mod identity;
pub mod netlab;
pub mod peer;
pub mod prometheus;
pub mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quickv::supervisor::{self, ServerCommand, ServerProcess, Signal};
use quickv_client::{Client, ClientConfig};
use quickv_proto::{
    decode_response, encode_request, Limits, Op, Request, Response, PROTOCOL_VERSION,
};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_quickv")
}

/// A fresh certificate directory (CA, server, client), deleted with the guard.
pub fn fresh_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    supervisor::make_certs(Path::new(bin()), dir.path()).expect("quickv certs");
    dir
}

/// A loopback UDP address that was free a moment ago and that no earlier call in this test
/// process returned. The kernel may hand a just-released port out again, so two calls in a row
/// (a pair's listen and peer addresses) could otherwise name the same port.
pub fn free_addr() -> SocketAddr {
    unused_before(|| supervisor::free_udp_addrs().map(|[addr]| addr))
}

/// A loopback TCP address that was free a moment ago (for `--http`), never returned before by
/// this test process.
pub fn free_tcp_addr() -> SocketAddr {
    unused_before(|| supervisor::free_tcp_addrs().map(|[addr]| addr))
}

/// Calls `pick` until it names a port this process has not handed out yet, and records it.
fn unused_before(pick: impl Fn() -> std::io::Result<SocketAddr>) -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let addr = pick().expect("bind a loopback port");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
    panic!("1000 loopback ports in a row had been handed out before")
}

/// How long a server may take to say it listens.
const READY_WAIT: Duration = Duration::from_secs(20);

/// Reads a just-spawned server's stdout (piped) until it says it listens, then keeps draining it
/// so the child never blocks on a full pipe. For children the supervisor does not own (netlab's
/// servers in a namespace). No sleeping: the line is the event.
pub fn await_listening(child: &mut Child, what: &str) {
    let stdout = child.stdout.take().expect("stdout piped");
    if let Err(e) = supervisor::await_ready_line(stdout, READY_WAIT) {
        panic!("{what} did not start: {e}; {:?}", child.try_wait());
    }
}

/// A running server process; SIGKILLed when dropped.
pub struct ServerProc {
    /// The supervised process (`child.id()` is its pid).
    pub child: ServerProcess,
    pub addr: SocketAddr,
    pub certs: PathBuf,
}

impl ServerProc {
    /// Starts `quickv server --role ROLE --listen ADDR [extra...]` and waits until it reports that it
    /// listens (reads its stdout; no sleeping).
    pub fn start(role: &str, addr: SocketAddr, certs: &Path, extra: &[&str]) -> ServerProc {
        let child = ServerCommand::new(bin(), role, addr, certs)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .expect("spawn quickv server");
        if let Err(e) = child.ready_blocking(READY_WAIT) {
            panic!("{role} did not start: {e}");
        }
        ServerProc {
            child,
            addr,
            certs: certs.to_path_buf(),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill_blocking(Duration::from_secs(15));
    }

    /// SIGTERM, then wait for exit (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        self.child.signal(Signal::Term).expect("SIGTERM");
        self.wait_exit(Duration::from_secs(15))
    }

    /// Waits for the process to exit on its own, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.child.wait_blocking(limit) {
            Some(exit) => exit.expect("exit status"),
            None => panic!("server did not exit within {limit:?}"),
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

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`, `HUP`) to a process.
pub fn signal(pid: u32, name: &str) {
    let signal = Signal::from_name(name).unwrap_or_else(|| panic!("unknown signal {name}"));
    supervisor::signal_pid(pid, signal).unwrap_or_else(|e| panic!("kill -{name} {pid}: {e}"));
}

/// Sends a signal by name and ignores a failure (cleanup paths: the process may be gone).
/// A standalone server, and a client configured by `config` (given the certificates' directory)
/// that has stored `k → v`; with the server's `connections_total` at that point, for checking later
/// that the client carried on over the same connection.
pub async fn standalone_with_client(
    config: impl FnOnce(&Path) -> ClientConfig,
) -> (tempfile::TempDir, ServerProc, Client, u64) {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let client = Client::connect(&server.addr.to_string(), &config(certs.path()))
        .await
        .expect("connect");
    client.insert("k", "v").await.expect("insert");
    let connections = client.status().await.expect("status").connections_total;
    (certs, server, client, connections)
}

/// A process stopped with SIGSTOP, resumed with SIGCONT when this guard drops (also when a test
/// fails half-way, so no stopped server outlives its test).
pub struct Stopped(u32);

impl Stopped {
    /// Stops `pid` and returns the guard that resumes it.
    pub fn stop(pid: u32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal_quietly(self.0, "CONT");
    }
}

pub fn signal_quietly(pid: u32, name: &str) {
    if let Some(signal) = Signal::from_name(name) {
        let _ = supervisor::signal_pid(pid, signal);
    }
}

/// `quickv up` run in `dir` as a user runs it, its stdout read line by line on a thread.
pub struct Up {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
}

impl Up {
    /// Starts `quickv up ARGS` in `dir` (RUST_LOG=warn).
    pub fn spawn(dir: &Path, args: &[String]) -> Up {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(bin())
            .arg("up")
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn quickv up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Up {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle`; an error (with what was seen) after 30 s of silence.
    pub fn wait_line(&mut self, needle: &str) -> Result<String, String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| format!("quickv up went quiet: {:?}", self.seen))?;
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal_quietly(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
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

/// A primary + backup pair on free loopback ports sharing one certificate directory.
pub struct Pair {
    pub certs: tempfile::TempDir,
    pub primary_addr: SocketAddr,
    pub backup_addr: SocketAddr,
    pub primary: Option<ServerProc>,
    pub backup: Option<ServerProc>,
    /// Extra flags for both servers.
    pub extra: Vec<String>,
    /// The primary's HTTP gateway (`--http`), if the pair was started with one.
    pub primary_http: Option<SocketAddr>,
    /// The backup's HTTP gateway, if any.
    pub backup_http: Option<SocketAddr>,
}

impl Pair {
    /// Starts both servers and waits until both report `sync`.
    pub async fn start(extra: &[&str]) -> Pair {
        Pair::launch(extra, false).await
    }

    /// As [`Pair::start`], each server also serving the HTTP gateway on a free TCP port.
    pub async fn start_with_http(extra: &[&str]) -> Pair {
        Pair::launch(extra, true).await
    }

    async fn launch(extra: &[&str], http: bool) -> Pair {
        let mut pair = Pair {
            certs: fresh_certs(),
            primary_addr: free_addr(),
            backup_addr: free_addr(),
            primary: None,
            backup: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            primary_http: http.then(free_tcp_addr),
            backup_http: http.then(free_tcp_addr),
        };
        pair.start_primary();
        pair.start_backup();
        pair.wait_sync().await;
        pair
    }

    pub fn start_primary(&mut self) {
        self.primary = Some(self.start_member("primary"));
    }

    pub fn start_backup(&mut self) {
        self.backup = Some(self.start_member("backup"));
    }

    /// Starts one member of the pair with its peer, its gateway (if any) and the extra flags.
    fn start_member(&self, role: &str) -> ServerProc {
        let (addr, peer, http) = if role == "primary" {
            (self.primary_addr, self.backup_addr, self.primary_http)
        } else {
            (self.backup_addr, self.primary_addr, self.backup_http)
        };
        let peer = peer.to_string();
        let http = http.map(|a| a.to_string());
        let mut args = vec!["--peer", &peer];
        if let Some(http) = &http {
            args.extend(["--http", http]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        ServerProc::start(role, addr, self.certs.path(), &args)
    }

    pub fn kill_primary(&mut self) {
        if let Some(mut p) = self.primary.take() {
            p.kill();
        }
    }

    pub fn kill_backup(&mut self) {
        if let Some(mut b) = self.backup.take() {
            b.kill();
        }
    }

    pub async fn primary_client(&self) -> Client {
        connect(self.primary_addr, self.certs.path()).await
    }

    pub async fn backup_client(&self) -> Client {
        connect(self.backup_addr, self.certs.path()).await
    }

    /// Waits (polling status, bounded) until both servers report `sync`.
    pub async fn wait_sync(&self) {
        for addr in [self.primary_addr, self.backup_addr] {
            wait_state(addr, self.certs.path(), "sync").await;
        }
    }

    /// Both dumps and all 32 digests, which must be equal at quiescence.
    pub async fn assert_converged(&self) -> Vec<(bytes::Bytes, bytes::Bytes)> {
        let p = self.primary_client().await;
        let b = self.backup_client().await;
        let pd = p.dump().await.expect("primary dump");
        let bd = b.dump().await.expect("backup dump");
        assert_eq!(pd, bd, "primary and backup dumps differ");
        let digests = |s: quickv_client::Status| s.replication.expect("a pair's status").digests;
        let ps = digests(p.status().await.expect("status"));
        let bs = digests(b.status().await.expect("status"));
        assert_eq!(ps, bs, "bucket digests differ");
        assert_eq!(ps.len(), 32);
        pd
    }
}

/// Connects with the cluster's client certificate.
pub async fn connect(addr: SocketAddr, certs: &Path) -> Client {
    Client::connect(&addr.to_string(), &ClientConfig::new(certs))
        .await
        .expect("connect")
}

/// Polls `status` until the server reports `state`, failing after 20 s; the status it found, as
/// JSON.
pub async fn wait_state(addr: SocketAddr, certs: &Path, state: &str) -> serde_json::Value {
    let config = ClientConfig::new(certs);
    match supervisor::wait_status(&addr.to_string(), &config, READY_WAIT, |s| s.state == state)
        .await
    {
        Ok(status) => serde_json::to_value(status).expect("the status serialises"),
        Err(e) => panic!("{e}"),
    }
}

/// A raw QUIC connection to `addr` with an explicit TLS config (for tests that speak bytes).
pub async fn raw_connection(
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = endpoint
        .connect_with(cfg, addr, "localhost")
        .expect("connect")
        .await
        .expect("the TLS handshake completes (refusals come on first use)");
    (endpoint, conn)
}

/// Client-side TLS settings used by raw tests: 5 s idle timeout, 1 s keep-alive.
pub fn raw_client_config(certs: &Path, identity: quickv_net::tls::Identity) -> quinn::ClientConfig {
    quickv_server::tls::client_config(
        &quickv_net::tls::CertPaths::new(certs),
        identity,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
    .expect("client config")
}

/// Sends `requests` on a fresh stream (after a hello if `hello`) and returns the answers by id.
pub async fn exchange(
    conn: &quinn::Connection,
    hello: bool,
    requests: &[Request],
) -> Vec<Response> {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut out = BytesMut::new();
    let mut expected = requests.len();
    if hello {
        encode_request(
            &Request::new(
                u64::MAX,
                Op::Hello {
                    version: PROTOCOL_VERSION,
                },
            ),
            &mut out,
        );
        expected += 1;
    }
    for r in requests {
        encode_request(r, &mut out);
    }
    send.write_all(&out).await.expect("send");
    send.finish().expect("finish");
    let mut inbuf = BytesMut::new();
    let mut answers = Vec::new();
    let limits = Limits::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.len() < expected {
        while let Some(resp) = decode_response(&mut inbuf, &limits).expect("valid answer") {
            answers.push(resp);
        }
        if answers.len() >= expected {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, recv.read_chunk(64 * 1024, true)).await {
            Ok(Ok(Some(chunk))) => inbuf.extend_from_slice(&chunk.bytes),
            other => panic!("stream ended early: {other:?} after {answers:?}"),
        }
    }
    answers.retain(|r| r.id != u64::MAX);
    answers
}
