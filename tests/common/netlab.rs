//! The network lab of `tests/netlab.rs` (see its module doc): the lab built and torn down around an
//! outer test, the inner run inside host h3, servers in the lab's hosts, and a recorded load
//! judged by the history checker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quickv::history::{
    check, History, HistoryReport, Operation, Recorder, Workload, WorkloadFigures,
};
use quickv_client::{ClientConfig, ReadFrom};
use tokio_util::sync::CancellationToken;

use super::{connect, wait_state};

/// Set in the environment of the inner run (inside host h3).
pub const INNER: &str = "QUICKV_NETLAB_INNER";
/// The lab's addresses (fixed by netlab.sh: host hN is 10.99.0.N).
pub const PRIMARY: &str = "10.99.0.1:4470";
pub const BACKUP: &str = "10.99.0.2:4470";
/// Acknowledged writes to wait for before a fault and again after the repair.
pub const PROGRESS: u64 = 100;
/// Longest wait for any condition.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Builds a lab named after `tag`, runs `inner` inside host h3, tears the lab down.
pub fn outer(tag: &str, inner: &str) {
    let lab = match Lab::prepare(tag) {
        Ok(lab) => lab,
        Err(why) => {
            println!("SKIP: {inner}: {why}");
            return;
        }
    };
    let exe = std::env::current_exe().expect("current test binary");
    let out = lab
        .command(&["exec", "h3"])
        .arg(exe)
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .env(INNER, "1")
        .output()
        .expect("run the inner test");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{inner} failed inside the lab");
    drop(lab);
}

/// A lab this test built; `netlab.sh down` when dropped.
pub struct Lab {
    script: PathBuf,
    prefix: String,
    state: PathBuf,
}

impl Lab {
    /// Checks the prerequisites and brings up hosts h1 (primary), h2 (backup), h3 (clients).
    pub fn prepare(tag: &str) -> Result<Lab, String> {
        let script = script()?;
        if !is_root() {
            return Err("not running as root (the lab needs network namespaces)".into());
        }
        for (tool, args) in [
            ("ip", &["netns", "list"][..]),
            ("nft", &["--version"][..]),
            ("iptables", &["--version"][..]),
            ("nsenter", &["--version"][..]),
            ("python3", &["--version"][..]),
        ] {
            let ok = Command::new(tool)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`{tool} {}` is unavailable (apt-get install -y nftables iptables iputils-ping iproute2 python3)",
                    args.join(" ")
                ));
            }
        }
        // One lab per test, under its own names, so tests may run in parallel.
        let prefix = format!("qf{tag}{}", std::process::id() % 100_000);
        let state = std::env::temp_dir().join(format!("quickv-netlab-{prefix}"));
        let lab = Lab {
            script,
            prefix,
            state,
        };
        let out = lab
            .command(&["up", "3"])
            .output()
            .map_err(|e| format!("cannot run netlab.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the kernel refused to build the lab: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(lab)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.script);
        c.args(args)
            .env("NETLAB_PREFIX", &self.prefix)
            .env("NETLAB_STATE", &self.state);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self
            .command(&["down"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// `$QUICKV_NETLAB`, else `../shared/netlab.sh` from the crate root.
pub fn script() -> Result<PathBuf, String> {
    let path = match std::env::var_os("QUICKV_NETLAB") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/netlab.sh"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "netlab script not found at {} (set QUICKV_NETLAB)",
            path.display()
        ))
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

// The inner side: runs in host h3.

/// The lab as seen from inside: the script (with the outer test's lab names in the environment).
pub struct Inside {
    script: PathBuf,
}

impl Inside {
    /// `None` unless this is an inner run.
    pub fn get() -> Option<Inside> {
        if std::env::var_os(INNER).is_none() {
            println!("runs only inside a lab, started by its netlab_* test");
            return None;
        }
        Some(Inside {
            script: script().expect("the outer test found the script"),
        })
    }

    /// `netlab.sh ARGS…`, which must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new(&self.script)
            .args(args)
            .output()
            .expect("run netlab.sh");
        assert!(
            out.status.success(),
            "netlab.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A server running in a lab host; SIGKILLed when dropped.
pub struct LabServer {
    child: Child,
}

impl LabServer {
    /// `netlab.sh exec HOST quickv server …`, waiting for "listening on" on its stdout.
    pub fn start(
        inside: &Inside,
        host: &str,
        role: &str,
        listen: &str,
        peer: &str,
        certs: &Path,
    ) -> LabServer {
        let mut child = Command::new(&inside.script)
            .args([
                "exec",
                host,
                env!("CARGO_BIN_EXE_quickv"),
                "server",
                "--role",
                role,
            ])
            .args(["--listen", listen, "--peer", peer, "--certs"])
            .arg(certs)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server in the lab");
        super::await_listening(&mut child, role);
        LabServer { child }
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pair in the lab under recorded load from h3.
pub struct LabRun {
    pub name: &'static str,
    pub inside: Inside,
    pub certs: tempfile::TempDir,
    pub primary: Option<LabServer>,
    pub _backup: LabServer,
    pub rec: Recorder,
    pub stop: CancellationToken,
    /// The load task, until it is stopped.
    pub load: Option<tokio::task::JoinHandle<WorkloadFigures>>,
    /// The load's figures once it stopped.
    pub figures: WorkloadFigures,
    /// Whether the load reads at both servers (judged in one history) or at the primary only.
    pub reads_at_both: bool,
    pub started: Instant,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("lab address")
}

impl LabRun {
    /// Certificates with the hosts' addresses as SANs, both servers, sync, then the load:
    /// 4 clients on 2 hot keys (moving every 40 operations of a client).
    pub async fn start(inside: Inside, name: &'static str, seed: u64) -> LabRun {
        LabRun::start_with(inside, name, seed, reads_at_both()).await
    }

    /// [`LabRun::start`], with reads at both servers (`both`) or at the primary only.
    pub async fn start_with(inside: Inside, name: &'static str, seed: u64, both: bool) -> LabRun {
        let started = Instant::now();
        let certs = tempfile::tempdir().expect("tempdir");
        let made = Command::new(env!("CARGO_BIN_EXE_quickv"))
            .args(["certs", "--san", "10.99.0.1", "--san", "10.99.0.2", "--dir"])
            .arg(certs.path())
            .stdout(Stdio::null())
            .status()
            .expect("quickv certs");
        assert!(made.success());
        let primary = LabServer::start(&inside, "h1", "primary", PRIMARY, BACKUP, certs.path());
        let backup = LabServer::start(&inside, "h2", "backup", BACKUP, PRIMARY, certs.path());
        for a in [PRIMARY, BACKUP] {
            wait_state(addr(a), certs.path(), "sync").await;
        }
        let rec = Recorder::new();
        let mut cfg = ClientConfig::new(certs.path());
        cfg.connect_timeout = Duration::from_secs(2);
        cfg.idle_timeout = Duration::from_secs(3);
        cfg.streams = 1;
        // These scenarios study writes left indeterminate by a cut link (kept at the heal if the
        // backup applied them, dropped if not); session retries would hold each client on one write for its whole deadline.
        // tests/exactly_once.rs covers the retries.
        cfg.retry_writes = false;
        // Reads go to both servers and are judged in one history with the writes (issue 22),
        // unless `QUICKV_NETLAB_READS=primary`.
        if both {
            cfg.read_from = ReadFrom::Any;
        }
        let mut w = Workload::new(PRIMARY, cfg);
        w.backup_addr = both.then(|| BACKUP.to_string());
        w.clients = 4;
        w.hot_keys = 2;
        w.ops_per_round = 40;
        w.ops_per_client = 3_000;
        w.max_time = Duration::from_secs(60);
        w.pause = Duration::from_millis(5);
        w.retry_pause = Duration::from_millis(50);
        w.seed = seed;
        let stop = CancellationToken::new();
        let load = tokio::spawn({
            let (rec, stop) = (rec.clone(), stop.clone());
            async move { w.run(&rec, stop).await }
        });
        LabRun {
            name,
            inside,
            certs,
            primary: Some(primary),
            _backup: backup,
            rec,
            stop,
            load: Some(load),
            figures: WorkloadFigures::default(),
            reads_at_both: both,
            started,
        }
    }

    pub async fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {PATIENCE:?} (acknowledged {}, refused {}, indeterminate {}, failed {})",
                self.name,
                self.rec.acknowledged_writes(),
                self.rec.refused_writes(),
                self.rec.indeterminate_writes(),
                self.rec.failed_operations()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load (calls in flight end first) and keeps its figures.
    pub async fn stop_load(&mut self) {
        self.stop.cancel();
        if let Some(load) = self.load.take() {
            self.figures = load.await.expect("load");
        }
    }

    /// Starts the primary again in h1 (after it was killed).
    pub fn restart_primary(&mut self) {
        self.primary = Some(LabServer::start(
            &self.inside,
            "h1",
            "primary",
            PRIMARY,
            BACKUP,
            self.certs.path(),
        ));
    }

    pub async fn progress(&self, n: u64) {
        let target = self.rec.acknowledged_writes() + n;
        self.wait_for("acknowledged writes", || {
            self.rec.acknowledged_writes() >= target
        })
        .await;
    }

    pub async fn status(&self, a: &str) -> serde_json::Value {
        let c = connect(addr(a), self.certs.path()).await;
        let s = c.status_json().await.expect("status");
        c.close().await;
        s
    }

    /// Stops the load, heals everything, waits for sync, checks against both dumps, prints.
    pub async fn finish(mut self) -> (HistoryReport, History) {
        // Load first: the figures must describe the impaired network only.
        self.stop_load().await;
        let figures = self.figures;
        self.inside.run(&["heal"]);
        for a in [PRIMARY, BACKUP] {
            wait_state(addr(a), self.certs.path(), "sync").await;
        }
        let pd = connect(addr(PRIMARY), self.certs.path())
            .await
            .dump()
            .await
            .expect("primary dump");
        let bd = connect(addr(BACKUP), self.certs.path())
            .await
            .dump()
            .await
            .expect("backup dump");
        let history = self.rec.history();
        let report = check(&history, Some(&pd), Some(&bd));
        println!(
            "== {} ({:.1} s, {} operations issued, {} connects, {} failed connects, median acknowledged write {:.1} ms)\n{report}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            figures.operations,
            figures.connects,
            figures.connect_failures,
            median_write_ms(&history.ops)
        );
        if let Some(path) = std::env::var_os("QUICKV_NETLAB_HISTORY") {
            let _ = std::fs::write(path, history.to_json());
        }
        assert!(report.is_clean(), "{}: {report}", self.name);
        assert!(
            !self.reads_at_both || report.reads_at_backup > 0,
            "{}: no read was answered by the backup",
            self.name
        );
        (report, history)
    }
}

/// The load reads from both servers of the pair, unless `QUICKV_NETLAB_READS=primary`.
fn reads_at_both() -> bool {
    std::env::var("QUICKV_NETLAB_READS").map_or(true, |v| v != "primary")
}

pub fn median_write_ms(ops: &[Operation]) -> f64 {
    let mut lat: Vec<Duration> = ops
        .iter()
        .filter(|o| o.kind.is_write() && o.outcome.is_definite())
        .map(|o| o.complete.saturating_sub(o.invoke))
        .collect();
    lat.sort();
    lat.get(lat.len() / 2)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

pub fn count(s: &serde_json::Value, field: &str) -> u64 {
    s[field]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no {field}: {s}"))
}
