//! Deterministic simulation of a primary/backup pair (in the style of FoundationDB's simulator and
//! TigerBeetle's VOPR).
//!
//! One seed drives everything: a virtual clock in milliseconds, a network whose peer streams
//! deliver in order per stream but with independent, sometimes long delays (so messages on
//! different streams overtake each other, e.g. a lane write overtakes `Synced`), connection cuts,
//! partitions, crashes that lose a server's memory, restarts, graceful shutdowns, a second (stale)
//! primary process, client connections lost with a write in flight, entries slipped into the
//! backup's store, and a large bucket behind a slow link. The servers run the real replication
//! logic without I/O, on virtual time (the `quickv-core` crate takes time as an argument; nothing reads the real clock):
//! the backup's whole side of the link ([`BackupLink`]: admission, supersession, the opening, the
//! transfer and its bucket jobs fenced by link generation, goodbye, the read fence, its timers),
//! the state machine and the hello rules ([`state::Machine`], [`state::admit`], [`state::decide`],
//! [`hello_of`]), the bootstrap transfer ([`snapshot_msgs`], [`TransferReceiver`]), the primary's
//! lanes ([`Lanes`]: decide, send, apply on ack, digest checks, resyncs, the ack timeout), the
//! backup's applier ([`StreamApplier`] through [`BackupShared::apply_pass`]), the store and its
//! session tables, and every frame goes through the real peer codec with the real frame limit.
//! The backup's side is pumped here as the server pumps it (`sim/backup.rs`): bucket jobs run as
//! events that end after a virtual delay, so a link can drop and a newer one be admitted while a
//! job of the old one still runs, and each connection's control messages reach the machine after
//! a seeded lag, so a superseded link's late messages arrive after its successor's admission.
//! The primary's side is pumped the same way (`sim/primary.rs`): its whole side of the link is
//! [`PrimaryLink`] (when to dial, the opening, settling the lost link's writes, the transfer and
//! its bucket jobs fenced by link generation, the lanes' opening, the ack timeout and the digest
//! checks, a backup's goodbye, the graceful stop), and the data streams' acks take the lanes' own
//! path ([`on_data`]). What is left here is moving bytes, virtual time, faults and the checker.
//!
//! Clients run operations on a few keys against the primary (and reads at the backup); every
//! operation and its outcome is recorded and judged by the project's history checker
//! ([`quickv::history::check`]): no acknowledged write lost, no refused write taking effect,
//! linearizable per key, and both stores equal after healing. Reads at the backup are judged in a
//! second pass, with the same rigour (issue 22's commit point), unless
//! `QUICKV_SIM_LENIENT_BACKUP_READS` is set (then a violation is only counted).
//!
//! `QUICKV_SIM_SEEDS=N` runs N seeds (default [`DEFAULT_SEEDS`]) from `QUICKV_SIM_FIRST_SEED`
//! (default 1); `QUICKV_SIM_SEED=S` replays one seed exactly (`QUICKV_SIM_TRACE=1` prints its
//! events). Every run prints coverage counters (`sim/coverage.rs`); a run of at least
//! [`FLOOR_SEEDS`] seeds fails if one of them stayed at zero. docs/replication.md, "The
//! simulator", says what runs here and what does not.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use std::sync::mpsc;
use tokio::sync::oneshot;

use quickv::history::{self, History, Kind, Observed, Operation};
use quickv_core::apply::{Pass, StreamApplier};
use quickv_core::backup_link::{BackupConfig, BackupLink, BackupShared, JobId, LinkEvent};
use quickv_core::commit_point::Settled;
use quickv_core::hello::hello_of;
use quickv_core::lanes::Lanes;
use quickv_core::primary_link::{on_data, DataStep, PrimaryConfig, PrimaryEvent, PrimaryLink};
use quickv_core::state::{Machine, Refusal};
use quickv_core::store::sessions::SessionLimits;
use quickv_core::store::{BucketId, Store};
use quickv_core::transfer::{snapshot_msgs, BucketJob};
use quickv_core::Counters;
use quickv_proto::peer::{LaneMark, PeerMsg};
use quickv_proto::{Limits, Reply, SessionWrite, WriteStamp};

use backup::Backup;
use primary::PLink;

#[path = "sim/backup.rs"]
mod backup;
#[path = "sim/clients.rs"]
mod clients;
#[path = "sim/coverage.rs"]
mod coverage;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/primary.rs"]
mod primary;
#[path = "sim/run.rs"]
mod run;

/// Virtual milliseconds.
type Ms = u64;

/// How long clients run with faults before the network heals.
const FAULT_PHASE_MS: Ms = 8_000;
/// How long the healed pair gets to reach sync and drain.
const HEAL_LIMIT_MS: Ms = 30_000;
/// The primary's ack timeout.
const ACK_TIMEOUT_MS: Ms = 1_000;
/// The step timeout (the server's: the larger of the ack and frame timeouts): how long a resync
/// may go unacknowledged.
const STEP_TIMEOUT_MS: Ms = 10_000;
/// How long a refused or stopping server waits for its goodbye to leave before it closes.
const CLOSE_GRACE_MS: Ms = 200;
/// Interval of the primary's digest checks.
const CHECK_EVERY_MS: Ms = 400;
/// Keys the clients share: few, so operations collide, in few buckets, so that snapshots and
/// resyncs carry several entries of mixed sizes per bucket.
const KEYS: usize = 10;
/// Recorded clients.
const CLIENTS: u32 = 3;
/// The client id of the bulk loader and of entries slipped into the backup's store.
const LOADER: u32 = 99;
/// Writes the bulk loader keeps in flight.
const LOADER_WINDOW: usize = 6;
/// How long a client retries a write whose fate is unknown (the call's deadline), virtual ms.
const RETRY_BUDGET_MS: Ms = 4_000;

/// The `Instant` virtual time 0 maps to: fixed for the process, and a day ahead of the real clock
/// so that no virtual instant minus a retry's age or margin falls before what `Instant` can hold.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| Instant::now() + Duration::from_secs(86_400))
}

/// splitmix64: small, fast, and the whole run follows from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Side {
    Primary,
    Backup,
}

/// Scheduled events.
#[derive(Debug)]
enum Event {
    /// Bytes of stream `stream` (0 = control) of connection `conn` reach `to`.
    Deliver {
        conn: u64,
        to: Side,
        stream: usize,
        bytes: Bytes,
    },
    /// `side` notices that connection `conn` is gone (idle timeout or close frame).
    LinkDown {
        conn: u64,
        side: Side,
        cause: String,
    },
    /// The primary's link machine's timer (`proc`: whose, the live or the stale process; `at`
    /// tells a stale one from the one armed).
    PrimaryTimer { proc: u64, at: Ms },
    /// A bucket job of the primary (a bucket of the backup's snapshot) ends.
    PrimaryJob { proc: u64, id: JobId },
    /// Client `i` starts its next operation.
    Client(u32),
    /// The write in this pending slot is sent again with the same session stamp.
    Retry(usize),
    /// A fault is injected.
    Fault,
    /// A crashed server starts again (empty).
    Restart(Side),
    /// The partition ends.
    Heal,
    /// Both servers sweep idle session records (the server's timer).
    Sweep,
    /// A connection is closed (after a refusal's goodbye had time to leave).
    Cut { conn: u64, cause: String },
    /// A bulk loader fills one bucket through the primary, once it takes writes.
    Preload,
    /// The stale primary process ends.
    ZombieExit,
    /// A graceful stop of `side` (process `proc`) goes on: done once drained or at `deadline`.
    Stopping { side: Side, proc: u64, deadline: Ms },
    /// A stopped server's process ends (its goodbye had time to leave).
    Exit { side: Side, proc: u64 },
    /// The backup's link machine's timer (`at` tells a stale one from the one armed).
    BackupTimer { proc: u64, at: Ms },
    /// Control messages of a connection reach the backup's machine (after the driver's lag).
    BackupCtl { conn: u64, msgs: Vec<PeerMsg> },
    /// The primary drops connection `conn` itself (and redials after its backoff).
    PrimaryDrop { conn: u64 },
    /// A bucket job of the backup (a bootstrap's bucket or a lane resync) ends.
    BackupJob { proc: u64, id: JobId },
}

/// One QUIC connection of the peer link.
struct Conn {
    alive: bool,
    /// The two processes it joins.
    primary_proc: u64,
    backup_proc: u64,
    /// Per (direction, stream): the time of the last delivery, so a stream stays ordered.
    last: HashMap<(Side, usize), Ms>,
}

struct Primary {
    proc: u64,
    /// The primary's side of the link: the code the server runs.
    core: PrimaryLink,
    store: Arc<Store>,
    lanes: Lanes,
    /// The live connection as the driver holds it.
    link: Option<PLink>,
    /// When the machine's timer is armed.
    timer_at: Option<Ms>,
    /// Bucket jobs running (virtually), by id.
    jobs: HashMap<JobId, BucketJob>,
    /// Client writes waiting for their answer.
    waiting: Vec<(usize, oneshot::Receiver<Reply>)>,
    /// A graceful stop is under way.
    stopping: bool,
}

/// A client operation in flight or done.
struct Pending {
    client: u32,
    key: Bytes,
    kind: Kind,
    invoke: Ms,
    /// A write's session stamp: client `c` is session `c + 1`, numbering its writes from 1.
    stamp: Option<WriteStamp>,
    /// An attempt may have reached the primary: only a definite answer (or the retry budget)
    /// ends the operation now, as in the client library.
    maybe_applied: bool,
    /// A read sent to the backup (recorded apart: issue 22).
    at_backup: bool,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    events: HashMap<u64, Event>,
    limits: Limits,
    peer_streams: usize,
    primary: Option<Primary>,
    backup: Option<Backup>,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    partitioned: bool,
    faults: bool,
    clients_on: bool,
    /// (primary process, backup process) pairs whose link reached the lanes: after that, either
    /// may die without losing acknowledged writes (the test's oracle, independent of `current`).
    linked: HashSet<(u64, u64)>,
    /// The keys clients use.
    keys: Vec<Bytes>,
    pending: Vec<Option<Pending>>,
    ops: Vec<Operation>,
    values: u64,
    /// Last write sequence number per client (its session).
    write_seqs: Vec<u64>,
    log: Vec<String>,
    /// What the seed exercised.
    cov: coverage::Coverage,
    /// Session table bounds of both servers (small in some seeds, so that records are evicted).
    session_limits: SessionLimits,
    /// Writes whose client connection was lost while they waited for their ack: (slot, primary
    /// process, the abandoned answer channel). A retry sent while one is unanswered is a
    /// duplicate of an in-flight write.
    orphans: Vec<(usize, u64, oneshot::Receiver<Reply>)>,
    /// The epoch each server's state file holds (primary, backup): restored at a restart.
    epoch_files: [u64; 2],
    /// A second primary process holding stale data from an older link, while it runs.
    zombie: Option<Primary>,
    /// The primary's data and epoch at some earlier point: what a stale process would hold.
    frozen: Option<(u64, Vec<(Bytes, Bytes)>)>,
    /// Every store of the seed (for the session tables' eviction counters).
    stores: Vec<Arc<Store>>,
    /// Reads answered by (or refused at) the backup, judged apart from `ops` (issue 22).
    backup_ops: Vec<Operation>,
    /// Link bandwidth in bytes per virtual ms, in seeds with a slow link.
    bandwidth: Option<u64>,
    /// Per (connection, lane): when a mismatch arrived and the offset of the resync it started.
    resync_watch: HashMap<(u64, usize), (Ms, u64)>,
    /// No fault is injected before this time (a slow resync runs its course).
    quiet_until: Ms,
    /// Entries the bulk loader has still to write.
    load: Vec<(Bytes, Bytes)>,
    /// When the live primary process (not the stale one) was first refused as stale: only a
    /// primary cut off while another primary linked with the backup may be; the live one never
    /// is (review F6: a backup that adopted a newer link's epoch through a superseded link's late
    /// message refuses its own primary).
    live_refused_as_stale: Option<String>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let peer_streams = rng.range(1, 4) as usize;
        // Small limits, so snapshots and resyncs mix values up to the limit in one bucket.
        let limits = Limits::new(64, 4096);
        let session_limits = if rng.chance(30) {
            SessionLimits {
                window: rng.range(1, 4) as usize,
                max_sessions: rng.range(1, 2) as usize,
                max_idle: Duration::from_millis(rng.range(500, 3000)),
                ..SessionLimits::default()
            }
        } else {
            SessionLimits::default()
        };
        let big_bucket = rng.chance(12);
        let bandwidth = big_bucket.then(|| rng.range(50, 120));
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            limits,
            peer_streams,
            primary: None,
            backup: None,
            conns: BTreeMap::new(),
            next_id: 1,
            partitioned: false,
            faults: true,
            clients_on: true,
            linked: HashSet::new(),
            keys: (0u32..)
                .map(|i| Bytes::from(format!("k{i}")))
                .filter(|k| BucketId::of(k).index() % 16 == 3)
                .take(KEYS)
                .collect(),
            pending: Vec::new(),
            ops: Vec::new(),
            values: 0,
            write_seqs: vec![0; CLIENTS as usize],
            log: Vec::new(),
            cov: coverage::Coverage::default(),
            session_limits,
            orphans: Vec::new(),
            epoch_files: [0; 2],
            zombie: None,
            frozen: None,
            stores: Vec::new(),
            backup_ops: Vec::new(),
            bandwidth,
            resync_watch: HashMap::new(),
            quiet_until: 0,
            load: Vec::new(),
            live_refused_as_stale: None,
        };
        sim.start(Side::Primary);
        sim.start(Side::Backup);
        if big_bucket {
            sim.cov.big_bucket_seeds += 1;
            sim.plan_preload();
        }
        let sweep = sim.session_limits.max_idle / 4;
        sim.at(sweep.as_millis() as Ms, Event::Sweep);
        for c in 0..CLIENTS {
            let at = sim.rng.range(0, 50);
            sim.at(at, Event::Client(c));
        }
        // A bulk load over a slow link takes a few seconds: faults start once it is in.
        let at = match big_bucket {
            true => sim.rng.range(4000, 5000),
            false => sim.rng.range(300, 1500),
        };
        sim.at(at, Event::Fault);
        sim
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn at(&mut self, delay: Ms, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn note(&mut self, what: String) {
        if std::env::var_os("QUICKV_SIM_TRACE").is_some() {
            eprintln!("[{:>6} ms] {what}", self.now);
        }
        self.log.push(format!("[{:>6} ms] {what}", self.now));
    }

    /// Virtual time as the `Instant` the server code takes.
    fn clock(&self) -> Instant {
        base() + Duration::from_millis(self.now)
    }

    /// An empty store as a starting process has: session tables born now, in virtual time.
    fn new_store(&mut self) -> Arc<Store> {
        let store = Arc::new(Store::with_session_limits(
            self.session_limits,
            self.clock(),
        ));
        self.stores.push(store.clone());
        store
    }

    fn start(&mut self, side: Side) {
        let proc = self.id();
        self.note(format!("{side:?} starts (process {proc})"));
        let store = self.new_store();
        match side {
            Side::Primary => {
                let core = PrimaryLink::new(
                    primary::primary_config(proc),
                    self.epoch_files[0],
                    self.clock(),
                );
                self.primary = Some(Primary {
                    proc,
                    core,
                    store,
                    lanes: Lanes::new(self.limits),
                    link: None,
                    timer_at: None,
                    jobs: HashMap::new(),
                    waiting: Vec::new(),
                    stopping: false,
                });
                self.primary_outputs();
            }
            Side::Backup => {
                let config = BackupConfig {
                    run_id: proc,
                    pair: 0,
                    live_grace: Duration::from_millis(ACK_TIMEOUT_MS + CHECK_EVERY_MS),
                    silence: Duration::from_millis(ACK_TIMEOUT_MS),
                    step: Duration::from_millis(STEP_TIMEOUT_MS),
                    drain: Duration::from_millis(faults::DRAIN_MS),
                    close_grace: Duration::from_millis(CLOSE_GRACE_MS),
                };
                let core =
                    BackupLink::new(config, store.clone(), self.epoch_files[1], self.clock());
                self.backup = Some(Backup {
                    proc,
                    core,
                    store,
                    counters: Counters::default(),
                    link: None,
                    jobs: HashMap::new(),
                    timer_at: None,
                    ctl_busy: HashMap::new(),
                    connected: HashSet::new(),
                    slow_readers: HashMap::new(),
                    stopping: false,
                });
            }
        }
    }

    // ---- the run ----

    fn step(&mut self) -> bool {
        let Some(Reverse((time, seq))) = self.queue.pop() else {
            return false;
        };
        let Some(event) = self.events.remove(&seq) else {
            return true;
        };
        self.now = time;
        match event {
            Event::Deliver {
                conn,
                to: Side::Primary,
                stream,
                bytes,
            } if self.zombie_conn(conn) => {
                self.as_zombie(|sim| sim.deliver(conn, Side::Primary, stream, bytes))
            }
            Event::Deliver {
                conn,
                to,
                stream,
                bytes,
            } => self.deliver(conn, to, stream, bytes),
            Event::LinkDown {
                conn,
                side: Side::Primary,
                cause,
            } if self.zombie_conn(conn) => {
                self.as_zombie(|sim| sim.primary_link_lost(conn, &cause))
            }
            Event::LinkDown { conn, side, cause } => match side {
                Side::Primary => self.primary_link_lost(conn, &cause),
                Side::Backup => self.backup_conn_closed(conn, cause),
            },
            Event::PrimaryTimer { proc, at }
                if self.zombie.as_ref().is_some_and(|z| z.proc == proc) =>
            {
                self.as_zombie(|sim| sim.primary_timer(proc, at))
            }
            Event::PrimaryTimer { proc, at } => self.primary_timer(proc, at),
            Event::PrimaryJob { proc, id }
                if self.zombie.as_ref().is_some_and(|z| z.proc == proc) =>
            {
                self.as_zombie(|sim| sim.primary_job_done(proc, id))
            }
            Event::PrimaryJob { proc, id } => self.primary_job_done(proc, id),
            Event::Client(c) => self.client_op(c),
            Event::Retry(slot) => self.attempt(slot),
            Event::Fault => self.fault(),
            Event::Restart(side) => {
                let down = match side {
                    Side::Primary => self.primary.is_none(),
                    Side::Backup => self.backup.is_none(),
                };
                if down {
                    self.start(side);
                }
            }
            Event::Heal => {
                self.partitioned = false;
                self.note("partition healed".into());
            }
            other => self.fault_event(other),
        }
        self.flush_lanes();
        self.primary_drained();
        self.collect_answers();
        self.persist_epochs();
        if self.live_refused_as_stale.is_none() {
            let refusal = self
                .primary
                .as_ref()
                .and_then(|p| p.core.machine().read_refusal());
            if let Some(r) = refusal.filter(|r| Refusal::is_stale(r)) {
                self.note(format!("the live primary was refused as stale: {r}"));
                self.live_refused_as_stale = Some(format!("at {} ms", self.now));
            }
        }
        true
    }
}

#[test]
fn the_pair_survives_every_simulated_seed() {
    let seeds = run::seeds();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let (mut operations, mut indeterminate) = (0, 0);
    let mut cov = coverage::Coverage::default();
    for &seed in &seeds {
        match Sim::new(seed).run() {
            Ok(f) => {
                operations += f.operations;
                indeterminate += f.indeterminate;
                cov.add(&f.cov);
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
            }
        }
    }
    // Written to stderr directly, past the test harness's capture, so every run shows it.
    let summary = format!(
        "{} seeds from {}, {} failures ({operations} client operations, {indeterminate} writes \
         left indeterminate, {:.1} s){}\ncoverage (clean seeds):\n{}",
        seeds.len(),
        seeds.first().copied().unwrap_or_default(),
        failures.len(),
        started.elapsed().as_secs_f64(),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; failing seeds: {failures:?}")
        },
        cov.report()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // Floors: a run of the default size must exercise every path it claims to test.
    let missing = cov.below_floor();
    assert!(
        seeds.len() < FLOOR_SEEDS || missing.is_empty(),
        "{} seeds never exercised: {missing:?}",
        seeds.len()
    );
}

/// Seeds a plain `cargo test` runs: as long as the 200 seeds of the simulator before its fault
/// kinds doubled (6-9 s in a debug build on two busy cores), and enough for every floor.
const DEFAULT_SEEDS: u64 = 100;

/// Runs with at least this many seeds assert the coverage floors.
const FLOOR_SEEDS: usize = 100;

/// What one clean seed did.
struct Figures {
    /// Client operations recorded.
    operations: usize,
    /// Writes still without a definite answer when their retry budget ran out.
    indeterminate: usize,
    /// What the seed exercised.
    cov: coverage::Coverage,
}

#[test]
fn a_seed_replays_exactly() {
    let trace = |seed| {
        let mut sim = Sim::new(seed);
        while sim.now < 2_000 && sim.step() {}
        (sim.log.clone(), sim.ops.len())
    };
    assert_eq!(trace(42), trace(42));
    // A seed with the large bucket and the slow link, to its end: the store's maps order their
    // entries differently in every instance, and nothing may depend on that order.
    let whole = |seed| {
        let f = Sim::new(seed).run().expect("a clean seed");
        (f.operations, format!("{:?}", f.cov))
    };
    assert_eq!(whole(53), whole(53));
}
