//! The client crate stands alone: a project outside the workspace that depends only on
//! `quickv-client` (examples/hello-client) builds, and talks to a real pair.
//!
//! The example is built with the same cargo, offline, into a target directory of its own under
//! `target/tmp`, so the first run compiles quinn/rustls/tokio once for it and later runs only
//! relink. Its lock file (git-ignored, like any generated one) is seeded from the workspace's
//! before each build, so it resolves to exactly the versions the workspace already fetched: cargo
//! keeps the entries the example needs and drops the rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Pair;

/// The cargo running this test.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The example's manifest, with its lock file seeded from the workspace's.
fn example_manifest() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/hello-client");
    std::fs::copy(root.join("Cargo.lock"), example.join("Cargo.lock"))
        .expect("seed the example's lock file from the workspace's");
    example.join("Cargo.toml")
}

/// Builds examples/hello-client and returns the path of its binary.
fn build_hello_client(manifest: &Path) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hello-client");
    let out = cargo()
        .args(["build", "--offline", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building examples/hello-client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target
        .join("debug")
        .join(format!("hello-client{}", std::env::consts::EXE_SUFFIX))
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("run hello-client")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_project_depending_only_on_quickv_client_talks_to_a_pair() {
    // What the example links: the client crate, never the server or its tools.
    let manifest = example_manifest();
    let tree = cargo()
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    assert!(tree.status.success(), "{}", text(&tree.stderr));
    let tree = text(&tree.stdout);
    assert!(tree.contains("quickv-client v"), "{tree}");
    for heavy in [
        "quickv v",
        "hyper",
        "plotters",
        "png",
        "indicatif",
        "clap",
        "rcgen",
        "toml",
        "tracing-subscriber",
        "tempfile",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(heavy)),
            "the client pulls in {heavy}:\n{tree}"
        );
    }

    let bin = build_hello_client(&manifest);
    let pair = Pair::start(&[]).await;
    let addr = pair.primary_addr.to_string();
    let certs = pair.certs.path().to_str().expect("utf-8 temp path");

    let out = run(&bin, &[&addr, certs, "hello", "from outside"]);
    assert!(
        out.status.success(),
        "hello-client failed: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("role=primary"), "{stdout}");
    assert!(stdout.contains("hello = from outside"), "{stdout}");

    // The write went through the real pair: acknowledged, so on the backup too.
    let primary = pair.primary_client().await;
    assert_eq!(
        primary.get("hello").await.expect("get").as_deref(),
        Some(&b"from outside"[..])
    );
    let converged = pair.assert_converged().await;
    assert_eq!(converged.len(), 1);

    // The server's refusal reaches the application as an error, with a failing exit status.
    let again = run(&bin, &[&addr, certs, "hello", "twice"]);
    assert!(
        !again.status.success(),
        "second insert of the same key succeeded"
    );
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        primary.get("hello").await.expect("get").as_deref(),
        Some(&b"from outside"[..])
    );

    // Certificates from another cluster are refused during the handshake, in plain words.
    let foreign = common::fresh_certs();
    let foreign_certs = foreign.path().to_str().expect("utf-8 temp path");
    let refused = run(&bin, &[&addr, foreign_certs, "other", "value"]);
    assert!(
        !refused.status.success(),
        "a foreign client certificate was accepted"
    );
    let why = text(&refused.stderr);
    assert!(why.contains("certificate") || why.contains("CA"), "{why}");
    assert_eq!(primary.get("other").await.expect("get"), None);
}
