//! Replication figures, measured on real processes over loopback QUIC:
//!
//! 1. replicated insert throughput and latency with 64 requests in flight, next to the same run
//!    against a standalone server (the price of synchronous replication, as a ratio);
//! 2. a full bootstrap: the backup is killed and restarted empty, and the primary streams N keys
//!    (16-byte keys, 100-byte values) to it; seconds and MB/s from restart to `sync`.
//!
//! `cargo bench --bench replication` (1M keys) or `cargo bench --bench replication -- --quick`
//! (100k keys). Servers are the release `quickv` binary; traffic stays on 127.0.0.1.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quickv_client::{Client, ClientConfig};

/// Requests in flight during the throughput runs.
const IN_FLIGHT: usize = 64;
/// Value size in bytes.
const VALUE_BYTES: usize = 100;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let keys: usize = if quick { 100_000 } else { 1_000_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(keys))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn server(
    role: &str,
    listen: SocketAddr,
    peer: Option<SocketAddr>,
    certs: &Path,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickv"));
    cmd.args([
        "server",
        "--role",
        role,
        "--listen",
        &listen.to_string(),
        "--certs",
    ])
    .arg(certs)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null());
    if let Some(peer) = peer {
        cmd.args(["--peer", &peer.to_string()]);
    }
    Ok(Proc(cmd.spawn()?))
}

async fn wait_state(
    addr: SocketAddr,
    certs: &Path,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(c) = Client::connect(&addr.to_string(), &ClientConfig::new(certs)).await {
            if let Ok(s) = c.status_json().await {
                if s["state"] == state || (state == "any" && s["state"].is_string()) {
                    return Ok(s);
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{addr} did not reach {state}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Inserts keys `from..to` with `IN_FLIGHT` concurrent workers; returns (ops/s, sorted latencies µs).
async fn load(client: &Client, from: usize, to: usize) -> anyhow::Result<(f64, Vec<u64>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let value = bytes::Bytes::from(vec![b'v'; VALUE_BYTES]);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next, value) = (client.clone(), next.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                client.insert(format!("key-{i:012}"), value.clone()).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut all = Vec::with_capacity(to - from);
    for w in workers {
        all.extend(w.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(((to - from) as f64 / secs, all))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(i - 1).copied().unwrap_or(0)
}

async fn run(keys: usize) -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    quickv_server::tls::generate(certs.path(), &[], false)?;
    let dir = certs.path();
    let measured = keys.min(200_000);

    // Reference: a standalone server, same client, same load.
    let solo_addr = free_addr()?;
    let solo = server("standalone", solo_addr, None, dir)?;
    wait_state(solo_addr, dir, "any").await?;
    let c = Client::connect(&solo_addr.to_string(), &ClientConfig::new(dir)).await?;
    let (solo_ops, solo_lat) = load(&c, 0, measured).await?;
    drop(solo);

    // The pair.
    let (pa, ba) = (free_addr()?, free_addr()?);
    let _primary = server("primary", pa, Some(ba), dir)?;
    let mut backup = server("backup", ba, Some(pa), dir)?;
    wait_state(pa, dir, "sync").await?;
    wait_state(ba, dir, "sync").await?;
    let c = Client::connect(&pa.to_string(), &ClientConfig::new(dir)).await?;
    let (repl_ops, repl_lat) = load(&c, 0, measured).await?;
    if keys > measured {
        load(&c, measured, keys).await?;
    }

    // Full bootstrap of every key to an empty backup.
    drop(backup);
    wait_state(pa, dir, "cold_start").await?;
    let t = Instant::now();
    backup = server("backup", ba, Some(pa), dir)?;
    let status = wait_state(ba, dir, "sync").await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        status["keys"].as_u64() == Some(keys as u64),
        "backup has {} keys",
        status["keys"]
    );
    let payload_mb = keys as f64 * (16 + VALUE_BYTES) as f64 / 1e6;
    drop(backup);

    println!("| figure | standalone | primary+backup | replicated/standalone |");
    println!("|---|---:|---:|---:|");
    println!(
        "| insert ops/s, {IN_FLIGHT} in flight, {measured} keys | {solo_ops:.0} | {repl_ops:.0} | {:.2} |",
        repl_ops / solo_ops
    );
    for p in [50.0, 99.0] {
        let (a, b) = (pct(&solo_lat, p), pct(&repl_lat, p));
        println!(
            "| insert p{p} µs | {a} | {b} | {:.2} |",
            b as f64 / a.max(1) as f64
        );
    }
    println!();
    println!(
        "full bootstrap of {keys} keys (16 B keys, {VALUE_BYTES} B values, {payload_mb:.1} MB payload) to an empty backup: {secs:.2} s from restart to sync, {:.1} MB/s",
        payload_mb / secs
    );
    Ok(())
}
