//! `quickv test`: runs scenario scripts through the tester and prints a verdict per script.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::args::TestArgs;
use super::runtime;
use crate::tester::{self, PairSpec, ParseMode, RunOptions, Script};

/// `quickv test`: exit status 0 only if every script passed, 1 if one failed, 2 if the run itself
/// could not be set up (a directory that cannot be listed, no runtime).
pub(super) fn test_command(args: TestArgs, certs: PathBuf) -> ExitCode {
    match runtime(1).and_then(|rt| rt.block_on(test(args, certs))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quickv: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every script, printing one verdict per script and a final count.
async fn test(args: TestArgs, certs: PathBuf) -> anyhow::Result<ExitCode> {
    let pair = if args.external {
        let (Some(primary), Some(backup)) = (args.primary, args.backup) else {
            anyhow::bail!("--external needs --primary and --backup");
        };
        PairSpec::External(tester::External {
            primary,
            backup,
            certs,
            start_cmd: args.start_cmd,
            stop_cmd: args.stop_cmd,
            kill_cmd: args.kill_cmd,
            primary_http: args.primary_http,
            backup_http: args.backup_http,
        })
    } else {
        let binary = std::env::current_exe().context("cannot find the quickv executable")?;
        PairSpec::Managed { binary }
    };
    let options = RunOptions {
        pair,
        sync_timeout: Duration::from_millis(args.sync_timeout_ms),
        verbose: args.verbose,
        via: if args.via == "http" {
            tester::Via::Http
        } else {
            tester::Via::Quic
        },
    };
    let mode = if args.strict {
        ParseMode::Strict
    } else {
        ParseMode::Classic
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in script_paths(&args.scripts)? {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut skipped = Vec::new();
        let verdict = match Script::load_with(&path, mode) {
            Err(e) => Err(vec![e.to_string()]),
            Ok(script) => {
                let report = tester::run(&script, &options).await;
                for line in &report.transcript {
                    println!("{line}");
                }
                skipped = report
                    .illegal
                    .iter()
                    .map(|e| {
                        format!(
                            "line {}: illegal instruction, skipped: {}",
                            e.line, e.message
                        )
                    })
                    .collect();
                if report.passed() {
                    Ok(format!(
                        "PASS {name} ({} ops, {:.1} s)",
                        report.ops,
                        report.elapsed.as_secs_f64()
                    ))
                } else {
                    let mut lines: Vec<String> =
                        report.violations.iter().map(|v| v.to_string()).collect();
                    lines.extend(report.aborted.iter().map(|a| format!("aborted: {a}")));
                    Err(lines)
                }
            }
        };
        match verdict {
            Ok(line) => {
                passed += 1;
                println!("{line}");
                for line in skipped {
                    println!("  {line}");
                }
            }
            Err(lines) => {
                failed += 1;
                println!("FAIL {name}");
                for line in skipped.into_iter().chain(lines) {
                    for part in line.lines() {
                        println!("  {part}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Expands directories into their `*.test` files, in name order; files are taken as given.
fn script_paths(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(arg)
                .with_context(|| format!("cannot list {}", arg.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "test"))
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(arg.clone());
        }
    }
    Ok(paths)
}
