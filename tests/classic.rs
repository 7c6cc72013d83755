//! The classic harness, the way its users run it: the pair started and stopped through the
//! wrappers in `tests/classic/bin` (`start_server -p|-b` runs a server in the foreground, started
//! "Exec style": launched, never waited for), every operation over the HTTP gateway, each script
//! ended with `/kvman/shutdown` on both servers and the next script's servers started at once, the
//! final dumps of both servers compared with a model, and the 2000-client pressure run.
//!
//! Ports are free ones handed to the wrappers through their environment variables; the wrappers'
//! defaults (4470/8088, 4471/8089) are for the original tester.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use common::{bin, free_addr, free_tcp_addr, fresh_certs};

const FORM: &str = "application/x-www-form-urlencoded";
/// Longest wait for a pair to come up and sync (the tester's own default).
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Pause between two status polls while waiting for the pair.
const POLL: Duration = Duration::from_millis(20);
/// How long the classic tester waits for an `Exec` before going on.
const EXEC_WAIT: Duration = Duration::from_secs(1);

/// The kit in `tests/classic`, pointed at free ports and fresh certificates.
struct Kit {
    /// Certificates for this test only.
    certs: tempfile::TempDir,
    /// Pid files of the wrappers.
    run: tempfile::TempDir,
    /// `[primary, backup]` QUIC addresses.
    quic: [SocketAddr; 2],
    /// `[primary, backup]` HTTP addresses.
    http: [SocketAddr; 2],
}

/// Index of the primary and the backup in the kit's arrays, and their wrapper flags.
const PRIMARY: usize = 0;
const BACKUP: usize = 1;
const FLAGS: [&str; 2] = ["-p", "-b"];

impl Kit {
    fn new() -> Kit {
        Kit {
            certs: fresh_certs(),
            run: tempfile::tempdir().expect("tempdir"),
            quic: [free_addr(), free_addr()],
            http: [free_tcp_addr(), free_tcp_addr()],
        }
    }

    fn wrapper(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/classic/bin")
            .join(name)
    }

    fn command(&self, name: &str, which: usize) -> Command {
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

    /// `Exec bin/start_server -p|-b` as the classic tester runs it: launched, waited for at
    /// most a second; still running is a good start, exited is a failed one.
    fn start(&self, which: usize) -> Child {
        // Output to a file, not a pipe nobody reads (a full pipe would stall the server).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(which))
            .expect("open the server log");
        let mut child = self
            .command("start_server", which)
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("run bin/start_server");
        let deadline = Instant::now() + EXEC_WAIT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "bin/start_server {} failed within a second: {status}; log:\n{}",
                    FLAGS[which],
                    self.log_tail(which)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    /// The log of every server started with this flag (appended across restarts).
    fn log(&self, which: usize) -> PathBuf {
        self.run.path().join(format!("server{}.log", FLAGS[which]))
    }

    /// The end of a server's log, for failure messages.
    fn log_tail(&self, which: usize) -> String {
        let text = std::fs::read_to_string(self.log(which)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `Exec bin/stop_server -p|-b`: returns once the server is gone.
    fn stop(&self, which: usize) {
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
    async fn wait_pair(&self, procs: &mut [Child; 2]) {
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
fn reap(procs: &mut [Child; 2]) {
    for child in procs.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One HTTP/1.1 request on a fresh TCP connection: `(status, body)`, or why it failed.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    form: &str,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if !form.is_empty() {
        req = req.header(CONTENT_TYPE, FORM);
    }
    let req = req
        .body(Full::new(Bytes::from(form.to_string())))
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request that must be answered 200 with JSON.
async fn json(addr: SocketAddr, method: Method, path: &str, form: &str) -> Value {
    let (status, body) = call(addr, method, path, form)
        .await
        .unwrap_or_else(|e| panic!("{path} on {addr}: {e}"));
    assert_eq!(status, 200, "{path} on {addr}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// The final check of a classic script: the dump of each server equals the model.
async fn assert_dumps(kit: &Kit, model: &BTreeMap<String, String>, when: &str) {
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

/// The classic harness's loop, 20 times: a short script over HTTP (writes on the primary, reads
/// on both, a restart of one side between its blocks, the final dumps of both), then
/// `/kvman/shutdown` on both and, as soon as both answered, `bin/start_server -p` and `-b` for
/// the next script. Every start must succeed: a server that still held its ports after
/// answering the shutdown makes the next start fail with "address already in use".
#[tokio::test]
async fn shutdown_then_immediate_restart_twenty_times() {
    let kit = Kit::new();
    let mut procs = [kit.start(PRIMARY), kit.start(BACKUP)];
    kit.wait_pair(&mut procs).await;
    let [p, b] = kit.http;
    for round in 0..20 {
        let mut model = BTreeMap::new();
        assert_dumps(&kit, &model, &format!("round {round}, a fresh pair")).await;
        for k in 0..3 {
            let (key, value) = (format!("r{round}-k{k}"), format!("v{round}.{k}"));
            let ok = json(
                p,
                Method::POST,
                "/kv/insert",
                &format!("key={key}&value={value}"),
            )
            .await;
            assert_eq!(ok["success"], "true", "round {round}: insert {key}: {ok}");
            model.insert(key, value);
        }
        // A restart of one side between blocks (alternating), through the wrappers.
        let side = round % 2;
        kit.stop(side);
        let _ = procs[side].wait();
        procs[side] = kit.start(side);
        kit.wait_pair(&mut procs).await;
        for (key, value) in &model {
            for server in [p, b] {
                let read = json(server, Method::POST, "/kv/get", &format!("key={key}")).await;
                assert_eq!(
                    read["value"],
                    value.as_str(),
                    "round {round}: {key} on {server}"
                );
            }
        }
        assert_dumps(&kit, &model, &format!("round {round}, end of script")).await;

        // End of script: shutdown on both (alternating the order), then at once the next
        // script's servers.
        let order = if round % 2 == 0 { [p, b] } else { [b, p] };
        for server in order {
            let bye = json(server, Method::GET, "/kvman/shutdown", "").await;
            assert_eq!(
                bye["success"], "true",
                "round {round}: shutdown of {server}"
            );
        }
        let old = std::mem::replace(&mut procs, [kit.start(PRIMARY), kit.start(BACKUP)]);
        for mut child in old {
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "round {round}: a server exited with {status}"
            );
        }
        kit.wait_pair(&mut procs).await;
    }
    kit.stop(PRIMARY);
    kit.stop(BACKUP);
    reap(&mut procs);
}

/// Percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Sends `forms` to `path` on `addr`, all at once, each on its own connection; returns every
/// answer with its latency (connect included), in order.
async fn burst(
    addr: SocketAddr,
    path: &'static str,
    forms: Vec<String>,
) -> Vec<(Result<Value, String>, Duration)> {
    let tasks: Vec<_> = forms
        .into_iter()
        .map(|form| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = match call(addr, Method::POST, path, &form).await {
                    Ok((200, body)) => {
                        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
                    }
                    Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
                    Err(e) => Err(e),
                };
                (answer, sent.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}

/// The classic pressure run: 2000 concurrent clients each insert one key (about 60 bytes, value
/// about 70, form-encoded POST), then 2000 concurrent `POST /kv/get` with a form body. Every one
/// must succeed, and both servers' dumps must then hold all 2000. The latency percentiles are
/// printed (measured, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_run_2000_clients_through_the_gateway() {
    const CLIENTS: usize = 2000;
    let kit = Kit::new();
    let mut procs = [kit.start(PRIMARY), kit.start(BACKUP)];
    kit.wait_pair(&mut procs).await;
    let [p, _] = kit.http;
    let pairs: Vec<(String, String)> = (0..CLIENTS)
        .map(|i| {
            let key = format!("classic-pressure-key-{i:05}-{}", "k".repeat(33));
            let value = format!("classic-pressure-value-{i:05}-{}", "v".repeat(41));
            (key, value)
        })
        .collect();
    assert_eq!(pairs[0].0.len(), 60);
    assert_eq!(pairs[0].1.len(), 70);

    let run = async {
        let inserts = burst(
            p,
            "/kv/insert",
            pairs
                .iter()
                .map(|(k, v)| format!("key={k}&value={v}"))
                .collect(),
        )
        .await;
        let gets = burst(
            p,
            "/kv/get",
            pairs.iter().map(|(k, _)| format!("key={k}")).collect(),
        )
        .await;
        (inserts, gets)
    };
    let (inserts, gets) = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the pressure run finished in time");

    let mut failures = Vec::new();
    for ((key, _), (answer, _)) in pairs.iter().zip(&inserts) {
        match answer {
            Ok(doc) if doc["success"] == "true" => {}
            other => failures.push(format!("insert {key}: {other:?}")),
        }
    }
    for ((key, value), (answer, _)) in pairs.iter().zip(&gets) {
        match answer {
            Ok(doc) if doc["success"] == "true" && doc["value"] == value.as_str() => {}
            other => failures.push(format!("get {key}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        2 * CLIENTS,
        &failures[..failures.len().min(5)]
    );
    for (name, results) in [("insert", &inserts), ("get", &gets)] {
        let mut took: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
        took.sort();
        eprintln!(
            "pressure run, {CLIENTS} concurrent HTTP clients, {name}: p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms",
            percentile(&took, 50.0),
            percentile(&took, 99.0),
            percentile(&took, 100.0)
        );
    }
    let model: BTreeMap<String, String> = pairs.into_iter().collect();
    assert_dumps(&kit, &model, "after the pressure run").await;
    kit.stop(PRIMARY);
    kit.stop(BACKUP);
    reap(&mut procs);
}

/// `quickv up --http` (here with explicit addresses, as tests must not use the fixed defaults
/// 8088/8089) gives each child its gateway: a write on the primary's is read on the backup's.
#[tokio::test]
async fn quickv_up_gives_each_server_a_gateway() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, b) = (free_addr(), free_addr());
    let (ph, bh) = (free_tcp_addr(), free_tcp_addr());
    let mut up = Command::new(bin())
        .args([
            "up",
            "--primary",
            &p.to_string(),
            "--backup",
            &b.to_string(),
        ])
        .args([
            "--primary-http",
            &ph.to_string(),
            "--backup-http",
            &bh.to_string(),
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn quickv up");
    let stdout = up.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let outcome = async {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| format!("quickv up went quiet: {seen:?}"))?;
            seen.push(line.clone());
            if line.contains("pair in sync") {
                break;
            }
        }
        if !seen
            .iter()
            .any(|l| l.contains(&format!("http://{ph}")) && l.contains(&format!("http://{bh}")))
        {
            return Err(format!("no gateway line: {seen:?}"));
        }
        let ok = json(ph, Method::POST, "/kv/insert", "key=up&value=gateway").await;
        if ok["success"] != "true" {
            return Err(format!("insert: {ok}"));
        }
        let read = json(bh, Method::POST, "/kv/get", "key=up").await;
        if read["value"] != "gateway" {
            return Err(format!("backup read: {read}"));
        }
        Ok(())
    }
    .await;
    common::signal(up.id(), "TERM");
    let status = up.wait().expect("wait");
    outcome.expect("quickv up --http");
    assert!(status.success(), "quickv up exit status {status:?}");
}
