//! Unit tests of the supervisor, with `sh` standing in for a server.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::process::watch_stdout;
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
