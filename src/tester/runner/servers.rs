//! The servers a script acts on: the runner's own child processes (through
//! [`crate::supervisor`]) or someone else's pair driven through command templates, the runner's
//! connections to them, and the waits on their `status` that follow every server action.
//!
//! [`Pair`] knows nothing of the judge: the interpreter tells it which servers are believed up and
//! records what it reports (an unclean stop, an unreachable server) as violations.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;
use tokio::process::Command;

use super::conn::{connect, Conn};
use super::{
    External, PairSpec, RunOptions, Via, CONNECT_TIMEOUT, LOG_TAIL_LINES, OP_TIMEOUT,
    POLL_INTERVAL, PROBE_TIMEOUT,
};
use crate::supervisor::{
    self, append, in_sync, tail, Output, ServerCommand, ServerProcess, Stopped,
};
use crate::tester::model::Up;
use crate::tester::script::PairMember;
use quickv_client::{Client, Status};

/// The pair a script runs against, and the runner's connections to it.
pub(super) struct Pair<'o> {
    /// Deadline of each wait on the servers ([`RunOptions::sync_timeout`]).
    sync_timeout: Duration,
    /// Holds certificates, logs and command output; removed when the run ends.
    work: TempDir,
    /// The processes, or how to reach someone else's.
    servers: Servers<'o>,
    /// `[primary, backup]` addresses as clients dial them.
    addrs: [String; 2],
    /// `[primary, backup]` gateway addresses when operations go over HTTP ([`Via::Http`]).
    pub(super) http: Option<[String; 2]>,
    /// Client certificates.
    certs: PathBuf,
    /// `[primary, backup]` connections.
    conns: [Conn; 2],
    /// Whether each server was started and not since stopped or killed by the script (what the
    /// runner did, as opposed to the judge's beliefs, which `Switch` scripts set by hand).
    pub(super) running: [bool; 2],
}

/// The servers themselves.
pub(super) enum Servers<'o> {
    /// Child processes the runner started.
    Managed(Box<Managed>),
    /// Someone else's, driven through templates.
    External(&'o External),
}

/// A pair of child processes and their files.
pub(super) struct Managed {
    /// The `quickv` executable.
    pub(super) binary: PathBuf,
    /// One log file per server (stdout and stderr, appended across restarts), quoted on failure.
    pub(super) logs: [PathBuf; 2],
    /// The running (or exited, not yet noticed) server processes.
    pub(super) children: [Option<ServerProcess>; 2],
    /// `[primary, backup]` gateway addresses given to the servers, with [`super::Via::Http`].
    pub(super) http: Option<[String; 2]>,
}

impl Managed {
    /// Starts `server`. Status polls start only once it reports `listening on`
    /// ([`ServerProcess::ready`]): a QUIC handshake sent before the bind is retransmitted into the
    /// new server after the client gave up on it, and the server then waits out that abandoned
    /// connection when it is stopped.
    fn spawn(
        &mut self,
        server: PairMember,
        addrs: &[String; 2],
        certs: &Path,
    ) -> anyhow::Result<&ServerProcess> {
        let i = server.index();
        let mut command = ServerCommand::new(&self.binary, server.as_str(), &addrs[i], certs)
            .peer(&addrs[server.other().index()])
            .output(Output::Log(self.logs[i].clone()));
        if let Some(http) = &self.http {
            command = command.http(&http[i]);
        }
        Ok(self.children[i].insert(command.spawn()?))
    }
}

impl<'o> Pair<'o> {
    /// Sets up the pair `options` names: for a managed pair, a work directory with fresh
    /// certificates and two free ports (the servers start on the script's `Start`).
    pub(super) async fn new(options: &'o RunOptions) -> anyhow::Result<Pair<'o>> {
        let work = tempfile::Builder::new()
            .prefix("quickv-test-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let (servers, addrs, certs, http) = match &options.pair {
            PairSpec::Managed { binary } => {
                let certs = work.path().join("certs");
                let (bin, dir) = (binary.clone(), certs.clone());
                tokio::task::spawn_blocking(move || supervisor::make_certs(&bin, &dir))
                    .await
                    .context("making certificates")??;
                let [primary, backup] = supervisor::free_udp_addrs()?;
                let logs = PairMember::BOTH.map(|s| work.path().join(format!("{s}.log")));
                let http = match options.via {
                    Via::Quic => None,
                    Via::Http => Some(supervisor::free_tcp_addrs()?.map(|a| a.to_string())),
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
        Ok(Pair {
            sync_timeout: options.sync_timeout,
            work,
            servers,
            addrs,
            http,
            certs,
            conns: [Conn::Closed, Conn::Closed],
            running: [false, false],
        })
    }

    /// The run's work directory (certificates, logs, `commands.log`).
    pub(super) fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The connection to `server`, made if needed (with a short timeout when it is not
    /// `believed_up`, and then remembered as refused). A failure is why it cannot be reached.
    pub(super) async fn client(
        &mut self,
        server: PairMember,
        believed_up: bool,
    ) -> Result<Client, String> {
        let i = server.index();
        match &self.conns[i] {
            Conn::Open(client) => return Ok(client.clone()),
            Conn::Refused(reason) => return Err(reason.clone()),
            Conn::Closed => {}
        }
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
                Err(reason)
            }
        }
    }

    /// Forgets the connection to `server`, closing it in the background so that requests still
    /// in flight on it end now rather than at the idle timeout.
    pub(super) fn reset(&mut self, server: PairMember) {
        if let Conn::Open(client) = std::mem::replace(&mut self.conns[server.index()], Conn::Closed)
        {
            tokio::spawn(async move { client.close().await });
        }
    }

    /// Closes the connections and ends every server process the run started.
    pub(super) async fn close(&mut self) {
        for conn in &mut self.conns {
            if let Conn::Open(client) = std::mem::replace(conn, Conn::Closed) {
                client.close().await;
            }
        }
        if let Servers::Managed(managed) = &mut self.servers {
            for child in managed.children.iter_mut().flatten() {
                let _ = child.kill().await;
            }
            managed.children = [None, None];
        }
    }

    /// Makes sure `server` runs, then waits until it answers and, with its peer running, until
    /// the pair is in sync.
    pub(super) async fn start(&mut self, server: PairMember) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.sync_timeout;
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
                let left = deadline.saturating_duration_since(Instant::now());
                let ready = managed
                    .spawn(server, &self.addrs, &self.certs)?
                    .ready(left)
                    .await;
                if let Err(e) = ready {
                    self.check_alive()?;
                    bail!("{e}");
                }
            }
        }
        self.running[i] = true;
        if self.running[server.other().index()] {
            let both = PairMember::BOTH.map(|s| (s, Want::Synced));
            self.wait_for(deadline, &both).await
        } else {
            self.wait_for(deadline, &[(server, Want::Answers)]).await
        }
    }

    /// Stops `server` gracefully (SIGTERM). A managed server is expected to exit with status 0:
    /// how it ended otherwise is returned, for the caller to judge. The caller then waits for
    /// the pair to notice ([`Pair::stopped`]) with the same `deadline`.
    pub(super) async fn stop(
        &mut self,
        server: PairMember,
        deadline: Instant,
    ) -> anyhow::Result<Option<Stopped>> {
        if let Some(external) = self.external() {
            let template = external
                .stop_cmd
                .as_deref()
                .ok_or_else(|| anyhow!("without --stop-cmd the tester cannot stop the {server}"))?;
            self.template(template, server, deadline).await?;
        } else if let Some(child) = self.take_child(server) {
            let stopped = child.stop(self.sync_timeout).await;
            if !stopped.is_clean() {
                return Ok(Some(stopped));
            }
        }
        Ok(None)
    }

    /// Kills `server` (SIGKILL).
    pub(super) async fn kill(&mut self, server: PairMember) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.sync_timeout;
        if let Some(external) = self.external() {
            let template = external
                .kill_cmd
                .as_deref()
                .ok_or_else(|| anyhow!("without --kill-cmd the tester cannot kill the {server}"))?;
            self.template(template, server, deadline).await?;
        } else if let Some(child) = self.take_child(server) {
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
    fn take_child(&mut self, server: PairMember) -> Option<ServerProcess> {
        match &mut self.servers {
            Servers::Managed(managed) => managed.children[server.index()].take(),
            Servers::External(_) => None,
        }
    }

    /// After a stop or kill: drops the connection (failing what is in flight on it), waits until
    /// an external server stops answering, and until a running peer reports that it lost the
    /// link, so the next requests meet a settled pair.
    pub(super) async fn stopped(
        &mut self,
        server: PairMember,
        deadline: Instant,
    ) -> anyhow::Result<()> {
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

    /// Before an operation, after a `Switch`: waits until every server that is believed `up` *and*
    /// running answers, and until both are in sync if both are. A server nobody started (our
    /// own child not running; for an external pair, one the script did not start and that does
    /// not answer a first probe) is not waited for: its requests then fail as they should, and
    /// the judge says so. Bounded by the sync timeout like every wait.
    pub(super) async fn settle(&mut self, up: Up) -> anyhow::Result<()> {
        let mut ready = Vec::new();
        for server in PairMember::BOTH {
            if up.contains(server) && self.started(server).await {
                ready.push(server);
            }
        }
        let deadline = Instant::now() + self.sync_timeout;
        let wants: Vec<(PairMember, Want)> = match ready.as_slice() {
            [_, _] => PairMember::BOTH.map(|s| (s, Want::Synced)).to_vec(),
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
    async fn started(&mut self, server: PairMember) -> bool {
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
        server: PairMember,
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
                tail(&log_path, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Polls the status of the servers named in `wants` until each shows what is wanted of it,
    /// or aborts at `deadline` with what they last said. A managed server that exits meanwhile
    /// aborts at once.
    pub(super) async fn wait_for(
        &mut self,
        deadline: Instant,
        wants: &[(PairMember, Want)],
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
                            Ok(status) => format!(
                                "state {:?}, link_up {}",
                                status.state,
                                status
                                    .link_up()
                                    .map_or_else(|| "null".to_string(), |l| l.to_string())
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
                    self.sync_timeout.as_secs_f64(),
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
        for server in PairMember::BOTH {
            let i = server.index();
            if let Some(exit) = managed.children[i].as_ref().and_then(|c| c.try_exit()) {
                managed.children[i] = None;
                let status = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!(
                    "the {server} exited with {status}; its log ends with:\n{}",
                    tail(&managed.logs[i], LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// One status request, on the existing connection or a fresh one.
    async fn poll_status(&mut self, server: PairMember) -> Result<Status, String> {
        let i = server.index();
        let client = match &self.conns[i] {
            Conn::Open(client) => client.clone(),
            Conn::Closed | Conn::Refused(_) => {
                let client = connect(&self.addrs[i], &self.certs, PROBE_TIMEOUT).await?;
                self.conns[i] = Conn::Open(client.clone());
                client
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, client.status()).await {
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
}

/// What a wait expects of one server's `status`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Want {
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
    fn met(self, status: &Result<Status, String>) -> bool {
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
