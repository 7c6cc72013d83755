//! The runner: plays a [`Script`] against a real pair of servers and hands every answer to the
//! [`Judge`](crate::tester::Judge).
//!
//! By default it builds its own pair for each script: a fresh temporary directory, certificates
//! made with `quickv certs --dir`, two free loopback ports, and the `quickv` binary started as
//! child processes, so `Start`, `Stop` (SIGTERM) and `Kill` (SIGKILL) act on real processes.
//! Against an external pair it can only start and stop servers through command templates.
//!
//! Waiting is driven by what the servers say, never by fixed sleeps (`Sleep` is the script's
//! own): after `Start` the runner polls `status` until the server answers and, when its peer is
//! running too, until both report `state == "sync"`; after `Stop`/`Kill` it waits for the process
//! to exit and for the survivor to report that it lost its peer. Each wait has a deadline
//! ([`RunOptions::sync_timeout`]) that aborts the script with what the servers last said.
//!
//! Requests go to the primary over one client connection, reused until a server action makes it
//! suspect. Operations of a `Block` are all sent at once on that connection while the block's
//! actions run in order; stopping or killing the primary closes the connection, so requests still
//! in flight end as the client library reports them (`indeterminate` for writes).

mod conn;
mod interpreter;
mod servers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::tester::judge::Violation;
use crate::tester::script::{ParseError, Script};

use interpreter::Runner;

/// Default deadline for a server to answer and for a pair to reach sync, in milliseconds.
pub const DEFAULT_SYNC_TIMEOUT_MS: u64 = 20_000;
/// Longest the runner waits for the answer to one request, in milliseconds. A write without an
/// answer counts as possibly applied.
const OP_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Connect timeout towards a server believed up, in milliseconds: generous, a refusal here is a
/// violation.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Connect timeout towards a server believed down (the failure is expected; QUIC over UDP has
/// no "connection refused", so only a timeout tells), and for each status poll.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Pause between two status polls while waiting for a state; the wait ends on the first answer
/// that shows the state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long `Exec` waits for its command before leaving it running (DESIGN §5).
const EXEC_WAIT: Duration = Duration::from_millis(1_000);
/// Idle timeout of the runner's client connections: short, so a silently dead server shows.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Lines of a server log quoted when a server fails to start or dies.
const LOG_TAIL_LINES: usize = 15;

/// How to run scripts.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Which servers the scripts act on.
    pub pair: PairSpec,
    /// Deadline for each wait on the servers (answering, sync, exit).
    pub sync_timeout: Duration,
    /// Record every instruction and answer in [`ScriptReport::transcript`].
    pub verbose: bool,
    /// How operations and final dumps reach the servers.
    pub via: Via,
}

/// The path operations take (status polls and waits always use QUIC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// The QUIC client protocol.
    #[default]
    Quic,
    /// The HTTP gateway (`/kv/*`, `/kvman/dump`), each request on its own connection, as the
    /// classic tester's clients send them.
    Http,
}

impl RunOptions {
    /// Options for runs against a fresh pair made from `binary` (the `quickv` executable).
    pub fn managed(binary: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            pair: PairSpec::Managed {
                binary: binary.into(),
            },
            sync_timeout: Duration::from_millis(DEFAULT_SYNC_TIMEOUT_MS),
            verbose: false,
            via: Via::Quic,
        }
    }
}

/// Which servers a script acts on.
#[derive(Clone, Debug)]
pub enum PairSpec {
    /// A fresh pair per script, started from this `quickv` binary.
    Managed {
        /// The `quickv` executable.
        binary: PathBuf,
    },
    /// Servers someone else runs.
    External(External),
}

/// A pair the runner did not start. `Start`/`Stop`/`Kill` run the matching template through
/// `sh -c` after replacing `{role}`, `{addr}`, `{host}`, `{port}`, `{peer}` and `{certs}`; without
/// a template the instruction fails the script, except `Start` of a server that already answers.
/// The commands should return once the server is launched or stopped (daemons, systemd, ssh).
#[derive(Clone, Debug)]
pub struct External {
    /// Address of the primary (`HOST:PORT`).
    pub primary: String,
    /// Address of the backup (`HOST:PORT`).
    pub backup: String,
    /// Directory with `ca.pem`, `client.pem`, `client.key`.
    pub certs: PathBuf,
    /// Template that starts a server.
    pub start_cmd: Option<String>,
    /// Template that stops a server gracefully.
    pub stop_cmd: Option<String>,
    /// Template that kills a server abruptly.
    pub kill_cmd: Option<String>,
    /// The primary's HTTP gateway (`HOST:PORT`), for [`Via::Http`].
    pub primary_http: Option<String>,
    /// The backup's HTTP gateway (`HOST:PORT`), for [`Via::Http`].
    pub backup_http: Option<String>,
}

/// The outcome of one script.
#[derive(Clone, Debug)]
pub struct ScriptReport {
    /// The script's name.
    pub name: String,
    /// Client operations sent.
    pub ops: usize,
    /// Wall time of the whole run, pair setup included.
    pub elapsed: Duration,
    /// Every expectation the servers did not meet.
    pub violations: Vec<Violation>,
    /// Why the script stopped early (a server that would not start or sync, a missing command
    /// template); `None` if it ran to the end.
    pub aborted: Option<String>,
    /// Every instruction and answer, when [`RunOptions::verbose`].
    pub transcript: Vec<String>,
    /// Lines skipped as illegal instructions (the classic rule), each with its number; they do
    /// not fail the script.
    pub illegal: Vec<ParseError>,
}

impl ScriptReport {
    /// True when the script ran to the end without a violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.aborted.is_none()
    }
}

/// Runs `script` and reports what the judge found. Never panics on anything the servers do.
pub async fn run(script: &Script, options: &RunOptions) -> ScriptReport {
    let started = Instant::now();
    let mut report = ScriptReport {
        name: script.name.clone(),
        ops: 0,
        elapsed: Duration::ZERO,
        violations: Vec::new(),
        aborted: None,
        transcript: Vec::new(),
        illegal: script.illegal.clone(),
    };
    match Runner::new(script, options).await {
        Err(e) => report.aborted = Some(format!("cannot set up the pair: {e:#}")),
        Ok(mut runner) => {
            if let Err(e) = runner.play(script).await {
                report.aborted = Some(format!("{e:#}"));
            }
            runner.close().await;
            report.ops = runner.ops;
            report.transcript = runner.transcript;
            report.violations = runner.judge.into_violations();
        }
    }
    report.elapsed = started.elapsed();
    report
}
