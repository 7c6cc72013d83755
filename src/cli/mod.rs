//! The `quickv` command line: argument parsing and one library call per subcommand.
//!
//! Exit status: 0 on success; 1 when the server refused the operation or could not confirm it
//! (exists, not found, unavailable, indeterminate), with one line on stderr saying why, and when
//! a `quickv test` script failed; 2 on usage, connection or TLS errors.

mod args;
mod certs;
mod client;
mod resources;
mod test;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::bench;
use quickv_client::ClientError;
use quickv_proto::Limits;
use quickv_server::config::{self, FileConfig, Role, ServerConfig};
use quickv_server::server::Server;
use quickv_server::tls;

pub use args::Cli;
use args::{BenchAction, BenchArgs, Command, ServerArgs};
use client::client_command;
use test::test_command;

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
                return certs::action(&dir, action, args.force);
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
                (None, None) => bench::Mix::single(bench::LoadOp::Get),
            };
            cfg.backup = a.backup;
            cfg.read_from = a.read_from;
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
    cfg.expected_keys = args.expected_keys.unwrap_or(cfg.expected_keys);
    if args.state_dir.is_some() {
        cfg.state_dir = args.state_dir.clone();
    }
    cfg.sessions.window = args.session_window.unwrap_or(cfg.sessions.window).max(1);
    cfg.sessions.max_sessions = args
        .max_sessions
        .unwrap_or(cfg.sessions.max_sessions)
        .max(1);
    cfg.sessions.max_bytes = args.session_memory.unwrap_or(cfg.sessions.max_bytes);
    cfg.sessions.max_bytes_per_identity = args
        .session_memory_per_client
        .unwrap_or(cfg.sessions.max_bytes_per_identity);
    cfg.sessions.keep_removed_max = args
        .session_keep_removed
        .unwrap_or(cfg.sessions.keep_removed_max);
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
    if args.http_token.is_some() {
        cfg.tls.http_token = args.http_token;
    }
    cfg.tls.allow_roleless |= args.allow_roleless;
    cfg.tls.tls12 |= args.tls12;
    cfg.tls.allow_crl_removal |= args.allow_crl_removal;
    args.resources.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

/// Runs a server until SIGINT/SIGTERM or a `shutdown` request.
async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let server = Server::bind(cfg)?;
    let addr = server.local_addr()?;
    // The stop signals are caught from here on, before "listening on" tells tools to go ahead.
    let stop = crate::supervisor::stop_signal();
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
    server.run(stop).await?;
    Ok(())
}

/// Human status: the headline fields first, then counters; per-lane and per-bucket arrays are
/// summarised (they are in `--json`).
pub fn print_status(status: &quickv_client::Status) {
    let line =
        |name: &str, value: &dyn std::fmt::Display| say!("{:<22}{value}", format!("{name}:"));
    line("role", &status.role);
    line("state", &status.state);
    line("keys", &status.keys);
    line("listen", &status.listen);
    line("peer", &status.peer.as_deref().unwrap_or("-"));
    if let Some(r) = &status.replication {
        line("link_up", &r.link_up);
        line("current", &r.current);
        if let Some(t) = &r.last_transition {
            line(
                "last transition",
                &format_args!("{} -> {} ({})", t.from, t.to, t.cause),
            );
        }
        let behind = r.lanes.iter().filter(|l| l.offset != l.acked).count();
        line(
            "lanes",
            &format_args!(
                "{} lanes, {behind} with writes awaiting an ack",
                r.lanes.len()
            ),
        );
    }
    // The counters, from the same typed document, by their field names.
    const SHOWN: [&str; 10] = [
        "role",
        "state",
        "keys",
        "listen",
        "peer",
        "link_up",
        "current",
        "last_transition",
        "lanes",
        "digests",
    ];
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(status) {
        for (name, value) in fields {
            if !SHOWN.contains(&name.as_str()) {
                line(&name, &value);
            }
        }
    }
}
