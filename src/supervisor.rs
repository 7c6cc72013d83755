//! The process supervisor: quickv servers run as child processes, started, watched and stopped in
//! one place. `quickv up` ([`crate::up`]), the tester's runner ([`crate::tester`]) and the
//! end-to-end tests (`tests/common`) all go through it.
//!
//! # What it does
//!
//! - [`ServerCommand`] spells `quickv server --role … --listen … --certs …` once, with the optional
//!   peer, gateway, thread count and extra flags, and where the output goes ([`Output`]).
//! - [`ServerCommand::spawn`] starts the process and a thread that reads its stdout. The server
//!   prints `listening on` once its socket is bound ([`READY_LINE`]); the thread notices it, and
//!   [`ServerProcess::ready`] / [`ServerProcess::ready_blocking`] wait for that line with a bound.
//!   No sleeping: the line is the event. The thread keeps draining (or logging) stdout afterwards,
//!   so the child never blocks on a full pipe.
//! - A second thread waits for the process to exit and keeps its [`ExitStatus`]; async callers
//!   await it ([`ServerProcess::exited`]), blocking callers wait with a bound
//!   ([`ServerProcess::wait_blocking`]).
//! - [`ServerProcess::signal`] sends SIGTERM (graceful stop), SIGKILL, SIGSTOP/SIGCONT (freeze) or
//!   SIGHUP (reload) with a system call (rustix), not the `kill` binary. A signal is never sent
//!   to a process that has been reaped: the exit thread waits for the exit *without* reaping
//!   (`waitid(WNOWAIT)`), then reaps under the same lock [`ServerProcess::signal`] takes, so the
//!   process id cannot have been given to another process meanwhile.
//! - [`wait_status`] polls a server's `status` over QUIC until a predicate holds (for example
//!   [`in_sync`]), with a bound. A status poll is the only way to learn a remote state, so this
//!   is a poll with a short pause, not a sleep standing in for an event.
//! - [`stop_signal`] is the other side: what a supervised process (or `up` itself) waits on to stop.
//!
//! Dropping a [`ServerProcess`] that still runs kills it (SIGKILL), like tokio's `kill_on_drop`.
//!
//! This module is for Unix (signals, process groups); quickv's tools run there.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::{Client, ClientConfig, Status};

/// What a server prints on stdout once its QUIC socket is bound (after the gateway's line, so the
/// gateway is bound too).
pub const READY_LINE: &str = "listening on";
/// Pause between two status polls in [`wait_status`].
const STATUS_POLL: Duration = Duration::from_millis(25);
/// How long one status poll may take (connect or answer) before it counts as no answer.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(2_000);

/// Why supervising a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The program could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The program.
        binary: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The process ended its stdout (exited) before it said it listens.
    #[error("the {role} exited before listening ({status})")]
    ExitedBeforeReady {
        /// `primary`, `backup` or `standalone`.
        role: String,
        /// Its exit status, or why it is unknown.
        status: String,
    },
    /// The process did not say it listens in time.
    #[error("the {role} did not report `{READY_LINE}` within {limit:?}")]
    NotReady {
        /// `primary`, `backup` or `standalone`.
        role: String,
        /// The bound waited.
        limit: Duration,
    },
    /// A signal could not be sent.
    #[error("cannot send {signal:?} to process {pid}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The process id.
        pid: u32,
        /// What the system said.
        source: std::io::Error,
    },
    /// A signal was asked for a process that has already exited.
    #[error("the {role} has already exited ({status})")]
    Exited {
        /// `primary`, `backup` or `standalone`.
        role: String,
        /// Its exit status.
        status: String,
    },
    /// A status wait ran out of time.
    #[error("{addr} did not reach the wanted state within {limit:?}; it last said {last}")]
    StatusTimeout {
        /// The server polled.
        addr: String,
        /// The bound waited.
        limit: Duration,
        /// Its last status document, or why there was none.
        last: String,
    },
}

/// The signals the supervisor sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop gracefully.
    Term,
    /// SIGKILL: die now.
    Kill,
    /// SIGSTOP: freeze (a hung server, in tests).
    Stop,
    /// SIGCONT: thaw after [`Signal::Stop`].
    Cont,
    /// SIGHUP: reload certificates and the revocation list.
    Hup,
}

impl Signal {
    /// The signal named as `kill -NAME` names it (`TERM`, `KILL`, `STOP`, `CONT`, `HUP`, with or
    /// without the `SIG` prefix).
    pub fn from_name(name: &str) -> Option<Signal> {
        let name = name.strip_prefix("SIG").unwrap_or(name);
        Some(match name {
            "TERM" => Signal::Term,
            "KILL" => Signal::Kill,
            "STOP" => Signal::Stop,
            "CONT" => Signal::Cont,
            "HUP" => Signal::Hup,
            _ => return None,
        })
    }

    fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal as S;
        match self {
            Signal::Term => S::TERM,
            Signal::Kill => S::KILL,
            Signal::Stop => S::STOP,
            Signal::Cont => S::CONT,
            Signal::Hup => S::HUP,
        }
    }
}

/// Sends `signal` to process `pid`. For processes the supervisor did not start (`quickv up` run by
/// a test, a server in a network namespace); a [`ServerProcess`] has the safe
/// [`ServerProcess::signal`].
pub fn signal_pid(pid: u32, signal: Signal) -> Result<(), SupervisorError> {
    let failed = |source| SupervisorError::Signal {
        signal,
        pid,
        source,
    };
    let raw = i32::try_from(pid).map_err(|_| failed(std::io::ErrorKind::InvalidInput.into()))?;
    let pid_t = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| failed(std::io::ErrorKind::InvalidInput.into()))?;
    rustix::process::kill_process(pid_t, signal.to_rustix()).map_err(|e| failed(e.into()))
}

/// Where a server's output goes.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// Stdout is read (for the ready line) and dropped; stderr (the logs) is inherited.
    #[default]
    Discard,
    /// Stdout and stderr are appended to this file (kept across restarts), e.g. to quote its
    /// [`tail`] when the server fails.
    Log(PathBuf),
}

/// How to start one server: `BINARY server --role ROLE --listen ADDR --certs DIR [--peer PEER]
/// [--http ADDR] [--threads N] [extra…]`.
#[derive(Clone, Debug)]
pub struct ServerCommand {
    /// The `quickv` executable.
    binary: PathBuf,
    /// `primary`, `backup` or `standalone`; also names the process in errors.
    role: String,
    /// Everything after the subcommand.
    args: Vec<OsString>,
    /// Extra environment variables.
    env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go.
    output: Output,
    /// Run in a process group of its own, so a terminal's Ctrl-C reaches only the supervisor.
    own_group: bool,
}

impl ServerCommand {
    /// `binary server --role ROLE --listen LISTEN --certs CERTS`.
    pub fn new(
        binary: impl Into<PathBuf>,
        role: &str,
        listen: impl ToString,
        certs: &Path,
    ) -> ServerCommand {
        let mut args: Vec<OsString> = ["server", "--role", role, "--listen"]
            .iter()
            .map(OsString::from)
            .collect();
        args.push(listen.to_string().into());
        args.push("--certs".into());
        args.push(certs.as_os_str().to_owned());
        ServerCommand {
            binary: binary.into(),
            role: role.to_string(),
            args,
            env: Vec::new(),
            output: Output::Discard,
            own_group: false,
        }
    }

    /// `--peer ADDR`: the other server of the pair.
    pub fn peer(self, addr: impl ToString) -> ServerCommand {
        self.args(["--peer".to_string(), addr.to_string()])
    }

    /// `--http ADDR`: also serve the HTTP gateway.
    pub fn http(self, addr: impl ToString) -> ServerCommand {
        self.args(["--http".to_string(), addr.to_string()])
    }

    /// `--threads N`: runtime worker threads.
    pub fn threads(self, threads: usize) -> ServerCommand {
        self.args(["--threads".to_string(), threads.to_string()])
    }

    /// More arguments, as given.
    pub fn args<I, S>(mut self, args: I) -> ServerCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the server.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Where the output goes (default [`Output::Discard`]).
    pub fn output(mut self, output: Output) -> ServerCommand {
        self.output = output;
        self
    }

    /// Runs the server in a process group of its own: a terminal's Ctrl-C then reaches only the
    /// supervisor, which stops its servers in order.
    pub fn own_process_group(mut self) -> ServerCommand {
        self.own_group = true;
        self
    }

    /// The role given.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Starts the server. Returns at once; wait for [`ServerProcess::ready`].
    pub fn spawn(&self) -> Result<ServerProcess, SupervisorError> {
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let log = match &self.output {
            Output::Discard => {
                command.stderr(Stdio::inherit());
                None
            }
            Output::Log(path) => {
                let file = append(path)?;
                let stderr = file.try_clone().map_err(|source| SupervisorError::Log {
                    path: path.clone(),
                    source,
                })?;
                command.stderr(stderr);
                Some(file)
            }
        };
        if self.own_group {
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        let process = ServerProcess::adopt(child, &self.role);
        if let Some(stdout) = stdout {
            let ready = Arc::clone(&process.ready);
            watch_stdout(stdout, log, move |seen| ready.set(seen));
        } else {
            process.ready.set(Ready::Closed);
        }
        Ok(process)
    }
}

/// What the stdout watcher saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    /// The ready line.
    Listening,
    /// The end of stdout without it: the process exited (or closed its stdout).
    Closed,
}

/// A value set once by one thread and awaited by others, blocking or async.
struct Latch<T> {
    /// The value, once set.
    value: Mutex<Option<T>>,
    /// Wakes blocking waiters.
    cond: Condvar,
    /// Wakes async waiters.
    notify: Notify,
}

impl<T: Clone> Latch<T> {
    fn new() -> Latch<T> {
        Latch {
            value: Mutex::new(None),
            cond: Condvar::new(),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the value unless it is set; wakes every waiter.
    fn set(&self, value: T) {
        let mut slot = self.lock();
        Self::fill(&mut slot, value);
        drop(slot);
        self.wake();
    }

    fn fill(slot: &mut Option<T>, value: T) {
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    fn wake(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    fn peek(&self) -> Option<T> {
        self.lock().clone()
    }

    /// Blocks until the value is set, at most `limit`.
    fn wait_blocking(&self, limit: Duration) -> Option<T> {
        let slot = self.lock();
        let (slot, _) = self
            .cond
            .wait_timeout_while(slot, limit, |v| v.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.clone()
    }

    /// Waits until the value is set.
    async fn wait(&self) -> T {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` between the check and the await still wakes.
            notified.as_mut().enable();
            if let Some(value) = self.peek() {
                return value;
            }
            notified.await;
        }
    }
}

/// The exit as the exit thread saw it: the status, or why it could not be read.
type Exit = Result<ExitStatus, String>;

/// A server process started by [`ServerCommand::spawn`] (or adopted with
/// [`ServerProcess::adopt`]). Killed (SIGKILL) when dropped while it runs.
pub struct ServerProcess {
    /// Its process id; valid for signals until [`ServerProcess::exit`] is set.
    pid: u32,
    /// Names it in errors.
    role: String,
    /// Set by the stdout watcher.
    ready: Arc<Latch<Ready>>,
    /// Set by the exit thread, under the lock [`ServerProcess::signal`] takes.
    exit: Arc<Latch<Exit>>,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("pid", &self.pid)
            .field("role", &self.role)
            .field("exit", &self.exit.peek())
            .finish()
    }
}

impl ServerProcess {
    /// Takes charge of a child started elsewhere (its stdout, if still piped, is not watched:
    /// read it yourself, e.g. with [`await_ready_line`]). From now on the supervisor reaps it:
    /// do not wait on `child` anywhere else.
    pub fn adopt(child: Child, role: &str) -> ServerProcess {
        let pid = child.id();
        let exit = Arc::new(Latch::new());
        let reaper = Arc::clone(&exit);
        std::thread::spawn(move || reap(child, &reaper));
        ServerProcess {
            pid,
            role: role.to_string(),
            ready: Arc::new(Latch::new()),
            exit,
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The role it was started with.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Waits until the server says it listens, at most `limit`.
    pub async fn ready(&self, limit: Duration) -> Result<(), SupervisorError> {
        match tokio::time::timeout(limit, self.ready.wait()).await {
            Ok(seen) => self.judge_ready(Some(seen), limit).await,
            Err(_) => self.judge_ready(None, limit).await,
        }
    }

    /// As [`ServerProcess::ready`], blocking the calling thread (for synchronous tests).
    pub fn ready_blocking(&self, limit: Duration) -> Result<(), SupervisorError> {
        match self.ready.wait_blocking(limit) {
            Some(Ready::Listening) => Ok(()),
            None => Err(self.not_ready(limit)),
            Some(Ready::Closed) => {
                // Stdout closes as the process exits; its status follows within moments.
                let exit = self.exit.wait_blocking(Duration::from_secs(5));
                Err(self.exited_before_ready(exit))
            }
        }
    }

    async fn judge_ready(
        &self,
        seen: Option<Ready>,
        limit: Duration,
    ) -> Result<(), SupervisorError> {
        match seen {
            Some(Ready::Listening) => Ok(()),
            None => Err(self.not_ready(limit)),
            Some(Ready::Closed) => {
                let exit = tokio::time::timeout(Duration::from_secs(5), self.exit.wait())
                    .await
                    .ok();
                Err(self.exited_before_ready(exit))
            }
        }
    }

    fn not_ready(&self, limit: Duration) -> SupervisorError {
        SupervisorError::NotReady {
            role: self.role.clone(),
            limit,
        }
    }

    fn exited_before_ready(&self, exit: Option<Exit>) -> SupervisorError {
        SupervisorError::ExitedBeforeReady {
            role: self.role.clone(),
            status: describe(exit),
        }
    }

    /// Sends `signal`, unless the process has exited (then [`SupervisorError::Exited`]).
    pub fn signal(&self, signal: Signal) -> Result<(), SupervisorError> {
        // Under the exit lock: the exit thread reaps only while holding it, so the pid is still
        // this process's (running or a zombie) while we send.
        let exit = self.exit.lock();
        if let Some(exit) = &*exit {
            return Err(SupervisorError::Exited {
                role: self.role.clone(),
                status: describe(Some(exit.clone())),
            });
        }
        signal_pid(self.pid, signal)
    }

    /// Its exit status if it has exited (never blocks).
    pub fn try_exit(&self) -> Option<std::io::Result<ExitStatus>> {
        self.exit.peek().map(into_io)
    }

    /// Waits until it exits.
    pub async fn exited(&self) -> std::io::Result<ExitStatus> {
        into_io(self.exit.wait().await)
    }

    /// Blocks until it exits, at most `limit`; `None` if it still runs.
    pub fn wait_blocking(&self, limit: Duration) -> Option<std::io::Result<ExitStatus>> {
        self.exit.wait_blocking(limit).map(into_io)
    }

    /// SIGKILL, then waits until it is gone (async).
    pub async fn kill(&self) -> std::io::Result<ExitStatus> {
        let _ = self.signal(Signal::Kill);
        self.exited().await
    }

    /// SIGKILL, then waits until it is gone (blocking, bounded by `limit`).
    pub fn kill_blocking(&self, limit: Duration) -> Option<std::io::Result<ExitStatus>> {
        let _ = self.signal(Signal::Kill);
        self.wait_blocking(limit)
    }

    /// The graceful stop: SIGTERM, then waits at most `limit` for the exit. A process still
    /// running then is killed and [`Stopped::Killed`] says so.
    pub async fn stop(&self, limit: Duration) -> Stopped {
        if let Err(e) = self.signal(Signal::Term) {
            if let Some(exit) = self.try_exit() {
                return Stopped::Exited(exit);
            }
            return Stopped::Failed(e.to_string());
        }
        match tokio::time::timeout(limit, self.exited()).await {
            Ok(exit) => Stopped::Exited(exit),
            Err(_) => {
                let _ = self.kill().await;
                Stopped::Killed(limit)
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.signal(Signal::Kill);
    }
}

/// How a graceful stop ([`ServerProcess::stop`]) ended.
#[derive(Debug)]
pub enum Stopped {
    /// The process exited; with this status (or why it is unknown).
    Exited(std::io::Result<ExitStatus>),
    /// It was still running after the bound and was killed.
    Killed(Duration),
    /// SIGTERM could not be sent.
    Failed(String),
}

impl Stopped {
    /// True for an exit with status 0.
    pub fn is_clean(&self) -> bool {
        matches!(self, Stopped::Exited(Ok(status)) if status.success())
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Exited(Ok(status)) => write!(f, "it exited with {status}"),
            Stopped::Exited(Err(e)) => write!(f, "waiting for it failed: {e}"),
            Stopped::Killed(limit) => write!(
                f,
                "it was still running {} s after SIGTERM (now killed)",
                limit.as_secs_f64()
            ),
            Stopped::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The exit thread: waits for the exit without reaping, then reaps under the exit lock.
fn reap(mut child: Child, exit: &Latch<Exit>) {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid {
        // Exited (a zombie now), or waitid cannot tell: reap below either way.
        while let Err(rustix::io::Errno::INTR) = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {}
    }
    let mut slot = exit.lock();
    let status = child.wait().map_err(|e| e.to_string());
    Latch::fill(&mut slot, status);
    drop(slot);
    exit.wake();
}

fn into_io(exit: Exit) -> std::io::Result<ExitStatus> {
    exit.map_err(std::io::Error::other)
}

fn describe(exit: Option<Exit>) -> String {
    match exit {
        Some(Ok(status)) => status.to_string(),
        Some(Err(e)) => format!("exit status unknown: {e}"),
        None => "no exit status yet".to_string(),
    }
}

/// Reads a server's stdout on a thread of its own: calls `seen` with the ready line (or with the
/// end of stdout if the line never came), appends every line to `log` if given, and drains the
/// rest so the child never blocks on a full pipe.
fn watch_stdout(
    stdout: ChildStdout,
    mut log: Option<File>,
    seen: impl FnOnce(Ready) + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut seen = Some(seen);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(READY_LINE) {
                if let Some(seen) = seen.take() {
                    seen(Ready::Listening);
                }
            }
            if let Some(file) = &mut log {
                if writeln!(file, "{line}").is_err() {
                    log = None;
                }
            }
        }
        if let Some(seen) = seen.take() {
            seen(Ready::Closed);
        }
    });
}

/// Waits (blocking, at most `limit`) until a child started elsewhere prints the ready line on its
/// piped stdout, then drains the rest in the background. For processes the supervisor does not
/// own (a server in a network namespace started through `ip netns exec`).
pub fn await_ready_line(stdout: ChildStdout, limit: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    watch_stdout(stdout, None, move |seen| {
        let _ = tx.send(seen);
    });
    match rx.recv_timeout(limit) {
        Ok(Ready::Listening) => Ok(()),
        Ok(Ready::Closed) => Err("stdout ended before the ready line (exited?)".to_string()),
        Err(_) => Err(format!("no `{READY_LINE}` within {limit:?}")),
    }
}

/// Polls `addr`'s status until `want` holds, at most `limit`; returns that status. One
/// connection is reused while it works; a failed poll reconnects.
pub async fn wait_status(
    addr: &str,
    config: &ClientConfig,
    limit: Duration,
    want: impl Fn(&Status) -> bool,
) -> Result<Status, SupervisorError> {
    let deadline = Instant::now() + limit;
    let mut config = config.clone();
    config.connect_timeout = config.connect_timeout.min(STATUS_PROBE_TIMEOUT);
    let mut last = String::from("nothing (no connection)");
    let mut client: Option<Client> = None;
    while Instant::now() < deadline {
        if client.is_none() {
            match Client::connect(addr, &config).await {
                Ok(c) => client = Some(c),
                Err(e) => last = format!("no connection ({e})"),
            }
        }
        if let Some(c) = &client {
            match tokio::time::timeout(STATUS_PROBE_TIMEOUT, c.status()).await {
                Ok(Ok(status)) if want(&status) => {
                    c.close().await;
                    return Ok(status);
                }
                Ok(Ok(status)) => last = status.raw().to_string(),
                Ok(Err(e)) => {
                    last = format!("no status ({e})");
                    client = None;
                }
                Err(_) => {
                    last = "no status in time".to_string();
                    client = None;
                }
            }
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    if let Some(c) = client {
        c.close().await;
    }
    Err(SupervisorError::StatusTimeout {
        addr: addr.to_string(),
        limit,
        last,
    })
}

/// Whether a status shows a server in steady replication with its link up.
pub fn in_sync(status: &Status) -> bool {
    status.state == "sync" && status.link_up != Some(false)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: what a server and `quickv up` stop on.
pub async fn stop_signal() {
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

/// Writes a fresh CA, server and client certificates into `dir` with `BINARY certs --dir DIR`.
pub fn make_certs(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(binary)
        .args(["certs", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SupervisorError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    anyhow::ensure!(
        output.status.success(),
        "`quickv certs` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// `N` loopback UDP addresses that were free a moment ago (held together, so they differ).
pub fn free_udp_addrs<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    let sockets = (0..N)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, socket) in addrs.iter_mut().zip(&sockets) {
        *addr = socket.local_addr()?;
    }
    Ok(addrs)
}

/// `N` loopback TCP addresses that were free a moment ago (for gateways).
pub fn free_tcp_addrs<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr()?;
    }
    Ok(addrs)
}

/// Opens `path` for appending (creating it).
pub fn append(path: &Path) -> Result<File, SupervisorError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SupervisorError::Log {
            path: path.to_path_buf(),
            source,
        })
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("({} is not readable)", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell standing in for a server: the supervisor's contract is the ready line and the
    /// signals, whatever prints it.
    fn sh(script: &str) -> ServerProcess {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut child = child;
        let stdout = child.stdout.take().expect("piped");
        let process = ServerProcess::adopt(child, "standalone");
        let ready = Arc::clone(&process.ready);
        watch_stdout(stdout, None, move |seen| ready.set(seen));
        process
    }

    #[test]
    fn ready_line_then_term_ends_the_process() {
        let p = sh("echo 'quickv: listening on 127.0.0.1:1'; exec sleep 30");
        p.ready_blocking(Duration::from_secs(10)).expect("ready");
        assert!(p.try_exit().is_none(), "still running after the ready line");
        p.signal(Signal::Term).expect("term");
        let exit = p.wait_blocking(Duration::from_secs(10)).expect("exited");
        assert!(!exit.expect("status").success(), "sleep dies of SIGTERM");
        assert!(matches!(
            p.signal(Signal::Term),
            Err(SupervisorError::Exited { .. })
        ));
    }

    #[test]
    fn exit_before_the_ready_line_is_an_error_not_a_hang() {
        let p = sh("echo starting; exit 3");
        match p.ready_blocking(Duration::from_secs(10)) {
            Err(SupervisorError::ExitedBeforeReady { status, .. }) => {
                assert!(status.contains('3'), "status shown: {status}")
            }
            other => panic!("expected ExitedBeforeReady, got {other:?}"),
        }
    }

    #[test]
    fn silence_is_bounded() {
        let p = sh("exec sleep 30");
        assert!(matches!(
            p.ready_blocking(Duration::from_millis(200)),
            Err(SupervisorError::NotReady { .. })
        ));
        let exit = p.kill_blocking(Duration::from_secs(10)).expect("killed");
        assert!(!exit.expect("status").success());
    }

    #[tokio::test]
    async fn async_stop_kills_a_process_that_ignores_term() {
        let p = sh("trap '' TERM; echo 'listening on x'; while :; do sleep 1; done");
        p.ready(Duration::from_secs(10)).await.expect("ready");
        let stopped = p.stop(Duration::from_millis(300)).await;
        assert!(matches!(stopped, Stopped::Killed(_)), "{stopped}");
        assert!(p.try_exit().is_some());
    }

    #[tokio::test]
    async fn async_stop_reports_a_clean_exit() {
        let p = sh("trap 'exit 0' TERM; echo 'listening on x'; while :; do sleep 0.05; done");
        p.ready(Duration::from_secs(10)).await.expect("ready");
        let stopped = p.stop(Duration::from_secs(10)).await;
        assert!(stopped.is_clean(), "{stopped}");
    }

    #[test]
    fn signal_names() {
        assert_eq!(Signal::from_name("SIGHUP"), Some(Signal::Hup));
        assert_eq!(Signal::from_name("STOP"), Some(Signal::Stop));
        assert_eq!(Signal::from_name("USR9"), None);
    }
}
