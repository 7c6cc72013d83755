//! The `quickv` command line: argument parsing and one library call per subcommand.
//!
//! Exit status: 0 on success; 1 when the server refused the operation or could not confirm it
//! (exists, not found, unavailable, indeterminate), with one line on stderr saying why, and when
//! a `quickv test` script failed; 2 on usage, connection or TLS errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::bench;
use crate::client::{Client, ClientConfig, ClientError};
use crate::config::{self, FileConfig, Role, ServerConfig};
use crate::pki;
use crate::protocol::Limits;
use crate::server::Server;
use crate::tester::{self, PairSpec, ParseMode, RunOptions, Script};
use crate::tls;

/// quickv: an in-memory key-value server with synchronous primary/backup replication over QUIC.
#[derive(Debug, Parser)]
#[command(name = "quickv", version, about, propagate_version = true)]
pub struct Cli {
    /// Server to talk to (client commands).
    #[arg(long, global = true, env = "QUICKV_SERVER", default_value = config::DEFAULT_PRIMARY_ADDR)]
    server: String,
    /// Certificate directory (ca.pem, client.pem/key; server.pem/key for servers).
    #[arg(long, global = true, env = "QUICKV_CERTS", default_value = config::DEFAULT_CERTS_DIR)]
    certs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job locally: create certs/ if absent, start a primary and a backup, until Ctrl-C.
    Up(UpArgs),
    /// Run one server.
    Server(ServerArgs),
    /// Write a CA, a server/peer certificate and an admin client certificate (PEM) into --dir;
    /// `client`, `revoke` and `renew` manage identities (docs/security.md).
    Certs(CertsArgs),
    /// Insert a new key (fails if it exists). VALUE `-` reads the value from stdin.
    Insert(WriteArgs),
    /// Replace the value of an existing key (fails if absent). VALUE `-` reads it from stdin.
    Update(WriteArgs),
    /// Delete a key and print its old value.
    Delete(ReadArgs),
    /// Print the value of a key.
    Get(ReadArgs),
    /// Print the number of keys.
    Count,
    /// Print every pair as one JSON object.
    Dump,
    /// Print the server's role, replication state and counters.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Round trip to the server; prints the time taken.
    Ping,
    /// Ask the server to stop gracefully.
    Shutdown,
    /// Run scenario scripts against a real pair and judge every answer (see docs/tester.md).
    Test(TestArgs),
    /// Load generator with HDR latency histograms (quickv, or Redis with `--features redis`);
    /// `bench plot` draws percentile curves, `bench table` writes comparison tables.
    Bench(BenchArgs),
}

/// `insert`/`update`: a key and a value from the command line, stdin or a file.
#[derive(Debug, Args)]
struct WriteArgs {
    /// The key: its UTF-8 bytes, or with --key-hex the bytes written in hexadecimal.
    key: String,
    /// The value; `-` reads it from stdin (any bytes, up to the 16 MiB value limit). Leave it out
    /// with --value-file.
    #[arg(required_unless_present = "value_file")]
    value: Option<String>,
    /// Read the value from this file (any bytes), instead of VALUE.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    value_file: Option<PathBuf>,
    /// KEY is hexadecimal (e.g. `00ff`): for keys that are not UTF-8.
    #[arg(long)]
    key_hex: bool,
}

/// `get`/`delete`: a key, and how to print the value.
#[derive(Debug, Args)]
struct ReadArgs {
    /// The key: its UTF-8 bytes, or with --key-hex the bytes written in hexadecimal.
    key: String,
    /// KEY is hexadecimal (e.g. `00ff`): for keys that are not UTF-8.
    #[arg(long)]
    key_hex: bool,
    /// Write the value's bytes to stdout unchanged, with no newline added.
    #[arg(long, conflicts_with = "hex")]
    raw: bool,
    /// Print the value in hexadecimal.
    #[arg(long)]
    hex: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    action: Option<BenchAction>,
    #[command(flatten)]
    run: BenchRunArgs,
}

#[derive(Debug, Subcommand)]
enum BenchAction {
    /// Draw latency-by-percentile curves (one per run) from .hgrm files or --hdr-out directories,
    /// to OUT.svg and OUT.png.
    Plot {
        /// Run directories (every .hgrm inside) or .hgrm files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output path; written as .svg and .png.
        #[arg(long)]
        out: PathBuf,
        /// Chart title.
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
        /// Logarithmic latency axis (for curves orders of magnitude apart).
        #[arg(long)]
        log_y: bool,
    },
    /// Print markdown tables comparing series of runs (report.json files from --hdr-out).
    Table {
        /// Directories holding report.json files (searched two levels deep).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The series the ratios are about (a run's --label).
        #[arg(long, default_value = "quickv")]
        base: String,
        /// The series it is compared with.
        #[arg(long, default_value = "redis")]
        other: String,
        /// More series to compare with the base, one table each (e.g. quickv-t2).
        #[arg(long = "also")]
        also: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct BenchRunArgs {
    /// quickv HOST:PORT, or a redis:// / rediss:// URL (default: the global --server). Loopback
    /// only.
    #[arg(long)]
    target: Option<String>,
    /// One operation kind: get, insert, update, delete or ping.
    #[arg(long, conflicts_with = "mix")]
    workload: Option<bench::OpKind>,
    /// Weighted mix, e.g. get=90,update=10.
    #[arg(long)]
    mix: Option<bench::Mix>,
    /// Keyspace size (preloaded for get/update/delete).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes (also the ping payload).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Key distribution: uniform or zipfian.
    #[arg(long, default_value = "uniform")]
    dist: bench::DistKind,
    /// Zipfian skew.
    #[arg(long, default_value_t = bench::dist::Zipfian::DEFAULT_THETA)]
    zipf_theta: f64,
    /// QUIC connections (Redis: see --streams).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Streams per connection (Redis: connections per --connections).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    /// Open loop at this many requests per second (latency from intended start); default closed
    /// loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "2s", value_parser = bench::parse_duration)]
    warmup: Duration,
    /// A request with no answer after this counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = bench::parse_duration)]
    timeout: Duration,
    /// Skip the preload (the keyspace is already there, e.g. from a previous run).
    #[arg(long)]
    no_preload: bool,
    /// Stop after this many requests even if --duration has not passed.
    #[arg(long, default_value_t = bench::DEFAULT_MAX_REQUESTS)]
    max_requests: u64,
    /// PRNG seed (worker w uses seed + w).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Redis: follow each write with WAIT N <--redis-wait-ms> on the same connection.
    #[arg(long)]
    redis_wait: Option<u32>,
    /// Redis: the WAIT timeout in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    redis_wait_ms: u64,
    /// Worker threads of the generator's runtime (1 = current-thread).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Progress display: auto, bar, lines or off.
    #[arg(long, default_value = "auto")]
    progress: bench::ProgressMode,
    /// Progress and .hlog interval.
    #[arg(long, default_value = "1s", value_parser = bench::parse_duration)]
    interval: Duration,
    /// Write <op>.hgrm, <op>.hlog and report.json into this directory.
    #[arg(long)]
    hdr_out: Option<PathBuf>,
    /// Name of the run in reports, plots and tables.
    #[arg(long)]
    label: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Address of the primary.
    #[arg(long, default_value = config::DEFAULT_PRIMARY_ADDR)]
    primary: SocketAddr,
    /// Address of the backup.
    #[arg(long, default_value = config::DEFAULT_BACKUP_ADDR)]
    backup: SocketAddr,
    /// Run one standalone server on --primary instead of a pair.
    #[arg(long)]
    standalone: bool,
    /// Give each server the HTTP gateway (docs/http.md): the primary on --primary-http, the
    /// backup on --backup-http (the classic API's addresses by default).
    #[arg(long)]
    http: bool,
    /// The primary's HTTP gateway address (implies --http).
    #[arg(long, value_name = "ADDR")]
    primary_http: Option<SocketAddr>,
    /// The backup's HTTP gateway address (implies --http).
    #[arg(long, value_name = "ADDR")]
    backup_http: Option<SocketAddr>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Tokio worker threads; 1 runs a current-thread runtime (fastest on small machines).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// standalone, primary or backup.
    #[arg(long, default_value = "standalone")]
    role: Role,
    /// UDP address to listen on (default: from --config, else the role's default address).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The other server of the pair (required for primary and backup unless in --config).
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// TOML file naming both servers of the pair (see docs/operations.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Largest key accepted, in bytes.
    #[arg(long)]
    max_key: Option<usize>,
    /// Largest value accepted, in bytes.
    #[arg(long)]
    max_value: Option<usize>,
    /// Concurrent client connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Concurrent streams per client connection.
    #[arg(long)]
    max_streams: Option<u32>,
    /// Idle timeout of client connections, in milliseconds.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Close a stream that holds an unfinished frame this long, in milliseconds (slowloris).
    #[arg(long)]
    frame_timeout_ms: Option<u64>,
    /// Refuse writes that add data once keys+values exceed this many bytes (reads go on).
    #[arg(long)]
    max_memory: Option<u64>,
    /// Answers of retried-write sessions kept per session and bucket (default 64); see
    /// docs/client.md, "Sessions and retries".
    #[arg(long, value_name = "N")]
    session_window: Option<usize>,
    /// Client sessions remembered per bucket, 32 buckets (default 4096).
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Forget a session's records after it wrote nothing for this many seconds (default 600).
    #[arg(long, value_name = "SECS")]
    session_idle_secs: Option<u64>,
    /// Primary: QUIC streams the 32 replication lanes share on the peer link (1-32).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32))]
    peer_streams: Option<u16>,
    /// Also serve the HTTP/JSON gateway and /metrics on this TCP address (off by default;
    /// 127.0.0.1:8080 is the usual choice; see docs/http.md).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve the HTTP gateway over TLS with the pair's certificates, requiring a client
    /// certificate from the cluster CA.
    #[arg(long, conflicts_with = "http_insecure")]
    http_tls: bool,
    /// Allow plain (unauthenticated) HTTP on a non-loopback --http address. Anyone who can reach
    /// the port can then read, write and shut the server down; logged loudly at start.
    #[arg(long)]
    http_insecure: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Script files, or directories whose `*.test` files run in name order.
    #[arg(required = true)]
    scripts: Vec<PathBuf>,
    /// Print every instruction and its answer.
    #[arg(long)]
    verbose: bool,
    /// Run against servers someone else started (--primary, --backup, and the global --certs)
    /// instead of a fresh pair per script.
    #[arg(long, requires_all = ["primary", "backup"])]
    external: bool,
    /// Address of the external primary (HOST:PORT).
    #[arg(long, requires = "external")]
    primary: Option<String>,
    /// Address of the external backup (HOST:PORT).
    #[arg(long, requires = "external")]
    backup: Option<String>,
    /// Shell command that starts an external server; {role} {addr} {host} {port} {peer} {certs}
    /// are replaced.
    #[arg(long, requires = "external")]
    start_cmd: Option<String>,
    /// Shell command that stops an external server gracefully (same placeholders).
    #[arg(long, requires = "external")]
    stop_cmd: Option<String>,
    /// Shell command that kills an external server abruptly (same placeholders).
    #[arg(long, requires = "external")]
    kill_cmd: Option<String>,
    /// Longest wait for a server to answer, for the pair to sync, or for a server to stop, in ms.
    #[arg(long, default_value_t = tester::runner::DEFAULT_SYNC_TIMEOUT_MS)]
    sync_timeout_ms: u64,
    /// How operations and the final dumps reach the servers: quic, or http (the gateway, the same
    /// judge; status polls stay on QUIC).
    #[arg(long, default_value = "quic", value_parser = ["quic", "http"])]
    via: String,
    /// The external primary's HTTP gateway (HOST:PORT), for --via http.
    #[arg(long, requires = "external")]
    primary_http: Option<String>,
    /// The external backup's HTTP gateway (HOST:PORT), for --via http.
    #[arg(long, requires = "external")]
    backup_http: Option<String>,
    /// Refuse a script with an illegal instruction (a key repeated in a block, Exec/Sleep in a
    /// block, an unknown instruction) instead of skipping the line as the classic tester did.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write into (default: the global --certs).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Extra subject alternative name for the server certificate (host name or IP); repeatable.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Overwrite existing files.
    #[arg(long, global = true)]
    force: bool,
    #[command(subcommand)]
    action: Option<CertsAction>,
}

/// What `quickv certs` does beyond creating the CA, server and default client certificates.
#[derive(Debug, Subcommand)]
enum CertsAction {
    /// Issue NAME.pem / NAME.key: a client certificate for NAME with a role, signed by the CA.
    Client {
        /// The client's name (file name and certificate common name).
        name: String,
        /// What the client may do: read (get, count, dump, status, ping), write (read + insert,
        /// update, delete) or admin (write + shutdown).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
    },
    /// Revoke NAME.pem: add it to crl.pem (servers refuse it after SIGHUP or a restart).
    Revoke {
        /// The client's name, as given to `certs client` (`client` for the default client.pem).
        name: String,
    },
    /// Re-issue server.pem / server.key with a new key and the same names (servers use it after
    /// SIGHUP).
    Renew,
}

/// Parses the command line, runs it, and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let server_like = matches!(cli.command, Command::Up(_) | Command::Server(_));
    init_tracing(if server_like { "info" } else { "warn" });
    if let Command::Test(args) = cli.command {
        return test_command(args, cli.certs);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let refused = e
                .downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_refusal);
            eprintln!("quickv: {e:#}");
            ExitCode::from(if refused { 1 } else { 2 })
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs(args) => {
            let dir = args.dir.unwrap_or(cli.certs);
            if let Some(action) = args.action {
                return certs_action(&dir, action, args.force);
            }
            let out = tls::generate(&dir, &args.sans, args.force)?;
            for p in &out.written {
                say!("wrote {}", p.display());
            }
            for p in &out.kept {
                say!("kept  {} (use --force to replace)", p.display());
            }
            Ok(())
        }
        Command::Server(args) => {
            let threads = args.runtime.threads;
            let cfg = server_config(args, cli.certs)?;
            runtime(threads)?.block_on(serve(cfg))
        }
        Command::Up(args) => {
            if tls::ensure(&cli.certs)? {
                say!("created certificates in {}", cli.certs.display());
            }
            let http = (args.http || args.primary_http.is_some() || args.backup_http.is_some())
                .then(|| -> anyhow::Result<[SocketAddr; 2]> {
                    Ok([
                        args.primary_http
                            .unwrap_or(crate::up::DEFAULT_PRIMARY_HTTP.parse()?),
                        args.backup_http
                            .unwrap_or(crate::up::DEFAULT_BACKUP_HTTP.parse()?),
                    ])
                })
                .transpose()?;
            if args.standalone {
                let mut cfg = ServerConfig::new(Role::Standalone, args.primary);
                cfg.certs_dir = cli.certs.clone();
                cfg.http = http.map(|[primary, _]| primary);
                say!(
                    "quickv standalone server on {} (UDP); stop with Ctrl-C",
                    args.primary
                );
                return runtime(args.runtime.threads)?.block_on(serve(cfg));
            }
            runtime(1)?.block_on(crate::up::run_pair(crate::up::Pair {
                primary: args.primary,
                backup: args.backup,
                certs: cli.certs,
                threads: args.runtime.threads,
                http,
            }))
        }
        Command::Bench(args) => run_bench(args, cli.server, cli.certs),
        command => {
            let rt = runtime(1)?;
            rt.block_on(client_command(&cli.server, cli.certs, command))
        }
    }
}

/// `quickv bench`: a run, a plot or a table.
fn run_bench(args: BenchArgs, server: String, certs: PathBuf) -> anyhow::Result<()> {
    match args.action {
        Some(BenchAction::Plot {
            inputs,
            out,
            title,
            log_y,
        }) => {
            let curves = bench::plot::load_curves(&inputs)?;
            let written =
                bench::plot::plot(&curves, &bench::plot::PlotOptions { out, title, log_y })?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some(BenchAction::Table {
            dirs,
            base,
            other,
            also,
        }) => {
            let rows = bench::compare::load_rows(&dirs)?;
            anyhow::ensure!(!rows.is_empty(), "no report.json found");
            print!("{}", bench::compare::tables(&rows, &base, &other, &also));
            Ok(())
        }
        None => {
            let a = args.run;
            let mut cfg = bench::BenchConfig::new(a.target.unwrap_or(server), certs);
            cfg.mix = match (a.mix, a.workload) {
                (Some(mix), _) => mix,
                (None, Some(kind)) => bench::Mix::single(kind),
                (None, None) => bench::Mix::single(bench::OpKind::Get),
            };
            cfg.keys = a.keys;
            cfg.value_size = a.value_size;
            cfg.dist = a.dist;
            cfg.zipf_theta = a.zipf_theta;
            cfg.connections = a.connections;
            cfg.streams = a.streams;
            cfg.pipeline = a.pipeline;
            cfg.rate = a.rate;
            cfg.duration = a.duration;
            cfg.warmup = a.warmup;
            cfg.timeout = a.timeout;
            cfg.preload = !a.no_preload;
            cfg.max_requests = a.max_requests;
            cfg.seed = a.seed;
            cfg.redis_wait = a.redis_wait;
            cfg.redis_wait_ms = a.redis_wait_ms;
            cfg.client_threads = a.client_threads.max(1);
            cfg.progress = a.progress;
            cfg.interval = a.interval;
            cfg.hdr_out = a.hdr_out;
            cfg.label = a.label;
            let report = runtime(cfg.client_threads)?.block_on(bench::run(&cfg))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            anyhow::ensure!(
                report.total.counts.answered() > 0,
                "no request was answered in the measured phase"
            );
            Ok(())
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

fn server_config(args: ServerArgs, certs: PathBuf) -> anyhow::Result<ServerConfig> {
    let mut cfg = match &args.config {
        Some(path) => FileConfig::load(path)?.server_config(args.role)?,
        None => {
            let default = match args.role {
                Role::Backup => config::DEFAULT_BACKUP_ADDR,
                _ => config::DEFAULT_PRIMARY_ADDR,
            };
            let mut cfg = ServerConfig::new(args.role, default.parse()?);
            cfg.certs_dir = certs;
            cfg
        }
    };
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if args.peer.is_some() {
        cfg.peer = args.peer;
    }
    if args.max_key.is_some() || args.max_value.is_some() {
        cfg.limits = Limits::new(
            args.max_key.unwrap_or(cfg.limits.max_key),
            args.max_value.unwrap_or(cfg.limits.max_value),
        );
    }
    cfg.max_connections = args.max_connections.unwrap_or(cfg.max_connections);
    cfg.max_streams = args.max_streams.unwrap_or(cfg.max_streams);
    if let Some(ms) = args.idle_timeout_ms {
        cfg.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.frame_timeout_ms {
        cfg.frame_timeout = Duration::from_millis(ms);
    }
    cfg.max_memory = args.max_memory.or(cfg.max_memory);
    cfg.sessions.window = args.session_window.unwrap_or(cfg.sessions.window).max(1);
    cfg.sessions.max_sessions = args
        .max_sessions
        .unwrap_or(cfg.sessions.max_sessions)
        .max(1);
    if let Some(secs) = args.session_idle_secs {
        cfg.sessions.max_idle = Duration::from_secs(secs.max(1));
    }
    if let Some(n) = args.peer_streams {
        cfg.peer_streams = usize::from(n);
    }
    if args.http.is_some() {
        cfg.http = args.http;
    }
    cfg.http_tls |= args.http_tls;
    cfg.http_insecure |= args.http_insecure;
    cfg.validate()?;
    Ok(cfg)
}

/// `quickv certs client|revoke|renew`.
fn certs_action(dir: &Path, action: CertsAction, force: bool) -> anyhow::Result<()> {
    let paths = tls::CertPaths::new(dir);
    match action {
        CertsAction::Client { name, role } => {
            let access: pki::Access = role.parse()?;
            let (cert, key) = pki::issue_client(&paths, &name, access, force)?;
            say!("wrote {} (role {access})", cert.display());
            say!("wrote {}", key.display());
        }
        CertsAction::Revoke { name } => {
            let r = pki::revoke(&paths, &name)?;
            let what = if r.newly {
                "revoked"
            } else {
                "already revoked"
            };
            say!(
                "{what} {name} (serial {}); {} now lists {} certificate(s)",
                r.serial,
                r.crl.display(),
                r.entries
            );
            say!("send SIGHUP to each server (or restart it) to apply, and copy crl.pem to every server host");
        }
        CertsAction::Renew => {
            let names = pki::renew_server(&paths)?;
            say!(
                "renewed {} for {}",
                paths.server_cert().display(),
                names.join(", ")
            );
            say!("copy server.pem/server.key to both servers, then send each SIGHUP");
        }
    }
    Ok(())
}

/// Runs a server until SIGINT/SIGTERM or a `shutdown` request.
async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let server = Server::bind(cfg)?;
    let addr = server.local_addr()?;
    // Printed before "listening on", which tools wait for: by then the gateway's socket is bound.
    if let Some(http) = server.http_addr() {
        let scheme = if server.node().config.http_tls {
            "https"
        } else {
            "http"
        };
        say!("quickv: http gateway on {scheme}://{http}");
    }
    say!("quickv: listening on {addr}");
    server.run(stop_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn client_command(server: &str, certs: PathBuf, command: Command) -> anyhow::Result<()> {
    // One request per invocation: one stream is enough.
    let mut config = ClientConfig::new(&certs);
    config.streams = 1;
    let client = Client::connect(server, &config)
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let shown = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match command {
        Command::Insert(args) => {
            let (key, value) = args.key_and_value(&config.limits)?;
            client.insert(key, value).await?
        }
        Command::Update(args) => {
            let (key, value) = args.key_and_value(&config.limits)?;
            client.update(key, value).await?
        }
        Command::Delete(args) => {
            let old = client.delete(parse_key(&args.key, args.key_hex)?).await?;
            print_value(&old, &args)?;
        }
        Command::Get(args) => match client.get(parse_key(&args.key, args.key_hex)?).await? {
            Some(v) => print_value(&v, &args)?,
            None => return Err(ClientError::NotFound.into()),
        },
        Command::Count => say!("{}", client.count().await?),
        Command::Dump => {
            let map: serde_json::Map<String, serde_json::Value> = client
                .dump()
                .await?
                .iter()
                .map(|(k, v)| (shown(k), serde_json::Value::String(shown(v))))
                .collect();
            say!("{}", serde_json::to_string_pretty(&map)?);
        }
        Command::Status { json } => {
            let status = client.status_json().await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        Command::Ping => {
            let started = std::time::Instant::now();
            client.ping(Bytes::from_static(b"ping")).await?;
            say!(
                "pong from {} in {:?}",
                client.server_info(),
                started.elapsed()
            );
        }
        Command::Shutdown => {
            client.shutdown().await?;
            say!("{server} is shutting down");
        }
        Command::Up(_)
        | Command::Server(_)
        | Command::Certs(_)
        | Command::Test(_)
        | Command::Bench(_) => {}
    }
    client.close().await;
    Ok(())
}

impl WriteArgs {
    /// The key and the value, wherever they come from.
    fn key_and_value(&self, limits: &Limits) -> anyhow::Result<(Bytes, Bytes)> {
        let key = parse_key(&self.key, self.key_hex)?;
        let value = match (&self.value, &self.value_file) {
            (_, Some(path)) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open the value file {}", path.display()))?;
                read_value(file, limits.max_value)
                    .with_context(|| format!("cannot read the value file {}", path.display()))?
            }
            (Some(v), None) if v == "-" => read_value(std::io::stdin().lock(), limits.max_value)
                .context("cannot read the value from stdin")?,
            (Some(v), None) => Bytes::from(v.clone().into_bytes()),
            (None, None) => anyhow::bail!("give a VALUE, `-` for stdin, or --value-file PATH"),
        };
        Ok((key, value))
    }
}

/// Reads a whole value, refusing one longer than `max` bytes without holding more than that.
fn read_value(source: impl std::io::Read, max: usize) -> anyhow::Result<Bytes> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    source.take(cap).read_to_end(&mut buf)?;
    if buf.len() > max {
        anyhow::bail!("the value is longer than {max} bytes, the largest value quickv accepts");
    }
    Ok(Bytes::from(buf))
}

/// A key from the command line: its UTF-8 bytes, or hexadecimal with `--key-hex`.
fn parse_key(key: &str, hex: bool) -> anyhow::Result<Bytes> {
    if !hex {
        return Ok(Bytes::from(key.to_owned().into_bytes()));
    }
    let digits = key.as_bytes();
    let nibble = |c: u8| -> anyhow::Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => anyhow::bail!("--key-hex: {key:?} is not hexadecimal"),
        }
    };
    let bytes = digits
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Ok((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => anyhow::bail!("--key-hex: {key:?} has an odd number of hex digits"),
        })
        .collect::<anyhow::Result<Vec<u8>>>()?;
    Ok(Bytes::from(bytes))
}

/// Prints a value as asked: raw bytes, hexadecimal, or text with a newline (a value that is not
/// UTF-8 is then shown with replacement characters, and stderr says so).
fn print_value(value: &Bytes, args: &ReadArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if args.raw {
        out.write_all(value)?;
    } else if args.hex {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "{hex}")?;
    } else {
        if std::str::from_utf8(value).is_err() {
            eprintln!("quickv: the value is not UTF-8; shown lossily (use --raw or --hex)");
        }
        out.write_all(String::from_utf8_lossy(value).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `quickv test`: exit status 0 only if every script passed, 1 if one failed, 2 if the run itself
/// could not be set up (a directory that cannot be listed, no runtime).
fn test_command(args: TestArgs, certs: PathBuf) -> ExitCode {
    match runtime(1).and_then(|rt| rt.block_on(test(args, certs))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quickv: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every script, printing one verdict per script and a final count.
async fn test(args: TestArgs, certs: PathBuf) -> anyhow::Result<ExitCode> {
    let pair = if args.external {
        let (Some(primary), Some(backup)) = (args.primary, args.backup) else {
            anyhow::bail!("--external needs --primary and --backup");
        };
        PairSpec::External(tester::External {
            primary,
            backup,
            certs,
            start_cmd: args.start_cmd,
            stop_cmd: args.stop_cmd,
            kill_cmd: args.kill_cmd,
            primary_http: args.primary_http,
            backup_http: args.backup_http,
        })
    } else {
        let binary = std::env::current_exe().context("cannot find the quickv executable")?;
        PairSpec::Managed { binary }
    };
    let options = RunOptions {
        pair,
        sync_timeout: Duration::from_millis(args.sync_timeout_ms),
        verbose: args.verbose,
        via: if args.via == "http" {
            tester::Via::Http
        } else {
            tester::Via::Quic
        },
    };
    let mode = if args.strict {
        ParseMode::Strict
    } else {
        ParseMode::Classic
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in script_paths(&args.scripts)? {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut skipped = Vec::new();
        let verdict = match Script::load_with(&path, mode) {
            Err(e) => Err(vec![e.to_string()]),
            Ok(script) => {
                let report = tester::run(&script, &options).await;
                for line in &report.transcript {
                    println!("{line}");
                }
                skipped = report
                    .illegal
                    .iter()
                    .map(|e| {
                        format!(
                            "line {}: illegal instruction, skipped: {}",
                            e.line, e.message
                        )
                    })
                    .collect();
                if report.passed() {
                    Ok(format!(
                        "PASS {name} ({} ops, {:.1} s)",
                        report.ops,
                        report.elapsed.as_secs_f64()
                    ))
                } else {
                    let mut lines: Vec<String> =
                        report.violations.iter().map(|v| v.to_string()).collect();
                    lines.extend(report.aborted.iter().map(|a| format!("aborted: {a}")));
                    Err(lines)
                }
            }
        };
        match verdict {
            Ok(line) => {
                passed += 1;
                println!("{line}");
                for line in skipped {
                    println!("  {line}");
                }
            }
            Err(lines) => {
                failed += 1;
                println!("FAIL {name}");
                for line in skipped.into_iter().chain(lines) {
                    for part in line.lines() {
                        println!("  {part}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Expands directories into their `*.test` files, in name order; files are taken as given.
fn script_paths(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(arg)
                .with_context(|| format!("cannot list {}", arg.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "test"))
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(arg.clone());
        }
    }
    Ok(paths)
}

/// Human status: the headline fields first, then counters; per-lane and per-bucket arrays are
/// summarised (they are in `--json`).
pub fn print_status(status: &serde_json::Value) {
    let field = |name: &str| match status.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    const HEADLINE: [&str; 7] = [
        "role", "state", "keys", "listen", "peer", "link_up", "current",
    ];
    for name in HEADLINE {
        if status.get(name).is_some() {
            say!("{:<22}{}", format!("{name}:"), field(name));
        }
    }
    if let Some(t) = status.get("last_transition").filter(|t| !t.is_null()) {
        say!(
            "{:<22}{} -> {} ({})",
            "last transition:",
            t["from"].as_str().unwrap_or("?"),
            t["to"].as_str().unwrap_or("?"),
            t["cause"].as_str().unwrap_or("?")
        );
    }
    if let Some(lanes) = status.get("lanes").and_then(|l| l.as_array()) {
        let behind = lanes.iter().filter(|l| l["offset"] != l["acked"]).count();
        say!(
            "{:<22}{} lanes, {behind} with writes awaiting an ack",
            "lanes:",
            lanes.len()
        );
    }
    let skip = ["last_transition", "lanes", "digests"];
    if let Some(obj) = status.as_object() {
        for (k, v) in obj {
            if !HEADLINE.contains(&k.as_str()) && !skip.contains(&k.as_str()) {
                say!("{:<22}{v}", format!("{k}:"));
            }
        }
    }
}
