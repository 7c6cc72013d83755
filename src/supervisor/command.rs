//! [`ServerCommand`]: the one spelling of a server's command line, and how it is started.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::{append, watch_stdout, Ready, ServerProcess, SupervisorError};

/// Where a server's output goes.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// Stdout is read (for the ready line) and dropped; stderr (the logs) is inherited.
    #[default]
    Discard,
    /// Stdout and stderr are appended to this file (kept across restarts), e.g. to quote its
    /// [`tail`](super::tail) when the server fails.
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
