//! The command line's shape: every subcommand, flag and default (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench;
use crate::tester;
use quickv_server::config::{self, Role};

/// quickv: an in-memory key-value server with synchronous primary/backup replication over QUIC.
#[derive(Debug, Parser)]
#[command(name = "quickv", version, about, propagate_version = true)]
pub struct Cli {
    /// Server to talk to (client commands).
    #[arg(long, global = true, env = "QUICKV_SERVER", default_value = config::DEFAULT_PRIMARY_ADDR)]
    pub(crate) server: String,
    /// Certificate directory (ca.pem, client.pem/key; server.pem/key for servers).
    #[arg(long, global = true, env = "QUICKV_CERTS", default_value = config::DEFAULT_CERTS_DIR)]
    pub(crate) certs: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct WriteArgs {
    /// The key: its UTF-8 bytes, or with --key-hex the bytes written in hexadecimal.
    pub(crate) key: String,
    /// The value; `-` reads it from stdin (any bytes, up to the 16 MiB value limit). Leave it out
    /// with --value-file.
    #[arg(required_unless_present = "value_file")]
    pub(crate) value: Option<String>,
    /// Read the value from this file (any bytes), instead of VALUE.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    pub(crate) value_file: Option<PathBuf>,
    /// KEY is hexadecimal (e.g. `00ff`): for keys that are not UTF-8.
    #[arg(long)]
    pub(crate) key_hex: bool,
}

/// `get`/`delete`: a key, and how to print the value.
#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The key: its UTF-8 bytes, or with --key-hex the bytes written in hexadecimal.
    pub(crate) key: String,
    /// KEY is hexadecimal (e.g. `00ff`): for keys that are not UTF-8.
    #[arg(long)]
    pub(crate) key_hex: bool,
    /// Write the value's bytes to stdout unchanged, with no newline added.
    #[arg(long, conflicts_with = "hex")]
    pub(crate) raw: bool,
    /// Print the value in hexadecimal.
    #[arg(long)]
    pub(crate) hex: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) action: Option<BenchAction>,
    #[command(flatten)]
    pub(crate) run: BenchRunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchAction {
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
pub(crate) struct BenchRunArgs {
    /// quickv HOST:PORT, or a redis:// / rediss:// URL (default: the global --server). Loopback
    /// only.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// One operation kind: get, insert, update, delete or ping.
    #[arg(long, conflicts_with = "mix")]
    pub(crate) workload: Option<bench::LoadOp>,
    /// Weighted mix, e.g. get=90,update=10.
    #[arg(long)]
    pub(crate) mix: Option<bench::Mix>,
    /// quickv: the target's backup (HOST:PORT), for --read-from any.
    #[arg(long)]
    pub(crate) backup: Option<String>,
    /// quickv: where gets go: primary (the target), or any (taking turns between the primary and
    /// --backup); writes always go to the primary.
    #[arg(long, default_value = "primary")]
    pub(crate) read_from: bench::ReadAt,
    /// Keyspace size (preloaded for get/update/delete).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) keys: u64,
    /// Value size in bytes (also the ping payload).
    #[arg(long, default_value_t = 100)]
    pub(crate) value_size: usize,
    /// Key distribution: uniform or zipfian.
    #[arg(long, default_value = "uniform")]
    pub(crate) dist: bench::DistKind,
    /// Zipfian skew.
    #[arg(long, default_value_t = bench::dist::Zipfian::DEFAULT_THETA)]
    pub(crate) zipf_theta: f64,
    /// QUIC connections (Redis: see --streams).
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Streams per connection (Redis: connections per --connections).
    #[arg(long, default_value_t = 4)]
    pub(crate) streams: usize,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 16)]
    pub(crate) pipeline: usize,
    /// Open loop at this many requests per second (latency from intended start); default closed
    /// loop.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Measured time, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    pub(crate) duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "2s", value_parser = bench::parse_duration)]
    pub(crate) warmup: Duration,
    /// A request with no answer after this counts as a timeout (a write to quickv: indeterminate).
    #[arg(long, default_value = "5s", value_parser = bench::parse_duration)]
    pub(crate) timeout: Duration,
    /// Skip the preload (the keyspace is already there, e.g. from a previous run).
    #[arg(long)]
    pub(crate) no_preload: bool,
    /// Stop after this many requests even if --duration has not passed.
    #[arg(long, default_value_t = bench::DEFAULT_MAX_REQUESTS)]
    pub(crate) max_requests: u64,
    /// PRNG seed (worker w uses seed + w).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Redis: follow each write with WAIT N <--redis-wait-ms> on the same connection.
    #[arg(long)]
    pub(crate) redis_wait: Option<u32>,
    /// Redis: the WAIT timeout in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) redis_wait_ms: u64,
    /// Worker threads of the generator's runtime (1 = current-thread).
    #[arg(long, default_value_t = 1)]
    pub(crate) client_threads: usize,
    /// Progress display: auto, bar, lines or off.
    #[arg(long, default_value = "auto")]
    pub(crate) progress: bench::ProgressMode,
    /// Progress and .hlog interval.
    #[arg(long, default_value = "1s", value_parser = bench::parse_duration)]
    pub(crate) interval: Duration,
    /// Write <op>.hgrm, <op>.hlog and report.json into this directory.
    #[arg(long)]
    pub(crate) hdr_out: Option<PathBuf>,
    /// Name of the run in reports, plots and tables.
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Address of the primary.
    #[arg(long, default_value = config::DEFAULT_PRIMARY_ADDR)]
    pub(crate) primary: SocketAddr,
    /// Address of the backup.
    #[arg(long, default_value = config::DEFAULT_BACKUP_ADDR)]
    pub(crate) backup: SocketAddr,
    /// Run one standalone server on --primary instead of a pair.
    #[arg(long)]
    pub(crate) standalone: bool,
    /// Give each server the HTTP gateway (docs/http.md): the primary on --primary-http, the
    /// backup on --backup-http (the classic API's addresses by default).
    #[arg(long)]
    pub(crate) http: bool,
    /// The primary's HTTP gateway address (implies --http).
    #[arg(long, value_name = "ADDR")]
    pub(crate) primary_http: Option<SocketAddr>,
    /// The backup's HTTP gateway address (implies --http).
    #[arg(long, value_name = "ADDR")]
    pub(crate) backup_http: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RuntimeArgs {
    /// Tokio worker threads; 1 runs a current-thread runtime (fastest on small machines).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// standalone, primary or backup.
    #[arg(long, default_value = "standalone")]
    pub(crate) role: Role,
    /// UDP address to listen on (default: from --config, else the role's default address).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// The other server of the pair (required for primary and backup unless in --config).
    #[arg(long)]
    pub(crate) peer: Option<SocketAddr>,
    /// TOML file naming both servers of the pair (see docs/operations.md).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Largest key accepted, in bytes.
    #[arg(long)]
    pub(crate) max_key: Option<usize>,
    /// Largest value accepted, in bytes.
    #[arg(long)]
    pub(crate) max_value: Option<usize>,
    /// Concurrent client connections.
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Concurrent streams per client connection.
    #[arg(long)]
    pub(crate) max_streams: Option<u32>,
    /// Idle timeout of client connections, in milliseconds.
    #[arg(long)]
    pub(crate) idle_timeout_ms: Option<u64>,
    /// Close a stream that holds an unfinished frame this long, in milliseconds (slowloris).
    #[arg(long)]
    pub(crate) frame_timeout_ms: Option<u64>,
    /// Refuse writes that add data once keys+values exceed this many bytes (reads go on).
    #[arg(long)]
    pub(crate) max_memory: Option<u64>,
    /// Size the store for about N keys at start (a hint, not a limit): the first N inserts then
    /// never wait for the hash table to grow. Costs about 16 bytes per expected key at once.
    #[arg(long, value_name = "N")]
    pub(crate) expected_keys: Option<usize>,
    /// Directory of this server's state file (its replication epoch, kept across restarts so a
    /// stale primary stays refused); default: the certificate directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Answers of retried-write sessions kept per session and bucket (default 64); see
    /// docs/client.md, "Sessions and retries".
    #[arg(long, value_name = "N")]
    pub(crate) session_window: Option<usize>,
    /// Client sessions remembered per client certificate and bucket, 32 buckets (default 4096).
    #[arg(long, value_name = "N")]
    pub(crate) max_sessions: Option<usize>,
    /// Byte budget of the session tables in all (default 64 MiB; at most half of --max-memory,
    /// and counted toward it).
    #[arg(long, value_name = "BYTES")]
    pub(crate) session_memory: Option<usize>,
    /// Bytes one client certificate's session records may hold (default 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub(crate) session_memory_per_client: Option<usize>,
    /// Largest removed value a delete's session record keeps for its retry (default 1024);
    /// a retry of a delete of a larger value is answered `ok` (applied, value not kept).
    #[arg(long, value_name = "BYTES")]
    pub(crate) session_keep_removed: Option<usize>,
    /// Forget a session's records after it wrote nothing for this many seconds (default 600).
    #[arg(long, value_name = "SECS")]
    pub(crate) session_idle_secs: Option<u64>,
    /// Primary: QUIC streams the 32 replication lanes share on the peer link (1-32).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub(crate) peer_streams: Option<u16>,
    /// Also serve the HTTP/JSON gateway and /metrics on this TCP address (off by default;
    /// 127.0.0.1:8080 is the usual choice; see docs/http.md).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Serve the HTTP gateway over TLS with the pair's certificates, requiring a client
    /// certificate from the cluster CA.
    #[arg(long, conflicts_with = "http_insecure")]
    pub(crate) http_tls: bool,
    /// Allow plain (unauthenticated) HTTP on a non-loopback --http address. Anyone who can reach
    /// the port can then read, write and shut the server down; logged loudly at start.
    #[arg(long)]
    pub(crate) http_insecure: bool,
    /// Plain HTTP gateway: demand `Authorization: Bearer TOKEN`, TOKEN read from this file (which
    /// must be mode 0600, no group or other access).
    #[arg(long, value_name = "FILE")]
    pub(crate) http_token: Option<PathBuf>,
    /// Accept client certificates without a role unit, as admin (certificates made before roles
    /// existed). By default they are refused.
    #[arg(long)]
    pub(crate) allow_roleless: bool,
    /// Offer TLS 1.2 besides 1.3 on the HTTPS gateway (the client certificate then travels in
    /// clear).
    #[arg(long)]
    pub(crate) tls12: bool,
    /// Let a reload lift revocation: accept an absent or empty crl.pem after a CRL was loaded.
    /// By default such a reload fails and the CRL in force stays.
    #[arg(long)]
    pub(crate) allow_crl_removal: bool,
    #[command(flatten)]
    pub(crate) resources: super::resources::ResourceArgs,
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// Script files, or directories whose `*.test` files run in name order.
    #[arg(required = true)]
    pub(crate) scripts: Vec<PathBuf>,
    /// Print every instruction and its answer.
    #[arg(long)]
    pub(crate) verbose: bool,
    /// Run against servers someone else started (--primary, --backup, and the global --certs)
    /// instead of a fresh pair per script.
    #[arg(long, requires_all = ["primary", "backup"])]
    pub(crate) external: bool,
    /// Address of the external primary (HOST:PORT).
    #[arg(long, requires = "external")]
    pub(crate) primary: Option<String>,
    /// Address of the external backup (HOST:PORT).
    #[arg(long, requires = "external")]
    pub(crate) backup: Option<String>,
    /// Shell command that starts an external server; {role} {addr} {host} {port} {peer} {certs}
    /// are replaced.
    #[arg(long, requires = "external")]
    pub(crate) start_cmd: Option<String>,
    /// Shell command that stops an external server gracefully (same placeholders).
    #[arg(long, requires = "external")]
    pub(crate) stop_cmd: Option<String>,
    /// Shell command that kills an external server abruptly (same placeholders).
    #[arg(long, requires = "external")]
    pub(crate) kill_cmd: Option<String>,
    /// Longest wait for a server to answer, for the pair to sync, or for a server to stop, in ms.
    #[arg(long, default_value_t = tester::runner::DEFAULT_SYNC_TIMEOUT_MS)]
    pub(crate) sync_timeout_ms: u64,
    /// How operations and the final dumps reach the servers: quic, or http (the gateway, the same
    /// judge; status polls stay on QUIC).
    #[arg(long, default_value = "quic", value_parser = ["quic", "http"])]
    pub(crate) via: String,
    /// The external primary's HTTP gateway (HOST:PORT), for --via http.
    #[arg(long, requires = "external")]
    pub(crate) primary_http: Option<String>,
    /// The external backup's HTTP gateway (HOST:PORT), for --via http.
    #[arg(long, requires = "external")]
    pub(crate) backup_http: Option<String>,
    /// Refuse a script with an illegal instruction (a key repeated in a block, Exec/Sleep in a
    /// block, an unknown instruction) instead of skipping the line as the classic tester did.
    #[arg(long)]
    pub(crate) strict: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory to write into (default: the global --certs).
    #[arg(long, global = true)]
    pub(crate) dir: Option<PathBuf>,
    /// Extra subject alternative name for the server certificate (host name or IP); repeatable.
    #[arg(long = "san")]
    pub(crate) sans: Vec<String>,
    /// Overwrite existing files.
    #[arg(long, global = true)]
    pub(crate) force: bool,
    #[command(subcommand)]
    pub(crate) action: Option<CertsAction>,
}

/// What `quickv certs` does beyond creating the CA, server and default client certificates.
#[derive(Debug, Subcommand)]
pub(crate) enum CertsAction {
    /// Issue NAME.pem / NAME.key: a client certificate for NAME with a role, signed by the CA.
    Client {
        /// The client's name (file name and certificate common name).
        name: String,
        /// What the client may do: read (get, count, dump, status, ping), write (read + insert,
        /// update, delete) or admin (write + shutdown).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
    },
    /// Revoke a certificate: add it to crl.pem (servers refuse it after the reload that follows
    /// the file change, SIGHUP or a restart). Give NAME, --cert FILE or --serial HEX.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["name", "cert", "serial"])))]
    Revoke {
        /// The client's name, as given to `certs client` (`client` for the default client.pem).
        name: Option<String>,
        /// A certificate file to revoke (e.g. a replaced server.pem or a copy found elsewhere).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// A serial number to revoke, hex (as `openssl x509 -noout -serial` prints it).
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
    },
    /// Re-issue server.pem / server.key with a new key and the same names, and revoke the replaced
    /// certificate (servers use both after SIGHUP or the next file poll).
    Renew,
}
