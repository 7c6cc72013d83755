//! The interpreter: walks a script's steps, sends operations to the primary, runs actions through
//! [`super::servers`], and hands every answer to the [`Judge`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::future::join_all;
use tokio::process::{Child, Command};

use super::servers::{Pair, Want};
use super::{RunOptions, EXEC_WAIT, LOG_TAIL_LINES, OP_TIMEOUT};
use crate::supervisor::{append, tail};
use crate::tester::judge::{Answer, At, Judge, Violation};
use crate::tester::script::{Action, Block, Instruction, KvOp, PairMember, Script, Step};
use quickv_client::Client;
use quickv_proto::Op;

/// Everything one script run needs.
pub(super) struct Runner<'o> {
    /// Timeouts and verbosity.
    pub(super) options: &'o RunOptions,
    /// The servers, and the connections to them.
    pair: Pair<'o>,
    /// Commands from `Exec` still running after their wait; killed when the run ends.
    background: Vec<Child>,
    /// A `Switch` changed the beliefs since the servers were last waited for: before the next
    /// operation, wait for the servers believed up that are running (never for one nobody
    /// started).
    unsettled: bool,
    /// Where `Exec` runs.
    script_dir: PathBuf,
    /// The model, the beliefs, and the violations found.
    pub(super) judge: Judge,
    /// Client operations sent so far.
    pub(super) ops: usize,
    /// Verbose record of the run.
    pub(super) transcript: Vec<String>,
}

impl<'o> Runner<'o> {
    pub(super) async fn new(
        script: &Script,
        options: &'o RunOptions,
    ) -> anyhow::Result<Runner<'o>> {
        Ok(Runner {
            options,
            pair: Pair::new(options).await?,
            background: Vec::new(),
            unsettled: false,
            script_dir: script.dir.clone(),
            judge: Judge::new(script.uses_switch),
            ops: 0,
            transcript: Vec::new(),
        })
    }

    /// Runs every step, then compares the dumps of the servers believed up with the model.
    pub(super) async fn play(&mut self, script: &Script) -> anyhow::Result<()> {
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
            .pair
            .http
            .as_ref()
            .map(|h| h[PairMember::Primary.index()].clone());
        let client = if block.ops.is_empty() || gateway.is_some() {
            None
        } else {
            Some(self.client(PairMember::Primary).await)
        };
        let requests = async {
            if let Some(addr) = &gateway {
                return join_all(block.ops.iter().map(|s| async {
                    let sent = Instant::now();
                    let answer = crate::tester::http::call(addr, &s.item, OP_TIMEOUT).await;
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
        if answers.iter().any(|(a, _)| matches!(a, Answer::Timeout(_))) {
            self.reset(PairMember::Primary);
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
        if let Some(http) = &self.pair.http {
            return crate::tester::http::call(&http[PairMember::Primary.index()], op, OP_TIMEOUT)
                .await;
        }
        let answer = match self.client(PairMember::Primary).await {
            Ok(client) => call(client, op.to_op()).await,
            Err(answer) => answer,
        };
        if matches!(answer, Answer::Timeout(_)) {
            self.reset(PairMember::Primary);
        }
        answer
    }

    /// The connection to `server`, made if needed. A failure is the answer the request gets.
    async fn client(&mut self, server: PairMember) -> Result<Client, Answer> {
        let believed_up = self.judge.up().contains(server);
        self.pair
            .client(server, believed_up)
            .await
            .map_err(Answer::Unreachable)
    }

    /// Forgets the connection to `server` ([`Pair::reset`]).
    fn reset(&mut self, server: PairMember) {
        self.pair.reset(server);
    }

    /// Before an operation, after a `Switch`: waits for the servers believed up
    /// ([`Pair::settle`]).
    async fn settle(&mut self) -> anyhow::Result<()> {
        if !std::mem::replace(&mut self.unsettled, false) {
            return Ok(());
        }
        self.pair.settle(self.judge.up()).await
    }

    /// Stops `server` gracefully and records a violation unless it exits with status 0.
    async fn stop(&mut self, server: PairMember, line: usize, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.sync_timeout;
        if let Some(stopped) = self.pair.stop(server, deadline).await? {
            self.judge.record(Violation {
                at: At::Line(line),
                instruction: text.to_string(),
                answer: stopped.to_string(),
                expected: "a graceful stop with exit status 0".into(),
            });
        }
        self.pair.stopped(server, deadline).await
    }

    /// Performs one server action (the judge's beliefs are updated by the caller).
    async fn act(&mut self, line: usize, text: &str, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::Start(server) => self.pair.start(*server).await,
            Action::Stop(server) => self.stop(*server, line, text).await,
            Action::Kill(server) => self.pair.kill(*server).await,
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

    /// Runs a command as written (no shell) in the script's directory; waits up to a second and
    /// records a violation if it fails in that time, else leaves it running.
    async fn exec(&mut self, argv: &[String], line: usize, text: &str) -> anyhow::Result<()> {
        let (command, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("Exec without a command"))?;
        let log_path = self.pair.work_dir().join("commands.log");
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
                answer: format!(
                    "the command exited with {status}: {}",
                    tail(&log_path, LOG_TAIL_LINES)
                ),
                expected: "exit status 0".into(),
            }),
            Ok(Err(e)) => bail!("waiting for {command} failed: {e}"),
            Err(_) => self.background.push(child),
        }
        // The command may have started or stopped servers: reconnect before the next request.
        for server in PairMember::BOTH {
            self.reset(server);
        }
        Ok(())
    }

    /// After the judge flipped its belief: drop connections, and nothing else. `Switch` only
    /// records a belief, instantly, as the classic tester did; scripts put it before or after
    /// the `Exec` that starts the server, so waiting here could wait for a server nobody has
    /// started yet. The wait happens before the next operation ([`Runner::settle`]).
    fn switch(&mut self) {
        for s in PairMember::BOTH {
            self.reset(s);
        }
        self.unsettled = true;
    }

    /// Lets a disturbed pair settle, then compares the dump of every server believed up with the
    /// model (primary first, so the backup is held to what the primary showed).
    pub(super) async fn final_check(&mut self) -> anyhow::Result<()> {
        if self.pair.running.iter().all(|r| *r) {
            let deadline = Instant::now() + self.options.sync_timeout;
            let both = PairMember::BOTH.map(|s| (s, Want::Synced));
            self.pair.wait_for(deadline, &both).await?;
        }
        for server in PairMember::BOTH {
            if !self.judge.up().contains(server) {
                continue;
            }
            let started = Instant::now();
            let dump: Result<Vec<(Bytes, Bytes)>, Answer> = if let Some(http) = &self.pair.http {
                crate::tester::http::dump(&http[server.index()], OP_TIMEOUT).await
            } else {
                match self.client(server).await {
                    Ok(client) => match tokio::time::timeout(OP_TIMEOUT, client.dump()).await {
                        Ok(Ok(entries)) => Ok(entries),
                        Ok(Err(e)) => Err(Answer::from(e)),
                        Err(_) => Err(Answer::no_answer_within(OP_TIMEOUT)),
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
    pub(super) async fn close(&mut self) {
        self.pair.close().await;
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
        Err(_) => Answer::no_answer_within(OP_TIMEOUT),
    }
}
