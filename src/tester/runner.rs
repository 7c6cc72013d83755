//! The runner: plays a [`Script`] against a real pair of servers and hands every answer to the
//! [`Judge`].
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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::future::join_all;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::client::{Client, ClientConfig};
use crate::protocol::Op;
use crate::tester::judge::{Answer, At, Judge, Violation};
use crate::tester::script::{Action, Block, Instruction, KvOp, ParseError, Script, Server, Step};

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
    /// Record every instruction and answer in [`Report::transcript`].
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
pub struct Report {
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

impl Report {
    /// True when the script ran to the end without a violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.aborted.is_none()
    }
}

/// Runs `script` and reports what the judge found. Never panics on anything the servers do.
pub async fn run(script: &Script, options: &RunOptions) -> Report {
    let started = Instant::now();
    let mut report = Report {
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

/// The runner's connection to one server.
enum Conn {
    /// None yet, or dropped after a server action.
    Closed,
    /// Usable; clones share it.
    Open(Client),
    /// Connecting failed while the server was believed down. Until the next server action
    /// requests fail at once with this reason instead of waiting out another connect timeout:
    /// nothing but a script instruction brings a server back.
    Refused(String),
}

/// The servers themselves.
enum Servers<'o> {
    /// Child processes the runner started.
    Managed(Box<Managed>),
    /// Someone else's, driven through templates.
    External(&'o External),
}

/// A pair of child processes and their files.
struct Managed {
    /// The `quickv` executable.
    binary: PathBuf,
    /// One log file per server (stdout and stderr, appended across restarts), quoted on failure.
    logs: [PathBuf; 2],
    /// The running (or exited, not yet reaped) server processes.
    children: [Option<Child>; 2],
    /// `[primary, backup]` gateway addresses given to the servers, with [`Via::Http`].
    http: Option<[String; 2]>,
}

impl Managed {
    /// Starts `server` and returns a receiver that completes once the process reports
    /// `listening on` (its socket is bound). Status polls start only then: a QUIC handshake sent
    /// before the bind is retransmitted into the new server after the client gave up on it, and
    /// the server then waits out that abandoned connection when it is stopped.
    fn spawn(
        &mut self,
        server: Server,
        addrs: &[String; 2],
        certs: &Path,
    ) -> anyhow::Result<oneshot::Receiver<()>> {
        let i = server.index();
        let log = append(&self.logs[i])?;
        let mut child = Command::new(&self.binary)
            .args(["server", "--role", server.as_str(), "--listen", &addrs[i]])
            .args(["--peer", &addrs[server.other().index()]])
            .arg("--certs")
            .arg(certs)
            .args(
                self.http
                    .as_ref()
                    .map(|http| ["--http".to_string(), http[i].clone()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the {server}'s stdout is not piped"))?;
        let (listening, heard) = oneshot::channel();
        tokio::spawn(copy_stdout(
            stdout,
            tokio::fs::File::from_std(log),
            listening,
        ));
        self.children[i] = Some(child);
        Ok(heard)
    }
}

/// Copies a server's stdout into its log, signalling the `listening on` line.
async fn copy_stdout(
    stdout: ChildStdout,
    mut log: tokio::fs::File,
    listening: oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("listening on") {
            if let Some(tx) = listening.take() {
                let _ = tx.send(());
            }
        }
        if log.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Everything one script run needs.
struct Runner<'o> {
    /// Timeouts and verbosity.
    options: &'o RunOptions,
    /// Holds certificates, logs and command output; removed when the run ends.
    work: TempDir,
    /// The processes, or how to reach someone else's.
    servers: Servers<'o>,
    /// `[primary, backup]` addresses as clients dial them.
    addrs: [String; 2],
    /// `[primary, backup]` gateway addresses when operations go over HTTP ([`Via::Http`]).
    http: Option<[String; 2]>,
    /// Client certificates.
    certs: PathBuf,
    /// `[primary, backup]` connections.
    conns: [Conn; 2],
    /// Whether each server was started and not since stopped or killed by the script (what the
    /// runner did, as opposed to the judge's beliefs, which `Switch` scripts set by hand).
    running: [bool; 2],
    /// Commands from `Exec` still running after their wait; killed when the run ends.
    background: Vec<Child>,
    /// A `Switch` changed the beliefs since the servers were last waited for: before the next
    /// operation, wait for the servers believed up that are running (never for one nobody
    /// started).
    unsettled: bool,
    /// Where `Exec` runs.
    script_dir: PathBuf,
    /// The model, the beliefs, and the violations found.
    judge: Judge,
    /// Client operations sent so far.
    ops: usize,
    /// Verbose record of the run.
    transcript: Vec<String>,
}

impl<'o> Runner<'o> {
    async fn new(script: &Script, options: &'o RunOptions) -> anyhow::Result<Runner<'o>> {
        let work = tempfile::Builder::new()
            .prefix("quickv-test-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let (servers, addrs, certs, http) = match &options.pair {
            PairSpec::Managed { binary } => {
                let certs = work.path().join("certs");
                make_certs(binary, &certs).await?;
                let [primary, backup] = free_ports()?;
                let logs = Server::BOTH.map(|s| work.path().join(format!("{s}.log")));
                let http = match options.via {
                    Via::Quic => None,
                    Via::Http => Some(free_tcp_ports()?.map(|a| a.to_string())),
                };
                let managed = Managed {
                    binary: binary.clone(),
                    logs,
                    children: [None, None],
                    http: http.clone(),
                };
                (
                    Servers::Managed(Box::new(managed)),
                    [primary.to_string(), backup.to_string()],
                    certs,
                    http,
                )
            }
            PairSpec::External(external) => {
                let http = match (options.via, &external.primary_http, &external.backup_http) {
                    (Via::Quic, _, _) => None,
                    (Via::Http, Some(p), Some(b)) => Some([p.clone(), b.clone()]),
                    (Via::Http, _, _) => {
                        bail!(
                            "--via http against an external pair needs --primary-http and \
                             --backup-http"
                        )
                    }
                };
                (
                    Servers::External(external),
                    [external.primary.clone(), external.backup.clone()],
                    external.certs.clone(),
                    http,
                )
            }
        };
        Ok(Runner {
            options,
            work,
            servers,
            addrs,
            http,
            certs,
            conns: [Conn::Closed, Conn::Closed],
            running: [false, false],
            background: Vec::new(),
            unsettled: false,
            script_dir: script.dir.clone(),
            judge: Judge::new(script.uses_switch),
            ops: 0,
            transcript: Vec::new(),
        })
    }

    /// Runs every step, then compares the dumps of the servers believed up with the model.
    async fn play(&mut self, script: &Script) -> anyhow::Result<()> {
        for step in &script.steps {
            let at = || format!("line {} ({})", step.line, step.text);
            match &step.item {
                Instruction::Op(op) => {
                    self.settle().await.with_context(at)?;
                    let started = Instant::now();
                    let answer = self.request(op).await;
                    self.trace(step.line, &step.text, &answer, started.elapsed());
                    self.judge.operation(&as_step(step, op), &answer);
                }
                Instruction::Action(action) => {
                    let started = Instant::now();
                    self.judge.action(action);
                    self.act(step.line, &step.text, action)
                        .await
                        .with_context(at)?;
                    self.trace(step.line, &step.text, &"done", started.elapsed());
                }
                Instruction::Block(block) => {
                    if !block.ops.is_empty() {
                        self.settle().await.with_context(at)?;
                    }
                    self.block(block).await.with_context(at)?
                }
            }
        }
        self.settle().await.context("end of script")?;
        self.final_check().await.context("end of script")
    }

    /// Sends the block's operations all at once while its actions run in order.
    async fn block(&mut self, block: &Block) -> anyhow::Result<()> {
        let gateway = self
            .http
            .as_ref()
            .map(|h| h[Server::Primary.index()].clone());
        let client = if block.ops.is_empty() || gateway.is_some() {
            None
        } else {
            Some(self.client(Server::Primary).await)
        };
        let requests = async {
            if let Some(addr) = &gateway {
                return join_all(block.ops.iter().map(|s| async {
                    let sent = Instant::now();
                    let answer = super::http::call(addr, &s.item, OP_TIMEOUT).await;
                    (answer, sent.elapsed())
                }))
                .await;
            }
            match &client {
                Some(Ok(client)) => {
                    join_all(block.ops.iter().map(|s| async {
                        let sent = Instant::now();
                        let answer = call(client.clone(), s.item.to_op()).await;
                        (answer, sent.elapsed())
                    }))
                    .await
                }
                Some(Err(answer)) => vec![(answer.clone(), Duration::ZERO); block.ops.len()],
                None => Vec::new(),
            }
        };
        let mut acted_in = Vec::with_capacity(block.actions.len());
        let actions = async {
            for step in &block.actions {
                let began = Instant::now();
                self.act(step.line, &step.text, &step.item)
                    .await
                    .with_context(|| format!("line {} ({})", step.line, step.text))?;
                acted_in.push(began.elapsed());
            }
            anyhow::Ok(())
        };
        let (answers, acted) = tokio::join!(requests, actions);
        self.ops += block.ops.len();
        if answers
            .iter()
            .any(|(a, _)| matches!(a, Answer::NoAnswer(_)))
        {
            self.reset(Server::Primary);
        }
        for (step, (answer, took)) in block.ops.iter().zip(&answers) {
            self.trace(step.line, &step.text, answer, *took);
        }
        for (step, took) in block.actions.iter().zip(acted_in) {
            self.trace(step.line, &step.text, &"done", took);
        }
        let outcomes: Vec<(&Step<KvOp>, Answer)> = block
            .ops
            .iter()
            .zip(answers)
            .map(|(step, (answer, _))| (step, answer))
            .collect();
        let actions: Vec<&Action> = block.actions.iter().map(|s| &s.item).collect();
        self.judge.block(&outcomes, &actions);
        acted
    }

    /// Sends one operation to the primary.
    async fn request(&mut self, op: &KvOp) -> Answer {
        self.ops += 1;
        if let Some(http) = &self.http {
            return super::http::call(&http[Server::Primary.index()], op, OP_TIMEOUT).await;
        }
        let answer = match self.client(Server::Primary).await {
            Ok(client) => call(client, op.to_op()).await,
            Err(answer) => answer,
        };
        if matches!(answer, Answer::NoAnswer(_)) {
            self.reset(Server::Primary);
        }
        answer
    }

    /// The connection to `server`, made if needed. A failure is the answer the request gets.
    async fn client(&mut self, server: Server) -> Result<Client, Answer> {
        let i = server.index();
        match &self.conns[i] {
            Conn::Open(client) => return Ok(client.clone()),
            Conn::Refused(reason) => return Err(Answer::Unreachable(reason.clone())),
            Conn::Closed => {}
        }
        let believed_up = self.judge.up().contains(server);
        let timeout = if believed_up {
            CONNECT_TIMEOUT
        } else {
            PROBE_TIMEOUT
        };
        match connect(&self.addrs[i], &self.certs, timeout).await {
            Ok(client) => {
                self.conns[i] = Conn::Open(client.clone());
                Ok(client)
            }
            Err(reason) => {
                if !believed_up {
                    self.conns[i] = Conn::Refused(reason.clone());
                }
                Err(Answer::Unreachable(reason))
            }
        }
    }

    /// Forgets the connection to `server`, closing it in the background so that requests still
    /// in flight on it end now rather than at the idle timeout.
    fn reset(&mut self, server: Server) {
        if let Conn::Open(client) = std::mem::replace(&mut self.conns[server.index()], Conn::Closed)
        {
            tokio::spawn(async move { client.close().await });
        }
    }

    /// Performs one server action (the judge's beliefs are updated by the caller).
    async fn act(&mut self, line: usize, text: &str, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::Start(server) => self.start(*server).await,
            Action::Stop(server) => self.stop(*server, line, text).await,
            Action::Kill(server) => self.kill(*server).await,
            Action::Exec(argv) => self.exec(argv, line, text).await,
            Action::Switch(_) => {
                self.switch();
                Ok(())
            }
            Action::Sleep(pause) => {
                tokio::time::sleep(*pause).await;
                Ok(())
            }
        }
    }

    /// Makes sure `server` runs, then waits until it answers and, with its peer running, until
    /// the pair is in sync.
    async fn start(&mut self, server: Server) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.sync_timeout;
        self.reset(server);
        let i = server.index();
        if let Some(external) = self.external() {
            // Started by this script and not stopped since, or started by someone else: leave it.
            if !self.running[i] && self.poll_status(server).await.is_err() {
                let template = external.start_cmd.as_deref().ok_or_else(|| {
                    anyhow!(
                        "the {server} at {} does not answer, and without --start-cmd the tester \
                         cannot start it",
                        self.addrs[i]
                    )
                })?;
                self.template(template, server, deadline).await?;
            }
        } else if let Servers::Managed(managed) = &mut self.servers {
            if managed.children[i].is_none() {
                let listening = managed.spawn(server, &self.addrs, &self.certs)?;
                let heard = tokio::time::timeout_at(deadline.into(), listening).await;
                if heard.is_err() {
                    bail!(
                        "the {server} did not report `listening on` within {} s",
                        self.options.sync_timeout.as_secs_f64()
                    );
                }
                // A closed channel means stdout ended without the line: the process exited.
                self.check_alive()?;
            }
        }
        self.running[i] = true;
        if self.running[server.other().index()] {
            let both = Server::BOTH.map(|s| (s, Want::Synced));
            self.wait_for(deadline, &both).await
        } else {
            self.wait_for(deadline, &[(server, Want::Answers)]).await
        }
    }

    /// Stops `server` gracefully (SIGTERM) and expects it to exit with status 0.
    async fn stop(&mut self, server: Server, line: usize, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.sync_timeout;
        if let Some(external) = self.external() {
            let template = external
                .stop_cmd
                .as_deref()
                .ok_or_else(|| anyhow!("without --stop-cmd the tester cannot stop the {server}"))?;
            self.template(template, server, deadline).await?;
        } else if let Some(mut child) = self.take_child(server) {
            terminate(&child)?;
            let timeout = self.options.sync_timeout;
            let failure = match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => None,
                Ok(Ok(status)) => Some(format!("it exited with {status}")),
                Ok(Err(e)) => Some(format!("waiting for it failed: {e}")),
                Err(_) => {
                    let _ = child.kill().await;
                    Some(format!(
                        "it was still running {} s after SIGTERM (now killed)",
                        timeout.as_secs_f64()
                    ))
                }
            };
            if let Some(answer) = failure {
                self.judge.record(Violation {
                    at: At::Line(line),
                    instruction: text.to_string(),
                    answer,
                    expected: "a graceful stop with exit status 0".into(),
                });
            }
        }
        self.stopped(server, deadline).await
    }

    /// Kills `server` (SIGKILL).
    async fn kill(&mut self, server: Server) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.sync_timeout;
        if let Some(external) = self.external() {
            let template = external
                .kill_cmd
                .as_deref()
                .ok_or_else(|| anyhow!("without --kill-cmd the tester cannot kill the {server}"))?;
            self.template(template, server, deadline).await?;
        } else if let Some(mut child) = self.take_child(server) {
            child
                .kill()
                .await
                .with_context(|| format!("cannot kill the {server}"))?;
        }
        self.stopped(server, deadline).await
    }

    /// The external pair's description, if the pair is external.
    fn external(&self) -> Option<&'o External> {
        match &self.servers {
            Servers::External(external) => Some(*external),
            Servers::Managed(_) => None,
        }
    }

    /// Takes the managed process of `server` out of the runner's hands, to stop it.
    fn take_child(&mut self, server: Server) -> Option<Child> {
        match &mut self.servers {
            Servers::Managed(managed) => managed.children[server.index()].take(),
            Servers::External(_) => None,
        }
    }

    /// After a stop or kill: drops the connection (failing what is in flight on it), waits until
    /// an external server stops answering, and until a running peer reports that it lost the
    /// link, so the next requests meet a settled pair.
    async fn stopped(&mut self, server: Server, deadline: Instant) -> anyhow::Result<()> {
        self.reset(server);
        self.running[server.index()] = false;
        if self.external().is_some() {
            self.wait_for(deadline, &[(server, Want::Gone)]).await?;
        }
        let peer = server.other();
        if self.running[peer.index()] {
            self.wait_for(deadline, &[(peer, Want::LostPeer)]).await?;
        }
        Ok(())
    }

    /// Runs a command as written (no shell) in the script's directory; waits up to a second and
    /// records a violation if it fails in that time, else leaves it running.
    async fn exec(&mut self, argv: &[String], line: usize, text: &str) -> anyhow::Result<()> {
        let (command, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("Exec without a command"))?;
        let log_path = self.work.path().join("commands.log");
        let log = append(&log_path)?;
        let mut child = Command::new(command)
            .args(args)
            .current_dir(&self.script_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {command}"))?;
        match tokio::time::timeout(EXEC_WAIT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.judge.record(Violation {
                at: At::Line(line),
                instruction: text.to_string(),
                answer: format!("the command exited with {status}: {}", tail(&log_path)),
                expected: "exit status 0".into(),
            }),
            Ok(Err(e)) => bail!("waiting for {command} failed: {e}"),
            Err(_) => self.background.push(child),
        }
        // The command may have started or stopped servers: reconnect before the next request.
        for server in Server::BOTH {
            self.reset(server);
        }
        Ok(())
    }

    /// After the judge flipped its belief: drop connections, and nothing else. `Switch` only
    /// records a belief, instantly, as the classic tester did; scripts put it before or after
    /// the `Exec` that starts the server, so waiting here could wait for a server nobody has
    /// started yet. The wait happens before the next operation ([`Runner::settle`]).
    fn switch(&mut self) {
        for s in Server::BOTH {
            self.reset(s);
        }
        self.unsettled = true;
    }

    /// Before an operation, after a `Switch`: waits until every server that is believed up *and*
    /// running answers, and until both are in sync if both are. A server nobody started (our
    /// own child not running; for an external pair, one the script did not start and that does
    /// not answer a first probe) is not waited for: its requests then fail as they should, and
    /// the judge says so. Bounded by the sync timeout like every wait.
    async fn settle(&mut self) -> anyhow::Result<()> {
        if !std::mem::replace(&mut self.unsettled, false) {
            return Ok(());
        }
        let mut ready = Vec::new();
        for server in Server::BOTH {
            if self.judge.up().contains(server) && self.started(server).await {
                ready.push(server);
            }
        }
        let deadline = Instant::now() + self.options.sync_timeout;
        let wants: Vec<(Server, Want)> = match ready.as_slice() {
            [_, _] => Server::BOTH.map(|s| (s, Want::Synced)).to_vec(),
            [one] => vec![(*one, Want::Answers)],
            _ => Vec::new(),
        };
        if wants.is_empty() {
            return Ok(());
        }
        self.wait_for(deadline, &wants).await
    }

    /// Whether someone started `server`: our child process runs, or (external pair) the script
    /// started it or it answers a status probe.
    async fn started(&mut self, server: Server) -> bool {
        let i = server.index();
        match &self.servers {
            Servers::Managed(managed) => managed.children[i].is_some(),
            Servers::External(_) => self.running[i] || self.poll_status(server).await.is_ok(),
        }
    }

    /// Runs an external command template for `server` through `sh -c` and expects success.
    async fn template(
        &self,
        template: &str,
        server: Server,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let i = server.index();
        let addr = &self.addrs[i];
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
        let command = template
            .replace("{role}", server.as_str())
            .replace("{addr}", addr)
            .replace("{host}", host.trim_start_matches('[').trim_end_matches(']'))
            .replace("{port}", port)
            .replace("{peer}", &self.addrs[server.other().index()])
            .replace("{certs}", &self.certs.to_string_lossy());
        // Output goes to a file, not a pipe: a command that leaves a server running in the
        // background would hold a pipe open and make the wait last as long as the server.
        let log_path = self.work.path().join("commands.log");
        let log = append(&log_path)?;
        let run = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout_at(deadline.into(), run)
            .await
            .map_err(|_| anyhow!("`{command}` did not finish in time"))?
            .with_context(|| format!("cannot run `{command}`"))?;
        if !status.success() {
            bail!(
                "`{command}` exited with {status}; output:\n{}",
                tail(&log_path)
            );
        }
        Ok(())
    }

    /// Polls the status of the servers named in `wants` until each shows what is wanted of it,
    /// or aborts at `deadline` with what they last said. A managed server that exits meanwhile
    /// aborts at once.
    async fn wait_for(
        &mut self,
        deadline: Instant,
        wants: &[(Server, Want)],
    ) -> anyhow::Result<()> {
        loop {
            let mut last = Vec::with_capacity(wants.len());
            for (server, want) in wants {
                let status = self.poll_status(*server).await;
                last.push((*server, *want, want.met(&status), status));
            }
            if last.iter().all(|(_, _, met, _)| *met) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                let shown: Vec<String> = last
                    .iter()
                    .map(|(server, want, _, status)| {
                        let said = match status {
                            Ok(v) => format!(
                                "state {}, link_up {}",
                                v.get("state").unwrap_or(&serde_json::Value::Null),
                                v.get("link_up").unwrap_or(&serde_json::Value::Null)
                            ),
                            Err(e) => format!("no status ({e})"),
                        };
                        format!(
                            "waiting until the {server} {}: it said {said}",
                            want.describe()
                        )
                    })
                    .collect();
                bail!(
                    "timed out after {} s; {}",
                    self.options.sync_timeout.as_secs_f64(),
                    shown.join("; ")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails if a managed server the script started has exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Servers::Managed(managed) = &mut self.servers else {
            return Ok(());
        };
        for server in Server::BOTH {
            let i = server.index();
            if let Some(child) = &mut managed.children[i] {
                if let Some(status) = child.try_wait()? {
                    managed.children[i] = None;
                    bail!(
                        "the {server} exited with {status}; its log ends with:\n{}",
                        tail(&managed.logs[i])
                    );
                }
            }
        }
        Ok(())
    }

    /// One status request, on the existing connection or a fresh one.
    async fn poll_status(&mut self, server: Server) -> Result<serde_json::Value, String> {
        let i = server.index();
        let client = match &self.conns[i] {
            Conn::Open(client) => client.clone(),
            Conn::Closed | Conn::Refused(_) => {
                let client = connect(&self.addrs[i], &self.certs, PROBE_TIMEOUT).await?;
                self.conns[i] = Conn::Open(client.clone());
                client
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, client.status_json()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => {
                self.reset(server);
                Err(e.to_string())
            }
            Err(_) => {
                self.reset(server);
                Err(format!("no answer within {} s", OP_TIMEOUT.as_secs_f64()))
            }
        }
    }

    /// Lets a disturbed pair settle, then compares the dump of every server believed up with the
    /// model (primary first, so the backup is held to what the primary showed).
    async fn final_check(&mut self) -> anyhow::Result<()> {
        if self.running.iter().all(|r| *r) {
            let deadline = Instant::now() + self.options.sync_timeout;
            let both = Server::BOTH.map(|s| (s, Want::Synced));
            self.wait_for(deadline, &both).await?;
        }
        for server in Server::BOTH {
            if !self.judge.up().contains(server) {
                continue;
            }
            let started = Instant::now();
            let dump: Result<Vec<(Bytes, Bytes)>, Answer> = if let Some(http) = &self.http {
                super::http::dump(&http[server.index()], OP_TIMEOUT).await
            } else {
                match self.client(server).await {
                    Ok(client) => match tokio::time::timeout(OP_TIMEOUT, client.dump()).await {
                        Ok(Ok(entries)) => Ok(entries),
                        Ok(Err(e)) => Err(Answer::from(e)),
                        Err(_) => Err(Answer::NoAnswer(OP_TIMEOUT)),
                    },
                    Err(answer) => Err(answer),
                }
            };
            let shown = match &dump {
                Ok(entries) => format!("{} keys", entries.len()),
                Err(answer) => answer.to_string(),
            };
            let took = started.elapsed();
            self.trace_at(At::End, &format!("dump of the {server}"), &shown, took);
            self.judge.dump(server, dump.as_deref());
        }
        Ok(())
    }

    /// Closes connections and ends every process the run started.
    async fn close(&mut self) {
        for conn in &mut self.conns {
            if let Conn::Open(client) = std::mem::replace(conn, Conn::Closed) {
                client.close().await;
            }
        }
        if let Servers::Managed(managed) = &mut self.servers {
            for child in managed.children.iter_mut().flatten() {
                let _ = child.kill().await;
            }
        }
        for child in &mut self.background {
            let _ = child.kill().await;
        }
    }

    /// Records one instruction, its answer and how long it took, when verbose.
    fn trace(&mut self, line: usize, text: &str, answer: &dyn std::fmt::Display, took: Duration) {
        self.trace_at(At::Line(line), text, answer, took);
    }

    fn trace_at(&mut self, at: At, text: &str, answer: &dyn std::fmt::Display, took: Duration) {
        if self.options.verbose {
            self.transcript.push(format!(
                "{:>8}  {text} -> {answer} ({:.3} s)",
                at.to_string(),
                took.as_secs_f64()
            ));
        }
    }
}

/// A top-level operation seen as the judge's step type.
fn as_step(step: &Step<Instruction>, op: &KvOp) -> Step<KvOp> {
    Step {
        line: step.line,
        text: step.text.clone(),
        item: op.clone(),
    }
}

/// Sends one request and turns whatever happens into an [`Answer`].
async fn call(client: Client, op: Op) -> Answer {
    match tokio::time::timeout(OP_TIMEOUT, client.call(op)).await {
        Ok(Ok(reply)) => Answer::from_reply(reply),
        Ok(Err(e)) => Answer::from(e),
        Err(_) => Answer::NoAnswer(OP_TIMEOUT),
    }
}

async fn connect(addr: &str, certs: &Path, timeout: Duration) -> Result<Client, String> {
    let mut config = ClientConfig::new(certs);
    config.connect_timeout = timeout;
    config.idle_timeout = CLIENT_IDLE_TIMEOUT;
    // Scripts judge each answer as the classic harness did: a write cut off is indeterminate at
    // once, not retried with its session stamp.
    config.retry_writes = false;
    Client::connect(addr, &config)
        .await
        .map_err(|e| e.to_string())
}

/// What a wait expects of one server's `status`.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// It answers at all.
    Answers,
    /// It reports steady replication with its link up.
    Synced,
    /// It answers, and no longer claims to be in sync: it noticed its peer is gone.
    LostPeer,
    /// It no longer answers.
    Gone,
}

impl Want {
    fn met(self, status: &Result<serde_json::Value, String>) -> bool {
        match (self, status) {
            (Want::Answers, Ok(_)) | (Want::Gone, Err(_)) => true,
            (Want::Synced, Ok(s)) => in_sync(s),
            (Want::LostPeer, Ok(s)) => !in_sync(s),
            _ => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Want::Answers => "answers",
            Want::Synced => "reports state sync with its link up",
            Want::LostPeer => "reports that it lost its peer",
            Want::Gone => "stops answering",
        }
    }
}

/// Whether a status document shows a server in steady replication with its link up.
fn in_sync(status: &serde_json::Value) -> bool {
    status.get("state").and_then(|s| s.as_str()) == Some("sync")
        && status.get("link_up").and_then(|l| l.as_bool()) != Some(false)
}

/// Writes fresh certificates with `quickv certs --dir`.
async fn make_certs(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(binary)
        .args(["certs", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "`quickv certs` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Two loopback UDP addresses that were free a moment ago (held together, so they differ).
fn free_ports() -> anyhow::Result<[SocketAddr; 2]> {
    let a = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
    let b = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
    Ok([a.local_addr()?, b.local_addr()?])
}

/// Two loopback TCP addresses that were free a moment ago (for the gateways with `--via http`).
fn free_tcp_ports() -> anyhow::Result<[SocketAddr; 2]> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP socket")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP socket")?;
    Ok([a.local_addr()?, b.local_addr()?])
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let Ok(file) = File::open(path) else {
        return format!("({} is not readable)", path.display());
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Asks a child process to stop gracefully.
#[cfg(unix)]
fn terminate(child: &Child) -> anyhow::Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow!("the server process has no pid (already reaped)"))?;
    kill_process(pid, Signal::TERM).context("cannot send SIGTERM")
}

/// Graceful stop needs a signal; elsewhere the tester cannot tell stop from kill.
#[cfg(not(unix))]
fn terminate(_child: &Child) -> anyhow::Result<()> {
    bail!("Stop needs SIGTERM, which this platform does not have")
}
