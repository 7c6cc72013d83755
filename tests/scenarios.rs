//! The scenario scripts in `tests/scripts/` run through the same engine as `quickv test`, against
//! real `quickv` processes; plus end-to-end checks of the runner and of `quickv test` itself that
//! need only a lone server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quickv::tester::{self, External, PairSpec, RunOptions, Script};

use common::{bin, free_addr, fresh_certs};

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

/// Every `*.test` file in `tests/scripts`, in name order.
fn scripts() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .expect("tests/scripts exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    paths.sort();
    paths
}

/// Runs one script, prints its verdict (`how` says over what, e.g. " via http") and adds its
/// violations to `failures`.
async fn run_one(script: &Script, options: &RunOptions, how: &str, failures: &mut Vec<String>) {
    let report = tester::run(script, options).await;
    eprintln!(
        "{} {}{how} ({} ops, {:.1} s)",
        if report.passed() { "PASS" } else { "FAIL" },
        report.name,
        report.ops,
        report.elapsed.as_secs_f64()
    );
    if !report.passed() {
        let violations: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        let aborted = report
            .aborted
            .map(|a| format!("\n  aborted: {a}"))
            .unwrap_or_default();
        failures.push(format!(
            "{}:\n  {}{aborted}",
            report.name,
            violations.join("\n  ")
        ));
    }
}

#[tokio::test]
async fn every_scenario_script_passes() {
    let options = RunOptions::managed(bin());
    let mut failures = Vec::new();
    let paths = scripts();
    assert!(paths.len() >= 16, "scripts missing: {paths:?}");
    for path in paths {
        let script = Script::load(&path).expect("script parses");
        // A script in the classic style may name the lines the classic rule must skip.
        let text = std::fs::read_to_string(&path).expect("read script");
        if let Some(listed) = text
            .lines()
            .find_map(|l| l.strip_prefix("-- illegal lines:"))
        {
            let want: Vec<usize> = listed
                .split_whitespace()
                .map(|n| n.parse().expect("a line number"))
                .collect();
            let got: Vec<usize> = script.illegal.iter().map(|e| e.line).collect();
            assert_eq!(got, want, "{}: {:?}", path.display(), script.illegal);
        } else {
            assert_eq!(script.illegal, vec![], "{}", path.display());
        }
        run_one(&script, &options, "", &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same scripts, the same judge, with every operation and the final dumps sent over the HTTP
/// gateway: the gateway is held to the same model as QUIC.
#[tokio::test]
async fn every_scenario_script_passes_via_http() {
    let mut options = RunOptions::managed(bin());
    options.via = tester::Via::Http;
    let mut failures = Vec::new();
    for path in scripts() {
        let script = Script::load(&path).expect("script parses");
        run_one(&script, &options, " via http", &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_scenario_script_parses_and_says_what_it_proves() {
    for path in scripts() {
        let text = std::fs::read_to_string(&path).expect("read script");
        assert!(
            text.starts_with("-- "),
            "{} must open with a comment saying what it proves",
            path.display()
        );
        assert!(text.contains("Proves"), "{}", path.display());
        let script = Script::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            script.op_count() > 0,
            "{} sends no operation",
            path.display()
        );
    }
}

/// A lone primary (its backup never started) must refuse writes whatever replication does, so this
/// script passes against the servers of every stage of the project; it drives real processes
/// through start, SIGKILL, restart and SIGTERM.
const LONE_PRIMARY: &str = "\
-- A lone primary refuses writes; with it down, requests fail.
Start primary
Insert a 1
Get a
Kill primary
Get a
Insert b 2
Start primary
Remove a
Get b
Stop primary
";

#[tokio::test]
async fn runner_drives_real_processes_through_start_kill_and_stop() {
    let script = Script::parse("lone.test", LONE_PRIMARY).expect("parses");
    let mut options = RunOptions::managed(bin());
    options.verbose = true;
    let report = tester::run(&script, &options).await;
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.ops, 6);
    let transcript = report.transcript.join("\n");
    assert!(
        transcript.contains("line 3  Insert a 1 -> unavailable"),
        "{transcript}"
    );
    assert!(
        transcript.contains("line 6  Get a -> no connection"),
        "{transcript}"
    );
}

#[tokio::test]
async fn runner_reports_a_failing_exec_on_its_line() {
    let script = Script::parse("exec.test", "Sleep 1\nExec false\nExec true\n").expect("parses");
    let report = tester::run(&script, &RunOptions::managed(bin())).await;
    assert!(!report.passed());
    assert_eq!(report.violations.len(), 1, "{report:#?}");
    assert_eq!(report.violations[0].at, tester::At::Line(2));
    assert_eq!(report.violations[0].instruction, "Exec false");
}

#[tokio::test]
async fn switch_never_waits_for_a_server_nobody_started() {
    // The script claims both servers are up but only started the primary. `Switch` records the
    // belief and nothing more (the classic rule); no wait may block on the backup, which nobody
    // started: the script runs to the end, and the judge reports the request that the pair
    // could not have answered as a pair. (A runner that waited for sync at the Switch aborted
    // here at its deadline.)
    let script = Script::parse(
        "sync.test",
        "Exec bin/start_server -p\nSwitch primary\nSwitch backup\nInsert a 1\n",
    )
    .expect("parses");
    let mut options = RunOptions::managed(bin());
    options.sync_timeout = Duration::from_millis(3_000);
    let report = tester::run(&script, &options).await;
    assert_eq!(report.aborted, None, "{report:#?}");
    assert_eq!(report.ops, 1);
    assert!(!report.violations.is_empty(), "{report:#?}");
    assert_eq!(report.violations[0].at, tester::At::Line(4), "{report:#?}");
    assert!(
        report.violations[0].expected.contains("ok"),
        "{:#?}",
        report.violations
    );
}

#[tokio::test]
async fn switch_before_the_exec_that_starts_the_server() {
    // The classic order: the belief first, then the command, then a pause and the requests.
    let script = Script::parse(
        "switch-first.test",
        "-- classic order\n\
         Switch primary\n\
         Exec bin/start_server -p\n\
         Switch backup\n\
         Exec bin/start_server -b\n\
         Sleep 200\n\
         Insert k v\n\
         Get k\n\
         Switch backup\n\
         Exec bin/stop_server -b\n\
         Get k\n\
         Insert j w\n",
    )
    .expect("parses");
    let mut options = RunOptions::managed(bin());
    options.sync_timeout = Duration::from_secs(20);
    let report = tester::run(&script, &options).await;
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.ops, 4);
}

#[tokio::test]
async fn external_pair_through_command_templates() {
    let certs = fresh_certs();
    let pids = tempfile::tempdir().expect("tempdir");
    let pid_file = pids.path().join("{role}.pid");
    let pid_file = pid_file.display();
    // Every pid ever started is kept for the cleanup; the last one is the server to stop.
    let all_pids = pids.path().join("all.pids");
    let all_pids = all_pids.display();
    let primary = free_addr().to_string();
    let quickv = bin();
    // Like `systemctl start|stop`: start returns once launched, stop once the process is gone
    // (its port free for the next start).
    let external = External {
        primary: primary.clone(),
        backup: free_addr().to_string(),
        certs: certs.path().to_path_buf(),
        start_cmd: Some(format!(
            "'{quickv}' server --role {{role}} --listen {{addr}} --peer {{peer}} --certs \
             '{{certs}}' >/dev/null 2>&1 & echo $! > '{pid_file}'; echo $! >> '{all_pids}'"
        )),
        stop_cmd: Some(format!(
            "pid=$(cat '{pid_file}'); kill -TERM $pid; \
             while kill -0 $pid 2>/dev/null; do sleep 0.05; done"
        )),
        kill_cmd: None,
        primary_http: None,
        backup_http: None,
    };
    let options = RunOptions {
        pair: PairSpec::External(external),
        sync_timeout: Duration::from_secs(20),
        verbose: false,
        via: tester::Via::Quic,
    };
    let script = Script::parse(
        "external.test",
        // The second Start finds the primary running and must not start another.
        "Start primary\nStart primary\nInsert a 1\nGet a\nStop primary\nGet a\nStart primary\n\
         Kill primary\n",
    )
    .expect("parses");
    let report = tester::run(&script, &options).await;
    // Whatever happened, leave no server behind.
    let started = std::fs::read_to_string(pids.path().join("all.pids")).unwrap_or_default();
    for pid in started.split_whitespace() {
        if let Ok(pid) = pid.parse() {
            common::signal_quietly(pid, "TERM");
        }
    }
    assert_eq!(report.violations, vec![], "{report:#?}");
    let aborted = report.aborted.expect("Kill without --kill-cmd aborts");
    assert!(
        aborted.starts_with("line 8 (Kill primary)") && aborted.contains("--kill-cmd"),
        "{aborted}"
    );
    assert_eq!(report.ops, 3);
}

#[test]
fn quickv_test_prints_a_verdict_per_script_and_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a-pass.test"), LONE_PRIMARY).expect("write");
    std::fs::write(
        dir.path().join("b-bad.test"),
        "Start primary\nFrobnicate\nBlock\nGet a\nGet a\nEndblock\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a script").expect("write");

    let out = Command::new(bin())
        .args(["test", "--strict"])
        .arg(dir.path())
        .output()
        .expect("run quickv test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("PASS a-pass.test (6 ops, ") && lines[0].ends_with(" s)"),
        "{stdout}"
    );
    assert_eq!(lines[1], "FAIL b-bad.test", "{stdout}");
    assert!(
        lines[2].starts_with("  line 2: unknown instruction \"Frobnicate\""),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("  line 5: key \"a\" is already used on line 4"),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"1 passed, 1 failed"), "{stdout}");

    // The default is the classic rule: the same script runs, its illegal lines are reported
    // with their numbers and skipped, and it passes.
    let out = Command::new(bin())
        .arg("test")
        .arg(dir.path().join("b-bad.test"))
        .output()
        .expect("run quickv test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("PASS b-bad.test (1 ops, "), "{stdout}");
    assert!(
        lines[1].starts_with("  line 2: illegal instruction, skipped: unknown instruction"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("  line 5: illegal instruction, skipped: key \"a\""),
        "{stdout}"
    );

    let out = Command::new(bin())
        .args(["test", "--verbose"])
        .arg(dir.path().join("a-pass.test"))
        .output()
        .expect("run quickv test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("line 2  Start primary -> done"), "{stdout}");
    assert!(stdout.ends_with("1 passed, 0 failed\n"), "{stdout}");
}
