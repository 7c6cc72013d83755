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
//! - A second thread waits for the process to exit and keeps its [`ExitStatus`](std::process::ExitStatus); async callers
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

mod command;
mod process;
mod setup;
mod status;

use std::path::PathBuf;
use std::time::Duration;

pub use command::{Output, ServerCommand};
pub use process::{await_ready_line, ServerProcess, Stopped};
use process::{watch_stdout, Ready};
pub use setup::{append, free_tcp_addrs, free_udp_addrs, make_certs, tail};
pub use status::{in_sync, stop_signal, wait_status};

/// What a server prints on stdout once its QUIC socket is bound (after the gateway's line, so the
/// gateway is bound too).
pub const READY_LINE: &str = "listening on";

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

#[cfg(test)]
mod tests;
