//! [`ServerProcess`]: a started server, its ready line, its signals and its exit.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{signal_pid, Signal, SupervisorError, READY_LINE};

/// What the stdout watcher saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    /// The ready line.
    Listening,
    /// The end of stdout without it: the process exited (or closed its stdout).
    Closed,
}

/// A value set once by one thread and awaited by others, blocking or async.
pub(super) struct Latch<T> {
    /// The value, once set.
    value: Mutex<Option<T>>,
    /// Wakes blocking waiters.
    cond: Condvar,
    /// Wakes async waiters.
    notify: Notify,
}

impl<T: Clone> Latch<T> {
    pub(super) fn new() -> Latch<T> {
        Latch {
            value: Mutex::new(None),
            cond: Condvar::new(),
            notify: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the value unless it is set; wakes every waiter.
    pub(super) fn set(&self, value: T) {
        let mut slot = self.lock();
        Self::fill(&mut slot, value);
        drop(slot);
        self.wake();
    }

    pub(super) fn fill(slot: &mut Option<T>, value: T) {
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    pub(super) fn wake(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    pub(super) fn peek(&self) -> Option<T> {
        self.lock().clone()
    }

    /// Blocks until the value is set, at most `limit`.
    pub(super) fn wait_blocking(&self, limit: Duration) -> Option<T> {
        let slot = self.lock();
        let (slot, _) = self
            .cond
            .wait_timeout_while(slot, limit, |v| v.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.clone()
    }

    /// Waits until the value is set.
    pub(super) async fn wait(&self) -> T {
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
pub(super) type Exit = Result<ExitStatus, String>;

/// A server process started by [`ServerCommand::spawn`](super::ServerCommand::spawn) (or adopted with
/// [`ServerProcess::adopt`]). Killed (SIGKILL) when dropped while it runs.
pub struct ServerProcess {
    /// Its process id; valid for signals until [`ServerProcess::exit`] is set.
    pid: u32,
    /// Names it in errors.
    role: String,
    /// Set by the stdout watcher.
    pub(super) ready: Arc<Latch<Ready>>,
    /// Set by the exit thread, under the lock [`ServerProcess::signal`] takes.
    pub(super) exit: Arc<Latch<Exit>>,
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
pub(super) fn watch_stdout(
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
