//! # quickv (the tools)
//!
//! The root package of the quickv workspace: everything a user runs besides the server itself,
//! and the one thin `quickv` binary (`src/bin/quickv.rs` → [`cli::main`]). The server is the
//! `quickv-server` crate, the client library `quickv-client`; nothing depends on this package.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | the `quickv` command line: parsing, and a call into the server library, the client or a tool |
//! | [`up`] | `quickv up`: the local pair as supervised child processes |
//! | [`supervisor`] | servers as child processes: spawn, wait for the ready line, signal, wait for a status (used by `up`, the tester and the tests) |
//! | [`tester`] | scenario scripts: parser, model of the table, judge, runner (`quickv test`) |
//! | [`bench`](mod@bench) | `quickv bench`: the load generator, HDR histograms, plots, comparison tables |
//! | [`history`] | recorded client histories, a recorded load, and the per-key linearizability checker |
//! | [`http`] | the one HTTP/1.1 client of the tools and the tests (one request per connection) |
//!
//! See `docs/architecture.md` for the workspace and the path of a request.

/// Prints a line to stdout, ignoring a closed pipe (`quickv status | head` must not panic).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod bench;
pub mod cli;
pub mod history;
pub mod http;
pub mod supervisor;
pub mod tester;
pub mod up;
