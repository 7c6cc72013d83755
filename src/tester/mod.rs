//! The scenario tester behind `quickv test` and `tests/scenarios.rs`.
//!
//! A scenario script (DESIGN §5, `docs/tester.md`) says what to do — operations, concurrent
//! blocks, starting, stopping and killing servers — but never what the answers should be. The
//! tester works that out itself, as the classic tester this project descends from did: it keeps a
//! model of the table and of which servers are up, and judges every answer against it. Writing
//! expectations into scripts would make each script a second implementation to keep right; a
//! model written once is checked by every script.
//!
//! The pieces, each in its own file:
//!
//! | module | concern |
//! |---|---|
//! | [`script`] | parsing: lines to [`script::Step`]s with their line numbers; every error reported |
//! | [`model`] | which servers are believed up; what each key may hold (a set, for honesty) |
//! | [`judge`] | sans-IO: answer + model → violations and an updated model |
//! | [`runner`] | I/O: a real pair (our own child processes, or someone else's), waits on `status` |
//! | [`http`] | `--via http`: operations and dumps over the HTTP gateway instead of QUIC |
//!
//! The judge does no I/O, so its unit tests feed it fabricated answers — a wrong value, a write
//! that succeeded while the backup was down, a stale backup dump — and check that each one is
//! reported on the right line. A tester that cannot fail would be worse than none.

pub mod http;
pub mod judge;
pub mod model;
pub mod runner;
pub mod script;

pub use judge::{Answer, At, Judge, Violation};
pub use runner::{run, External, PairSpec, RunOptions, ScriptReport, Via};
pub use script::{ParseMode, Script, ScriptError};
