//! Scenario scripts: the text a user writes, parsed into steps that keep their line numbers.
//!
//! One instruction per line, words separated by whitespace; blank lines and lines starting with
//! `--` or `#` are comments. Instruction names and server names are matched without regard to
//! case. Parsing collects every problem in the file, each with its line, so a script is fixed in
//! one pass rather than one error at a time; nothing unknown or malformed is ever skipped
//! silently.
//!
//! Two rules for those problems ([`ParseMode`]). The default is the classic tester's: a key
//! repeated in a block, `Exec`/`Sleep`/`Switch` inside a block, an unknown or malformed line is an
//! *illegal instruction*, reported with its line ([`Script::illegal`]) and skipped, and the rest
//! of the script runs; suites written for the classic tester rely on that. `--strict` makes each
//! of them an error, and the script does not run.
//!
//! Keys and values are single words (no whitespace). Everything the runner needs to know about a
//! script is decided here: which lines are operations, which change the servers, which run
//! concurrently (`Block` … `Endblock`, each key at most once, checked now rather than at run
//! time), and whether the script tracks server liveness through `Switch` (see
//! [`Script::uses_switch`]).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use quickv_proto::Op;

/// One of the two servers of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairMember {
    /// Serves client operations and replicates writes to the backup.
    Primary,
    /// Holds the replica; takes over the data when the primary restarts empty.
    Backup,
}

impl PairMember {
    /// Both servers, primary first (the order dumps are compared in).
    pub const BOTH: [PairMember; 2] = [PairMember::Primary, PairMember::Backup];

    /// The lowercase name used in scripts, flags and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PairMember::Primary => "primary",
            PairMember::Backup => "backup",
        }
    }

    /// The other server of the pair (its peer).
    pub fn other(self) -> PairMember {
        match self {
            PairMember::Primary => PairMember::Backup,
            PairMember::Backup => PairMember::Primary,
        }
    }

    /// Position in per-server arrays (`[primary, backup]`).
    pub fn index(self) -> usize {
        match self {
            PairMember::Primary => 0,
            PairMember::Backup => 1,
        }
    }
}

impl fmt::Display for PairMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client operation on one key, always sent to the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// `Insert K V`: create the key; refused with `exists` if present.
    Insert {
        /// The key to create.
        key: String,
        /// Its value.
        value: String,
    },
    /// `Update K V`: replace the value; refused with `not found` if absent.
    Update {
        /// The key to change.
        key: String,
        /// The new value.
        value: String,
    },
    /// `Remove K`: delete the key, answering its old value.
    Remove {
        /// The key to delete.
        key: String,
    },
    /// `Get K`: read the key.
    Get {
        /// The key to read.
        key: String,
    },
}

impl KvOp {
    /// The key the operation addresses (a block may name each key once).
    pub fn key(&self) -> &str {
        match self {
            KvOp::Insert { key, .. }
            | KvOp::Update { key, .. }
            | KvOp::Remove { key }
            | KvOp::Get { key } => key,
        }
    }

    /// True for insert, update and remove: the operations that must be replicated, and that a
    /// primary without its backup must refuse.
    pub fn is_write(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }

    /// The protocol request for this operation.
    pub fn to_op(&self) -> Op {
        let bytes = |s: &String| Bytes::from(s.clone());
        match self {
            KvOp::Insert { key, value } => Op::Insert {
                key: bytes(key),
                value: bytes(value),
            },
            KvOp::Update { key, value } => Op::Update {
                key: bytes(key),
                value: bytes(value),
            },
            KvOp::Remove { key } => Op::Delete { key: bytes(key) },
            KvOp::Get { key } => Op::Get { key: bytes(key) },
        }
    }
}

/// An instruction that changes the servers, the runner's beliefs about them, or just time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Start S` (or the classic `Exec bin/start_server -p|-b`): make sure the server runs, then
    /// wait until it answers and, with its peer running, until the pair is in sync.
    Start(PairMember),
    /// `Stop S` (or the classic `Exec bin/stop_server -p|-b`): graceful stop (SIGTERM).
    Stop(PairMember),
    /// `Kill S`: SIGKILL, no goodbye to the peer or the clients.
    Kill(PairMember),
    /// `Exec CMD ARGS…`: run a command (not through a shell), wait up to a second for it.
    Exec(Vec<String>),
    /// `Switch S`: flip the belief that the server is up (classic scripts that start servers
    /// with `Exec`).
    Switch(PairMember),
    /// `Sleep MS`: wait.
    Sleep(Duration),
}

/// The operations and actions between `Block` and `Endblock`, split at parse time: all operations
/// are sent at once, while the actions run in order alongside them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// Operations sent concurrently; no two address the same key.
    pub ops: Vec<Step<KvOp>>,
    /// Server actions performed in order while the operations are in flight.
    pub actions: Vec<Step<Action>>,
}

/// What one top-level line of a script asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// A single operation, answered before the next line runs.
    Op(KvOp),
    /// A server or timing action.
    Action(Action),
    /// A concurrent block (its line is the `Block` line).
    Block(Block),
}

/// One parsed line with where it came from, so every report can name the line and show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<T> {
    /// 1-based line number in the script.
    pub line: usize,
    /// The line as written, whitespace normalised; shown in reports.
    pub text: String,
    /// What the line means.
    pub item: T,
}

/// A parsed scenario script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// The name reports use (the file name).
    pub name: String,
    /// The directory `Exec` commands run in (the script's own, so relative paths work).
    pub dir: PathBuf,
    /// The top-level steps in order.
    pub steps: Vec<Step<Instruction>>,
    /// True when the script contains `Switch`: beliefs about which servers are up then change
    /// only through `Switch` (classic style), otherwise `Start`/`Stop`/`Kill` update them.
    pub uses_switch: bool,
    /// Lines skipped as *illegal instructions* under the classic rule ([`ParseMode::Classic`]),
    /// each with its line number and why. They are reported, not sent, not counted, and do not
    /// fail the script. Always empty under [`ParseMode::Strict`] (they are errors there).
    pub illegal: Vec<ParseError>,
}

/// How a script's mistakes are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParseMode {
    /// The classic tester's rule (the default): a key repeated in a `Block`, `Exec`, `Sleep` or
    /// `Switch` inside a block, an unknown or malformed instruction, a stray `Endblock` or a
    /// nested `Block` are *illegal instructions*: reported with their line, skipped, and the
    /// script goes on. A `Block` never closed is closed at the end of the file (and reported).
    #[default]
    Classic,
    /// Every one of those is an error and the script does not run (`quickv test --strict`).
    Strict,
}

/// A line that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The script file.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// One or more lines are malformed; every one is listed.
    #[error("{}", lines(.0))]
    Parse(Vec<ParseError>),
}

fn lines(errors: &[ParseError]) -> String {
    errors
        .iter()
        .map(ParseError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `Block` whose `Endblock` has not been seen yet.
struct OpenBlock {
    /// Line of the `Block` instruction, for errors and reports.
    line: usize,
    /// What has been parsed inside it so far.
    block: Block,
    /// First line each key appeared on, to reject a second use.
    keys: HashMap<String, usize>,
}

impl OpenBlock {
    fn new(line: usize) -> OpenBlock {
        OpenBlock {
            line,
            block: Block::default(),
            keys: HashMap::new(),
        }
    }

    fn into_step(self) -> Step<Instruction> {
        Step {
            line: self.line,
            text: "Block".into(),
            item: Instruction::Block(self.block),
        }
    }
}

impl Script {
    /// Reads and parses a script file under the classic rule; its name is the file name.
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        Script::load_with(path, ParseMode::Classic)
    }

    /// Reads and parses a script file; its name is the file name.
    pub fn load_with(path: &Path, mode: ParseMode) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut script = Script::parse_with(&name, &text, mode)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            script.dir = dir.to_path_buf();
        }
        Ok(script)
    }

    /// Parses script text under the classic rule (illegal lines are skipped and listed in
    /// [`Script::illegal`]).
    pub fn parse(name: &str, text: &str) -> Result<Script, ScriptError> {
        Script::parse_with(name, text, ParseMode::Classic)
    }

    /// Parses script text. Under [`ParseMode::Strict`] every malformed line is an error, all of
    /// them reported; under [`ParseMode::Classic`] they are skipped and listed in
    /// [`Script::illegal`], and parsing never fails.
    pub fn parse_with(name: &str, text: &str, mode: ParseMode) -> Result<Script, ScriptError> {
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        let mut open: Option<OpenBlock> = None;
        let mut uses_switch = false;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let words: Vec<&str> = raw.split_whitespace().collect();
            let Some((first, args)) = words.split_first() else {
                continue;
            };
            if first.starts_with("--") || first.starts_with('#') {
                continue;
            }
            let text = words.join(" ");
            let mut fail = |message: String| problems.push(ParseError { line, message });
            match first.to_ascii_lowercase().as_str() {
                "block" => {
                    if !args.is_empty() {
                        fail("Block takes no arguments".into());
                    } else if let Some(outer) = &open {
                        fail(format!(
                            "Block inside the Block opened on line {}; blocks do not nest",
                            outer.line
                        ));
                    } else {
                        open = Some(OpenBlock::new(line));
                    }
                }
                "endblock" => {
                    if !args.is_empty() {
                        fail("Endblock takes no arguments".into());
                    } else if let Some(done) = open.take() {
                        steps.push(done.into_step());
                    } else {
                        fail("Endblock without a Block".into());
                    }
                }
                // Checked on the word, before `Exec bin/start_server -p` is read as `Start`.
                word @ ("exec" | "sleep") if open.is_some() => {
                    let outer = open.as_ref().map_or(0, |o| o.line);
                    let name = if word == "exec" { "Exec" } else { "Sleep" };
                    fail(format!(
                        "{name} is not allowed inside the Block opened on line {outer}"
                    ));
                }
                _ => match parse_instruction(first, args) {
                    Err(message) => fail(message),
                    Ok(item) => {
                        let is_switch = matches!(item, Instruction::Action(Action::Switch(_)));
                        match &mut open {
                            None => {
                                uses_switch |= is_switch;
                                steps.push(Step { line, text, item });
                            }
                            Some(outer) => {
                                if let Err(message) = outer.add(Step { line, text, item }) {
                                    fail(message);
                                }
                            }
                        }
                    }
                },
            }
        }
        if let Some(unclosed) = open {
            problems.push(ParseError {
                line: unclosed.line,
                message: match mode {
                    ParseMode::Strict => "Block is never closed by Endblock".into(),
                    ParseMode::Classic => {
                        "Block is never closed by Endblock; closed at the end of the file".into()
                    }
                },
            });
            steps.push(unclosed.into_step());
        }
        match mode {
            ParseMode::Strict if !problems.is_empty() => Err(ScriptError::Parse(problems)),
            _ => Ok(Script {
                name: name.to_string(),
                dir: PathBuf::from("."),
                steps,
                uses_switch,
                illegal: problems,
            }),
        }
    }

    /// Number of client operations the script sends (the `N ops` of a report).
    pub fn op_count(&self) -> usize {
        self.steps
            .iter()
            .map(|step| match &step.item {
                Instruction::Op(_) => 1,
                Instruction::Block(block) => block.ops.len(),
                Instruction::Action(_) => 0,
            })
            .sum()
    }
}

impl OpenBlock {
    /// Adds a parsed line to the block, enforcing the block rules: each key once; no `Exec`,
    /// `Sleep` or `Switch` (the classic tester's rule). `Start`, `Stop` and `Kill` run in order
    /// while the block's operations are in flight.
    fn add(&mut self, step: Step<Instruction>) -> Result<(), String> {
        let Step { line, text, item } = step;
        match item {
            Instruction::Op(op) => {
                if let Some(first) = self.keys.get(op.key()) {
                    return Err(format!(
                        "key {:?} is already used on line {first} of the Block opened on line {}; \
                         a key may appear once per block",
                        op.key(),
                        self.line
                    ));
                }
                self.keys.insert(op.key().to_string(), line);
                self.block.ops.push(Step {
                    line,
                    text,
                    item: op,
                });
            }
            Instruction::Action(Action::Switch(_)) => {
                return Err(
                    "Switch is not allowed inside a Block: it records a belief, not a concurrent \
                     event"
                        .into(),
                )
            }
            Instruction::Action(Action::Exec(_) | Action::Sleep(_)) => {
                return Err(format!(
                    "{text}: not allowed inside the Block opened on line {}",
                    self.line
                ))
            }
            Instruction::Action(action) => self.block.actions.push(Step {
                line,
                text,
                item: action,
            }),
            Instruction::Block(_) => return Err("blocks do not nest".into()),
        }
        Ok(())
    }
}

/// Parses one instruction other than `Block`/`Endblock`.
fn parse_instruction(name: &str, args: &[&str]) -> Result<Instruction, String> {
    let op = |op| Ok(Instruction::Op(op));
    let action = |action| Ok(Instruction::Action(action));
    match name.to_ascii_lowercase().as_str() {
        "insert" => {
            let [key, value] = exactly(name, args, "KEY VALUE")?;
            op(KvOp::Insert { key, value })
        }
        "update" => {
            let [key, value] = exactly(name, args, "KEY VALUE")?;
            op(KvOp::Update { key, value })
        }
        "remove" => {
            let [key] = exactly(name, args, "KEY")?;
            op(KvOp::Remove { key })
        }
        "get" => {
            let [key] = exactly(name, args, "KEY")?;
            op(KvOp::Get { key })
        }
        "start" => action(Action::Start(server(name, args)?)),
        "stop" => action(Action::Stop(server(name, args)?)),
        "kill" => action(Action::Kill(server(name, args)?)),
        "switch" => action(Action::Switch(server(name, args)?)),
        "sleep" => {
            let [ms] = exactly(name, args, "MILLISECONDS")?;
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("{name} needs a whole number of milliseconds, got {ms:?}"))?;
            action(Action::Sleep(Duration::from_millis(ms)))
        }
        "exec" => {
            if args.is_empty() {
                return Err(format!("{name} needs a command"));
            }
            action(
                classic_exec(args)
                    .unwrap_or_else(|| Action::Exec(args.iter().map(|a| a.to_string()).collect())),
            )
        }
        _ => Err(format!(
            "unknown instruction {name:?}; known: Insert, Update, Remove, Get, Block, Endblock, \
             Start, Stop, Kill, Exec, Switch, Sleep"
        )),
    }
}

/// The classic tester's server scripts, `bin/start_server -p|-b` and `bin/stop_server -p|-b`
/// (any directory), mean `Start`/`Stop`, so classic scripts run unchanged against real processes.
fn classic_exec(args: &[&str]) -> Option<Action> {
    let [command, flag] = args else { return None };
    let server = match *flag {
        "-p" => PairMember::Primary,
        "-b" => PairMember::Backup,
        _ => return None,
    };
    match Path::new(command).file_name()?.to_str()? {
        "start_server" => Some(Action::Start(server)),
        "stop_server" => Some(Action::Stop(server)),
        _ => None,
    }
}

/// Exactly `N` arguments, or an error showing the expected form.
fn exactly<const N: usize>(name: &str, args: &[&str], usage: &str) -> Result<[String; N], String> {
    <[&str; N]>::try_from(args)
        .map(|words| words.map(str::to_string))
        .map_err(|_| {
            format!(
                "expected `{name} {usage}`, got {} argument{}",
                args.len(),
                if args.len() == 1 { "" } else { "s" }
            )
        })
}

/// The single `primary|backup` argument of a server instruction.
fn server(name: &str, args: &[&str]) -> Result<PairMember, String> {
    let [which] = exactly(name, args, "primary|backup")?;
    match which.to_ascii_lowercase().as_str() {
        "primary" => Ok(PairMember::Primary),
        "backup" => Ok(PairMember::Backup),
        _ => Err(format!("{name} needs `primary` or `backup`, got {which:?}")),
    }
}

#[cfg(test)]
mod tests;
