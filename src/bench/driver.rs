//! One benchmark run: connect, preload, drive the workers, collect intervals, report.
//!
//! Time line (all on one monotonic clock):
//!
//! ```text
//! t0 ──── warmup ────► measure_start ──── duration ────► end ── drain (≤ timeout) ──► done
//!          recorded for the live line only   recorded         no new requests; answers to
//!                                            and reported     requests started before `end`
//!                                                             still count
//! ```
//!
//! A request belongs to the measured phase when it *started* (closed loop) or was *due* (open
//! loop) in `[measure_start, end)`. Throughput is measured answers divided by `duration`.
//!
//! Every loop here is bounded: workers stop at `end`, each request at `--timeout`, the preload at
//! [`PRELOAD_LIMIT`], the drain at `end + timeout + DRAIN_SLACK`, after which stragglers are
//! aborted and reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio::task::JoinSet;

use super::dist::{KeyDist, SplitMix64};
use super::hdr::IntervalLog;
use super::progress::{Phase, Progress};
use super::recorder::{Recorder, Tally};
use super::report::{self, BenchReport, PreloadReport};
use super::schedule::OpenLoop;
use super::target::{ConnectOptions, Handle, QuickvTarget, Target, TargetSpec};
use super::workload::{insert_key, preload_key, value_of_size, LoadOp, Mix};
use super::BenchConfig;
use quickv_proto::Outcome;

/// Longest the preload phase may take before the run gives up.
pub const PRELOAD_LIMIT: Duration = Duration::from_secs(300);
/// Fewest requests the preload keeps in flight.
const PRELOAD_TASKS: usize = 64;
/// Extra time, past `end + timeout`, that workers get to finish before they are aborted.
const DRAIN_SLACK: Duration = Duration::from_secs(1);
/// Longest the open-loop pacer sleeps between checks, so it notices `end` promptly.
const PACER_MAX_SLEEP: Duration = Duration::from_millis(1);

/// State every worker reads; built once per run.
struct Shared {
    /// Which operation each request is.
    mix: Mix,
    /// Key choice for get and update.
    dist: KeyDist,
    /// Keyspace size (for delete's sequential walk).
    keys: u64,
    /// The payload of every write and ping.
    value: Bytes,
    /// Tags this run's insert keys, so reruns against the same server never collide.
    run_tag: u32,
    /// Next fresh insert key.
    insert_seq: AtomicU64,
    /// Next key to delete: deletes walk the keyspace once, so each one hits a present key until
    /// the keyspace is used up (then they answer not found, which the report shows).
    delete_seq: AtomicU64,
    /// Where results go.
    recorder: Recorder,
    /// Requests not answered within this are timeouts.
    timeout: Duration,
    /// Start of the measured phase.
    measure_start: Instant,
    /// End of the measured phase: no request starts at or after it.
    end: Instant,
    /// Open loop: requests taken off the schedule and sent.
    sent: AtomicU64,
    /// Closed loop: requests started so far, checked against `max_requests`.
    started: AtomicU64,
    /// Hard cap on requests per run, whatever the duration (a second bound besides time).
    max_requests: u64,
    /// The run's seed.
    seed: u64,
}

impl Shared {
    /// The key for the next request of `kind`.
    fn key_for(&self, kind: LoadOp, rng: &mut SplitMix64) -> Bytes {
        match kind {
            LoadOp::Get | LoadOp::Update => preload_key(self.dist.sample(rng)),
            LoadOp::Delete => {
                preload_key(self.delete_seq.fetch_add(1, Ordering::Relaxed) % self.keys.max(1))
            }
            LoadOp::Insert => insert_key(
                self.run_tag,
                self.insert_seq.fetch_add(1, Ordering::Relaxed),
            ),
            LoadOp::Ping => Bytes::new(),
        }
    }

    /// Sends one request and records it. `due` is when it should have started (closed loop: when
    /// it did start). Returns when it ended (a closed loop's next start: one clock read per
    /// request, not two).
    async fn one_request(
        &self,
        worker: usize,
        handle: &mut impl Handle,
        rng: &mut SplitMix64,
        due: Instant,
    ) -> Instant {
        let kind = self.mix.pick(rng);
        let key = self.key_for(kind, rng);
        // A quickv handle keeps the deadline itself (no timer per request); others get one here.
        let bounded = handle.bounds_its_calls();
        let request = handle.execute(kind, key, self.value.clone());
        let (outcome, message) = if bounded {
            request.await
        } else {
            match tokio::time::timeout(self.timeout, request).await {
                Ok(answer) => answer,
                Err(_) => (
                    Outcome::Timeout,
                    Some(format!("no answer within {:?}", self.timeout)),
                ),
            }
        };
        let done = Instant::now();
        // Warmup requests are recorded only if they also finished in the warmup (for the live
        // line); measured requests always.
        if due >= self.measure_start || done < self.measure_start {
            let latency = done.saturating_duration_since(due);
            self.recorder.record(
                worker,
                kind,
                outcome,
                u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                message.as_deref(),
            );
        }
        done
    }
}

/// One request the open-loop pacer has made due.
struct Ticket {
    /// When it should start.
    intended: Instant,
}

/// Runs one benchmark as configured and returns its report (also writing `--hdr-out` files).
pub async fn run(cfg: &BenchConfig) -> anyhow::Result<BenchReport> {
    cfg.validate()?;
    let spec = TargetSpec::parse(&cfg.target);
    spec.check_loopback().map_err(anyhow::Error::msg)?;
    let opts = ConnectOptions {
        certs_dir: &cfg.certs_dir,
        connections: cfg.connections,
        streams: cfg.streams,
        redis_wait: cfg.redis_wait,
        redis_wait_ms: cfg.redis_wait_ms,
        timeout: cfg.timeout,
        backup: cfg.backup.as_deref().map(|b| (b, cfg.read_from.into())),
    };
    match &spec {
        TargetSpec::Quickv(addr) => {
            drive(cfg, &spec, QuickvTarget::connect(addr, &opts).await?).await
        }
        #[cfg(feature = "redis")]
        TargetSpec::Redis(url) => {
            let target = super::redis_target::RedisTarget::connect(url, &opts).await?;
            drive(cfg, &spec, target).await
        }
        #[cfg(not(feature = "redis"))]
        TargetSpec::Redis(url) => anyhow::bail!(
            "{url}: this quickv was built without Redis support; rebuild with `--features redis`"
        ),
    }
}

/// The run itself, on connections already open: preload, workers, collector, drain, report.
async fn drive<T: Target>(
    cfg: &BenchConfig,
    spec: &TargetSpec,
    target: T,
) -> anyhow::Result<BenchReport> {
    let server = target.server_info();
    let value = value_of_size(cfg.value_size);
    let workers = cfg.in_flight();

    let preload = if cfg.preload && cfg.mix.kinds().any(LoadOp::needs_preload) {
        // At least PRELOAD_TASKS in flight however shallow the run, so a depth-1 run does not
        // spend most of its time preloading one key at a time.
        Some(preload(&target, cfg, &value, workers.clamp(PRELOAD_TASKS, 1024)).await?)
    } else {
        None
    };

    let t0 = Instant::now();
    let wall_start = SystemTime::now() + cfg.warmup;
    let measure_start = t0 + cfg.warmup;
    let end = measure_start + cfg.duration;
    let shared = Arc::new(Shared {
        mix: cfg.mix.clone(),
        dist: KeyDist::new(cfg.dist, cfg.keys, cfg.zipf_theta),
        keys: cfg.keys,
        value,
        run_tag: run_tag(),
        insert_seq: AtomicU64::new(0),
        delete_seq: AtomicU64::new(0),
        recorder: Recorder::new(cfg.client_threads.max(1) * 2),
        timeout: cfg.timeout,
        measure_start,
        end,
        sent: AtomicU64::new(0),
        started: AtomicU64::new(0),
        max_requests: cfg.max_requests,
        seed: cfg.seed,
    });

    let mut tasks = JoinSet::new();
    let schedule = match cfg.rate {
        None => {
            for w in 0..workers {
                tasks.spawn(closed_loop(shared.clone(), w, target.handle(w)));
            }
            None
        }
        Some(rate) => {
            let cfg_timeout = cfg.timeout;
            let schedule = OpenLoop::new(rate, cfg.warmup + cfg.duration)
                .ok_or_else(|| anyhow::anyhow!("--rate must be positive"))?;
            anyhow::ensure!(
                schedule.total() <= cfg.max_requests,
                "--rate × (--warmup + --duration) schedules {} requests, more than \
                 --max-requests {}",
                schedule.total(),
                cfg.max_requests
            );
            let (tx, rx) = mpsc::channel::<Ticket>(workers.saturating_mul(4).max(1024));
            let rx = Arc::new(AsyncMutex::new(rx));
            for w in 0..workers {
                tasks.spawn(open_loop(shared.clone(), w, target.handle(w), rx.clone()));
            }
            let pacer = std::thread::Builder::new()
                .name("quickv-bench-pacer".into())
                .spawn(move || pace(schedule, t0, end + cfg_timeout, tx))?;
            Some((schedule, pacer))
        }
    };

    // The collector: cut intervals, feed the live line and the interval logs, add up the totals.
    let kinds: Vec<LoadOp> = cfg.mix.kinds().collect();
    let mut logs: Vec<IntervalLog> = kinds
        .iter()
        .map(|_| IntervalLog::new(wall_start, format!("quickv bench {}", cfg.label())))
        .collect();
    let mut totals = Tally::new();
    let mut interval = Tally::new();
    let mut progress = Progress::new(cfg.progress, cfg.warmup, cfg.duration);
    let mut last = t0;
    loop {
        let next = if last < measure_start {
            (last + cfg.interval).min(measure_start)
        } else {
            (last + cfg.interval).min(end)
        };
        tokio::time::sleep_until(next.into()).await;
        shared.recorder.take_into(&mut interval);
        let phase = if next <= measure_start {
            Phase::Warmup
        } else {
            totals.add(&interval);
            push_interval(&mut logs, &kinds, &interval, last, next, measure_start);
            Phase::Measure
        };
        progress.update(phase, next - t0, next - last, &interval, &totals);
        last = next;
        if next >= end {
            break;
        }
    }

    // Drain: requests started before `end` may still be answered; bounded by their timeout.
    progress.update_phase(Phase::Drain);
    // Closed loop: the last request started before `end`. Open loop: one may start as late as
    // `end + timeout` (a backlog), and then gets its own timeout.
    let last_start = if cfg.rate.is_some() {
        end + cfg.timeout
    } else {
        end
    };
    let drain_deadline = last_start + cfg.timeout + DRAIN_SLACK;
    let mut aborted = 0usize;
    loop {
        match tokio::time::timeout_at(drain_deadline.into(), tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                aborted = tasks.len();
                tasks.abort_all();
                break;
            }
        }
    }
    let drained_at = Instant::now();
    shared.recorder.take_into(&mut interval);
    totals.add(&interval);
    push_interval(
        &mut logs,
        &kinds,
        &interval,
        last,
        drained_at,
        measure_start,
    );
    progress.finish();

    let open_loop = match schedule {
        Some((schedule, pacer)) => {
            // The pacer stops by itself at `end` (or when every worker is gone).
            let emitted = pacer.join().unwrap_or(0);
            let sent = shared.sent.load(Ordering::Relaxed);
            Some(report::OpenLoopReport::new(
                schedule,
                cfg.warmup,
                emitted,
                sent,
                &totals.lag,
            ))
        }
        None => None,
    };

    let mut warnings = Vec::new();
    if cfg.rate.is_none() && shared.started.load(Ordering::Relaxed) >= cfg.max_requests {
        warnings.push(format!(
            "the run stopped at --max-requests {} before --duration ended: ops/s is divided by \
             the full duration and understates the rate",
            cfg.max_requests
        ));
    }
    if aborted > 0 {
        warnings.push(format!(
            "{aborted} worker(s) still had a request in flight {:?} after the end and were \
             aborted; those requests are not counted anywhere",
            cfg.timeout + DRAIN_SLACK
        ));
    }
    let report = BenchReport::build(cfg, spec, server, preload, &totals, open_loop, warnings);
    if let Some(dir) = &cfg.hdr_out {
        report::write_hdr_files(dir, &kinds, &totals, logs, &report)?;
    }
    target.close().await;
    Ok(report)
}

/// A closed-loop worker: send, wait for the answer, repeat, until `end`.
async fn closed_loop(shared: Arc<Shared>, worker: usize, mut handle: impl Handle) {
    let mut rng = SplitMix64::new(shared.seed.wrapping_add(worker as u64));
    // The previous request's end is this one's start: nothing happens in between.
    let mut start = Instant::now();
    loop {
        if start >= shared.end
            || shared.started.fetch_add(1, Ordering::Relaxed) >= shared.max_requests
        {
            break;
        }
        start = shared
            .one_request(worker, &mut handle, &mut rng, start)
            .await;
    }
}

/// An open-loop worker: take the next due request off the schedule, send it, record its latency
/// from its intended start. Stops when the schedule is exhausted or at `end`.
async fn open_loop(
    shared: Arc<Shared>,
    worker: usize,
    mut handle: impl Handle,
    tickets: Arc<AsyncMutex<mpsc::Receiver<Ticket>>>,
) {
    let mut rng = SplitMix64::new(shared.seed.wrapping_add(worker as u64));
    loop {
        let ticket = {
            let mut rx = tickets.lock().await;
            rx.recv().await
        };
        let Some(ticket) = ticket else { break };
        let sent = Instant::now();
        if sent >= shared.end + shared.timeout {
            // Every request is due before `end`; one still queued a whole timeout after it is
            // one the generator could not send at all (every slot busy all along). It shows as
            // the gap between scheduled and sent in the report.
            break;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if ticket.intended >= shared.measure_start {
            let lag = sent.saturating_duration_since(ticket.intended);
            shared
                .recorder
                .record_lag(worker, u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX));
        }
        shared
            .one_request(worker, &mut handle, &mut rng, ticket.intended)
            .await;
    }
}

/// The open-loop pacer, on its own thread so that its sleeps are precise (the tokio timer has
/// millisecond granularity, which would add up to 1 ms to every latency): makes each request due
/// at its scheduled time, in order, until `end`. A request is handed to whichever worker is free;
/// if none is, it waits in the queue and its wait counts as latency. Returns how many requests it
/// made due.
fn pace(schedule: OpenLoop, t0: Instant, stop_at: Instant, tx: mpsc::Sender<Ticket>) -> u64 {
    let mut next: u64 = 0;
    loop {
        // The schedule ends before `end`; `stop_at` only bounds a pacer stuck on a full queue.
        if next >= schedule.total() || Instant::now() >= stop_at {
            return next;
        }
        let now = Instant::now();
        let due = schedule.due_by(now - t0);
        while next < due {
            let ticket = Ticket {
                intended: t0 + schedule.intended(next),
            };
            // Blocks while the queue is full: tickets keep their intended time, so the delay is
            // charged to latency, not lost.
            if tx.blocking_send(ticket).is_err() {
                return next;
            }
            next += 1;
        }
        if next < schedule.total() {
            let wait = (t0 + schedule.intended(next)).saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(PACER_MAX_SLEEP));
        }
    }
}

/// Appends the interval `[from, to)` of each kind to its `.hlog`, with timestamps relative to
/// the measured phase's start. Empty intervals are skipped.
fn push_interval(
    logs: &mut [IntervalLog],
    kinds: &[LoadOp],
    interval: &Tally,
    from: Instant,
    to: Instant,
    measure_start: Instant,
) {
    for (log, &kind) in logs.iter_mut().zip(kinds) {
        let h = &interval.op(kind).latency;
        if h.is_empty() {
            continue;
        }
        // Serialization into memory only fails on a histogram the serializer cannot encode,
        // which ours (fixed bounds) never are; a lost interval would show as a gap in the log.
        let _ = log.push(
            h,
            from.saturating_duration_since(measure_start),
            to.saturating_duration_since(from),
            kind.as_str(),
        );
    }
}

/// Fills the keyspace: `tasks` workers insert keys `0..keys` (quickv `insert`, Redis `SET`).
async fn preload(
    target: &impl Target,
    cfg: &BenchConfig,
    value: &Bytes,
    tasks: usize,
) -> anyhow::Result<PreloadReport> {
    let started = Instant::now();
    let deadline = started + PRELOAD_LIMIT;
    let next = Arc::new(AtomicU64::new(0));
    let keys = cfg.keys;
    let timeout = cfg.timeout;
    let mut set = JoinSet::new();
    for w in 0..tasks.max(1) {
        let mut handle = target.handle(w);
        let next = next.clone();
        let value = value.clone();
        set.spawn(async move {
            let mut tally = PreloadReport::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys || Instant::now() >= deadline {
                    break;
                }
                let answer =
                    tokio::time::timeout(timeout, handle.preload(preload_key(i), value.clone()))
                        .await
                        .unwrap_or((
                            Outcome::Timeout,
                            Some(format!("no answer within {timeout:?}")),
                        ));
                tally.count(answer);
            }
            tally
        });
    }
    let mut total = PreloadReport::default();
    while let Some(part) = set.join_next().await {
        total.merge(part.unwrap_or_default());
    }
    total.keys = keys;
    total.seconds = started.elapsed().as_secs_f64();
    if total.stored + total.already_present == 0 && keys > 0 {
        anyhow::bail!(
            "preload stored none of {keys} keys ({} errors; first: {})",
            total.errors,
            total.first_error.as_deref().unwrap_or("none")
        );
    }
    if total.stored + total.already_present < keys {
        anyhow::ensure!(
            Instant::now() < deadline,
            "preload did not finish within {PRELOAD_LIMIT:?}"
        );
    }
    Ok(total)
}

/// A tag for this run's insert keys: 20 bits from the wall clock's sub-second part and seconds,
/// different for runs started at different moments.
fn run_tag() -> u32 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mixed = now.as_secs().wrapping_mul(1_000_003) ^ u64::from(now.subsec_nanos());
    (xxhash_rust::xxh3::xxh3_64(&mixed.to_le_bytes()) & 0xF_FFFF) as u32
}
