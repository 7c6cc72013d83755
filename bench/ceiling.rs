//! The QUIC ceiling: a raw quinn skeleton with quickv's framing and stream shape and nothing else,
//! so every quickv figure can be read next to what quinn itself costs in the same run.
//!
//! Two skeletons, each a separate server process on loopback (like quickv's servers):
//!
//! - **echo**: the client keeps `--pipeline` length-prefixed quickv frames in flight on each of
//!   `--streams` long-lived bidirectional streams of one connection; the server splits each read
//!   into whole frames and writes them back, batched per read. No store, no routing, no decoding
//!   beyond the length prefix. The ceiling of `ping` and `get`.
//! - **relay**: client → primary → backup → ack → primary → client. The primary forwards every
//!   client frame on a peer stream of one QUIC connection to the backup (one peer stream per client
//!   stream, so order is FIFO and no table is needed); the backup answers each frame with a quickv
//!   `Ok` response frame, which the primary forwards to the client. The ceiling of a replicated
//!   write.
//!
//! Same TLS as quickv (rustls with ring, TLS 1.3, mutual certificates from `quickv_server::tls`), same
//! frames (`quickv_proto::encode_request`), same runtime shape (current-thread tokio in every
//! process, like `quickv server` and `quickv bench` by default).
//!
//! ```text
//! cargo bench --bench ceiling -- [--mode echo|relay|both] [--streams 16] [--pipeline 16]
//!                                [--warmup 1s] [--duration 4s] [--value 100] [--json FILE]
//! ```
//! Prints one line per mode: requests/s, p50, p99 and p99.9 in µs. With `--json FILE` it also
//! writes those figures as a JSON array (read by `bench/compare.sh`).
//!
//! For instruction counts (`bench/ceiling-callgrind.sh`): `--requests N` sends exactly N requests
//! (spread evenly over the streams; no warm-up or duration), after which the skeleton servers exit
//! on their own once their connection closes (so a profiler wrapped around them writes its
//! output); `QUICKV_CEILING_SERVER_WRAP="valgrind --tool=callgrind ..."` starts each skeleton
//! server under that command.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;

use quickv_net::tls::{CertPaths, Identity};
use quickv_proto::{encode_request, encode_response, Op, Reply, Request, Response};
use quickv_server::tls::{self, TransportLimits};

/// Bytes of the length prefix in front of every quickv frame (big-endian `u32`).
const LEN_PREFIX: usize = 4;
/// Bytes of the tag and request id after the prefix.
const FRAME_HEADER: usize = 1 + 8;
/// Read buffer per stream, bytes (the size quickv's readers use).
const READ_CHUNK: usize = 64 * 1024;
/// Largest frame the skeleton accepts, bytes: a bad length ends the stream, never an allocation.
const MAX_FRAME: usize = 1 << 20;
/// Longest the whole bench may take beyond its configured time before it gives up.
const SLACK: Duration = Duration::from_secs(20);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(role) = flag(&args, "--serve") {
        return rt.block_on(serve(&role, &args));
    }
    let opts = Options::parse(&args)?;
    let results = rt.block_on(run(&opts))?;
    if let Some(path) = &opts.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.mode, "streams": opts.streams, "pipeline": opts.pipeline,
                    "in_flight": opts.streams * opts.pipeline, "ops_per_sec": r.ops_per_sec,
                    "p50_us": r.p50_us, "p99_us": r.p99_us, "p999_us": r.p999_us,
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The value of `--name VALUE`, if given.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The client side's settings.
struct Options {
    /// `echo`, `relay`, or both in turn.
    modes: Vec<&'static str>,
    /// Long-lived streams on the one connection.
    streams: usize,
    /// Requests in flight per stream.
    pipeline: usize,
    /// Time before recording starts.
    warmup: Duration,
    /// Recorded time.
    duration: Duration,
    /// Value bytes per request (keys are 16 bytes, like `quickv bench`).
    value: usize,
    /// Where to write the JSON figures.
    json: Option<PathBuf>,
    /// Exactly this many requests instead of a timed run (`--requests`), for instruction counts.
    requests: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let num = |name: &str, default: usize| -> anyhow::Result<usize> {
            flag(args, name).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{name} takes a number, not {v}"))
            })
        };
        let time = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            flag(args, name).map_or(Ok(default), |v| {
                quickv::bench::parse_duration(&v).map_err(|e| anyhow!("{name}: {e}"))
            })
        };
        let modes = match flag(args, "--mode").as_deref() {
            None | Some("both") => vec!["echo", "relay"],
            Some("echo") => vec!["echo"],
            Some("relay") => vec!["relay"],
            Some(other) => bail!("--mode takes echo, relay or both, not {other}"),
        };
        let opts = Options {
            modes,
            streams: num("--streams", 16)?,
            pipeline: num("--pipeline", 16)?,
            warmup: time("--warmup", Duration::from_secs(1))?,
            duration: time("--duration", Duration::from_secs(4))?,
            value: num("--value", 100)?,
            json: flag(args, "--json").map(PathBuf::from),
            requests: flag(args, "--requests")
                .map(|v| {
                    v.parse()
                        .with_context(|| format!("--requests takes a number, not {v}"))
                })
                .transpose()?,
        };
        if opts.streams == 0 || opts.pipeline == 0 || opts.streams > 512 {
            bail!("--streams must be 1..=512 and --pipeline at least 1");
        }
        if opts.value > MAX_FRAME / 2 {
            bail!("--value must be at most {} bytes", MAX_FRAME / 2);
        }
        Ok(opts)
    }
}

/// One mode's figures.
struct Figures {
    mode: &'static str,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

async fn run(opts: &Options) -> anyhow::Result<Vec<Figures>> {
    let certs = tempfile::tempdir()?;
    tls::generate(certs.path(), &[], false)?;
    let mut out = Vec::new();
    for &mode in &opts.modes {
        let mut procs = Vec::new();
        let target = if mode == "echo" {
            let addr = free_addr()?;
            procs.push(Proc::start("echo", addr, None, certs.path(), opts)?);
            addr
        } else {
            let backup = free_addr()?;
            procs.push(Proc::start(
                "relay-backup",
                backup,
                None,
                certs.path(),
                opts,
            )?);
            let primary = free_addr()?;
            procs.push(Proc::start(
                "relay-primary",
                primary,
                Some(backup),
                certs.path(),
                opts,
            )?);
            primary
        };
        let figures = drive(mode, target, certs.path(), opts).await?;
        println!(
            "ceiling {mode:<5} {}x{} in flight: {:>10.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs",
            opts.streams, opts.pipeline, figures.ops_per_sec, figures.p50_us, figures.p99_us, figures.p999_us
        );
        let _ = std::io::stdout().flush();
        out.push(figures);
        drop(procs);
    }
    Ok(out)
}

/// A free loopback UDP port, a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A skeleton server process, killed when dropped; `.1`: a counted run's server, which exits by
/// itself.
struct Proc(Child, bool);

impl Proc {
    /// Starts this same binary as `--serve ROLE` and waits for its `listening on` line.
    fn start(
        role: &str,
        listen: SocketAddr,
        peer: Option<SocketAddr>,
        certs: &Path,
        opts: &Options,
    ) -> anyhow::Result<Proc> {
        let wrap = std::env::var("QUICKV_CEILING_SERVER_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(std::env::current_exe()?);
                cmd
            }
            None => Command::new(std::env::current_exe()?),
        };
        if opts.requests.is_some() {
            cmd.arg("--exit-after-connection");
        }
        cmd.args(["--serve", role, "--listen", &listen.to_string(), "--certs"])
            .arg(certs)
            .stdout(Stdio::piped());
        if let Some(peer) = peer {
            cmd.args(["--peer", &peer.to_string()]);
        }
        let mut child = cmd.spawn().context("cannot start a skeleton server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => bail!("skeleton {role} exited before listening"),
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Proc(child, opts.requests.is_some()))
    }
}

impl Drop for Proc {
    /// Kills the skeleton, or, after a counted run (its server exits by itself once its
    /// connection closes, so that a wrapping profiler writes its output), waits for it a while
    /// first.
    fn drop(&mut self) {
        if self.1 {
            let until = Instant::now() + SLACK * 3;
            while Instant::now() < until {
                match self.0.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn transport() -> TransportLimits {
    TransportLimits {
        max_streams: 1024,
        idle_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(1),
    }
}

/// Dials `addr` presenting `identity`.
async fn dial(
    addr: SocketAddr,
    certs: &Path,
    identity: Identity,
) -> anyhow::Result<quinn::Connection> {
    let cfg = tls::client_config(
        &CertPaths::new(certs),
        identity,
        Duration::from_secs(10),
        Duration::from_secs(1),
    )?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint.connect(addr, "localhost")?.await?)
}

// ------------------------------------------------------------------------------------------------
// Servers

async fn serve(role: &str, args: &[String]) -> anyhow::Result<()> {
    let listen: SocketAddr = flag(args, "--listen").context("--listen")?.parse()?;
    let certs = PathBuf::from(flag(args, "--certs").context("--certs")?);
    let cfg = tls::server_config(&CertPaths::new(&certs), transport())?;
    let endpoint = quinn::Endpoint::server(cfg, listen)?;
    let peer = match role {
        "relay-primary" => {
            let backup: SocketAddr = flag(args, "--peer").context("--peer")?.parse()?;
            Some(dial(backup, &certs, Identity::Peer).await?)
        }
        "echo" | "relay-backup" => None,
        other => bail!("unknown skeleton role {other}"),
    };
    let exit_after = args.iter().any(|a| a == "--exit-after-connection");
    println!("skeleton {role}: listening on {listen}");
    let _ = std::io::stdout().flush();
    while let Some(incoming) = endpoint.accept().await {
        let peer = peer.clone();
        let backup_acks = role == "relay-backup";
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            if exit_after {
                // A counted run: the process ends with its one connection, cleanly, so that a
                // wrapping profiler writes its output.
                let closing = conn.clone();
                tokio::spawn(async move {
                    closing.closed().await;
                    std::process::exit(0);
                });
            }
            while let Ok((send, recv)) = conn.accept_bi().await {
                match &peer {
                    Some(peer) => {
                        let peer = peer.clone();
                        tokio::spawn(async move {
                            if let Ok((psend, precv)) = peer.open_bi().await {
                                tokio::spawn(pipe(recv, psend, Forward::Frames));
                                pipe(precv, send, Forward::Frames).await;
                            }
                        });
                    }
                    None if backup_acks => {
                        tokio::spawn(pipe(recv, send, Forward::Ack));
                    }
                    None => {
                        tokio::spawn(pipe(recv, send, Forward::Frames));
                    }
                }
            }
        });
    }
    Ok(())
}

/// What a pipe writes for each whole frame it reads.
#[derive(Clone, Copy)]
enum Forward {
    /// The bytes themselves, as they came (echo, and both directions of the relay primary).
    Frames,
    /// A quickv `Ok` response carrying each frame's request id (the relay backup).
    Ack,
}

/// Chunks taken from a stream per wake-up: what quinn has buffered, up to this many pieces.
const CHUNKS_PER_READ: usize = 32;

/// Reads `recv` and writes what `forward` says to `send`, one write per wake-up: everything the
/// stream has buffered is taken at once (`read_chunks`, no copy), walked frame by frame (the
/// length prefix is checked, and for `Ack` the id read), and passed on without a copy (`Frames`:
/// the very chunks) or answered (`Ack`: one encoded `Ok` per frame into one buffer). Ends quietly
/// when either side ends or a length prefix is one no quickv frame has.
async fn pipe(mut recv: quinn::RecvStream, mut send: quinn::SendStream, forward: Forward) {
    let mut chunks: [Bytes; CHUNKS_PER_READ] = std::array::from_fn(|_| Bytes::new());
    let mut walk = FrameWalk::default();
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let n = match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => return,
        };
        let got = &mut chunks[..n];
        let mut ids = 0usize;
        for chunk in got.iter() {
            let walked = walk.feed(chunk, |id| {
                if let Forward::Ack = forward {
                    encode_response(
                        &Response {
                            id,
                            reply: Reply::Ok,
                        },
                        &mut out,
                    );
                }
                ids += 1;
            });
            if walked.is_err() {
                return;
            }
        }
        let written = match forward {
            Forward::Frames => send.write_all_chunks(got).await,
            Forward::Ack if ids == 0 => Ok(()),
            Forward::Ack => {
                let mut answers = [out.split().freeze()];
                send.write_all_chunks(&mut answers).await
            }
        };
        if written.is_err() {
            return;
        }
        if out.capacity() < READ_CHUNK / 4 {
            out.reserve(READ_CHUNK);
        }
    }
}

/// Walks a byte stream of quickv frames as it arrives in pieces, without buffering it: it keeps
/// only the first bytes of the frame in progress (prefix, tag, id) and how much of its body is
/// left to skip.
#[derive(Default)]
struct FrameWalk {
    /// The frame's prefix, tag and request id, as far as they have arrived.
    head: [u8; LEN_PREFIX + FRAME_HEADER],
    /// Bytes of `head` filled.
    have: usize,
    /// Body bytes of the current frame still to skip (after its head).
    left: usize,
}

impl FrameWalk {
    /// Feeds the next piece of the stream; calls `frame(id)` for each frame whose head is
    /// complete. `Err` on a length no quickv frame has.
    fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(u64)) -> Result<(), ()> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.head.len() - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == self.head.len() {
                let [a, b, c, d, _, id @ ..] = self.head;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if !(FRAME_HEADER..=MAX_FRAME).contains(&len) {
                    return Err(());
                }
                frame(u64::from_be_bytes(id));
                self.left = len - FRAME_HEADER;
                self.have = 0;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Client

/// Runs the closed loop: `streams` tasks, each keeping `pipeline` requests in flight; answers are
/// FIFO per stream in both skeletons, so a queue of send times is the whole bookkeeping.
async fn drive(
    mode: &'static str,
    target: SocketAddr,
    certs: &Path,
    opts: &Options,
) -> anyhow::Result<Figures> {
    let conn = dial(target, certs, Identity::Client).await?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        60_000_000_000,
        3,
    )?));
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..opts.streams {
        let (send, recv) = conn.open_bi().await?;
        let ctx = StreamCtx {
            stream: s,
            pipeline: opts.pipeline,
            value: Bytes::from(vec![b'v'; opts.value]),
            quota: opts
                .requests
                .map(|n| (n / opts.streams + usize::from(s < n % opts.streams)) as u64),
            hist: hist.clone(),
            recording: recording.clone(),
            stop: stop.clone(),
        };
        tasks.push(tokio::spawn(ctx.run(send, recv)));
    }
    let started;
    let deadline;
    // A timed run's recorded span ends when it stops recording (before the drain).
    let mut timed = None;
    if opts.requests.is_some() {
        // A counted run: every request is recorded, and each stream stops at its quota.
        recording.store(true, Ordering::Relaxed);
        started = Instant::now();
        deadline = tokio::time::Instant::now() + SLACK * 30;
    } else {
        tokio::time::sleep(opts.warmup).await;
        recording.store(true, Ordering::Relaxed);
        started = Instant::now();
        tokio::time::sleep(opts.duration).await;
        recording.store(false, Ordering::Relaxed);
        timed = Some(started.elapsed());
        stop.store(true, Ordering::Relaxed);
        deadline = tokio::time::Instant::now() + SLACK;
    }
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("{mode}: a stream failed: {e}"),
            Ok(Err(e)) => bail!("{mode}: a stream task panicked: {e}"),
            Err(_) => bail!("{mode}: a stream did not finish in time"),
        }
    }
    let elapsed = timed.unwrap_or_else(|| started.elapsed());
    conn.close(0u32.into(), b"done");
    let h = hist
        .lock()
        .map_err(|_| anyhow!("histogram lock poisoned"))?;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Figures {
        mode,
        ops_per_sec: h.len() as f64 / elapsed.as_secs_f64(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
    })
}

/// One client stream's closed loop.
struct StreamCtx {
    stream: usize,
    pipeline: usize,
    value: Bytes,
    /// Requests this stream sends in a counted run (`--requests`); `None`: until told to stop.
    quota: Option<u64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    recording: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl StreamCtx {
    async fn run(
        self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> anyhow::Result<()> {
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut sent: VecDeque<Instant> = VecDeque::with_capacity(self.pipeline);
        let template = self.template();
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        let mut chunks: [Bytes; CHUNKS_PER_READ] = std::array::from_fn(|_| Bytes::new());
        let mut walk = FrameWalk::default();
        let mut seq = 0u64;
        let more = |seq: u64| self.quota.is_none_or(|q| seq < q);
        for _ in 0..self.pipeline {
            if more(seq) {
                push(&template, &mut out, &mut seq, &mut sent);
            }
        }
        send.write_chunk(out.split().freeze()).await?;
        while !sent.is_empty() {
            let Some(n) = recv.read_chunks(&mut chunks).await? else {
                bail!("the server closed the stream");
            };
            let now = Instant::now();
            let recording = self.recording.load(Ordering::Relaxed);
            let stopping = self.stop.load(Ordering::Relaxed);
            let mut answered = 0usize;
            for chunk in &chunks[..n] {
                walk.feed(chunk, |_| answered += 1)
                    .map_err(|()| anyhow!("malformed answer frame"))?;
            }
            for _ in 0..answered {
                let at = sent.pop_front().context("an answer nobody asked for")?;
                if recording {
                    local.saturating_record(now.duration_since(at).as_nanos() as u64);
                }
                if !stopping && more(seq) {
                    push(&template, &mut out, &mut seq, &mut sent);
                }
            }
            if !out.is_empty() {
                send.write_chunk(out.split().freeze()).await?;
                if out.capacity() < READ_CHUNK / 4 {
                    out.reserve(READ_CHUNK);
                }
            }
        }
        let _ = send.finish();
        self.hist
            .lock()
            .map_err(|_| anyhow!("histogram lock poisoned"))?
            .add(&local)
            .map_err(|e| anyhow!("histogram: {e}"))?;
        Ok(())
    }

    /// This stream's request frame, encoded once: a quickv INSERT of a 16-byte key and the value;
    /// each request is a copy with its own id.
    fn template(&self) -> Bytes {
        let mut frame = BytesMut::new();
        let req = Request {
            id: 0,
            op: Op::Insert {
                key: Bytes::from(format!("k{:04}-{:010}", self.stream % 10_000, 0)),
                value: self.value.clone(),
            },
            session: None,
        };
        encode_request(&req, &mut frame);
        frame.freeze()
    }
}

/// Appends a copy of `template` with request id `seq` to `out` and notes when it was sent.
fn push(template: &[u8], out: &mut BytesMut, seq: &mut u64, sent: &mut VecDeque<Instant>) {
    let at = out.len();
    out.extend_from_slice(template);
    out[at + LEN_PREFIX + 1..at + LEN_PREFIX + FRAME_HEADER].copy_from_slice(&seq.to_be_bytes());
    sent.push_back(Instant::now());
    *seq += 1;
}
