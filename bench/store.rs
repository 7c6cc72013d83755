//! Store benchmark: the flurry-backed [`Store`] against the same design on
//! papaya, as a like-for-like reference for choosing the map.
//!
//! Run with `cargo bench --bench store` (add `-- --quick` for a smoke run).
//! `cargo bench --bench store -- --growth [--quick]` measures something else: the latency of each
//! fresh-key insert into a growing store, default-sized against presized
//! ([`Store::with_capacity`]), to show what flurry's table growth does to the tail.
//! Each store is measured in its own child process (this binary re-executed
//! with `--child <store>`), so one store's heap never inflates the other's
//! resident set; the parent prints a markdown table of the children's results.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use quickv_core::store::{BucketId, Digest, Store, BUCKETS};

/// Entries per run in the full benchmark.
const ENTRIES_FULL: usize = 1_000_000;
/// Entries per run with `--quick`.
const ENTRIES_QUICK: usize = 100_000;
/// Gets per run, as a multiple of the entry count.
const GETS_PER_ENTRY: usize = 2;
/// Throughput rounds per store; the best round counts, which filters out
/// interference from other tenants of a shared machine.
const ROUNDS: usize = 3;
/// Worker threads for the throughput figures (the target machine has 2 cores).
const THREADS: usize = 2;
/// Key length in bytes.
const KEY_BYTES: usize = 16;
/// Value length in bytes.
const VALUE_BYTES: usize = 100;
/// Bytes per kB in /proc/self/status (the kernel means KiB).
const BYTES_PER_KB: u64 = 1024;

/// The two operations measured, so one driver serves both stores.
trait BenchStore: Sync {
    /// Insert-if-absent, maintaining count, size and digest.
    fn insert(&self, key: Bytes, value: Bytes) -> bool;
    /// Lookup returning an owned value, as a server reply needs.
    fn get(&self, key: &[u8]) -> Option<Bytes>;
    /// Lookup copying the value into an answer buffer, as the server's get does (r8-get).
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> bool;
}

impl BenchStore for Store {
    fn insert(&self, key: Bytes, value: Bytes) -> bool {
        Store::insert(self, key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        Store::get(self, key)
    }

    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        self.get_with(key, |v| v.map(|v| out.extend_from_slice(v.as_slice())))
            .is_some()
    }
}

/// [`Store`]'s design on papaya: 32 buckets, each with the same running
/// count, size and split-sum digest, maintained the same way on insert.
struct PapayaStore {
    /// Indexed by [`BucketId::index`], as in [`Store`].
    buckets: [PapayaBucket; BUCKETS],
}

/// One bucket of [`PapayaStore`].
#[derive(Default)]
struct PapayaBucket {
    /// The entries.
    map: papaya::HashMap<Bytes, Bytes>,
    /// Number of entries.
    len: AtomicI64,
    /// Sum of key and value lengths.
    bytes: AtomicI64,
    /// Wrapping sum of entry digests' high halves.
    digest_hi: AtomicU64,
    /// Wrapping sum of entry digests' low halves.
    digest_lo: AtomicU64,
}

impl PapayaStore {
    fn new() -> PapayaStore {
        PapayaStore {
            buckets: std::array::from_fn(|_| PapayaBucket::default()),
        }
    }

    fn bucket(&self, key: &[u8]) -> &PapayaBucket {
        &self.buckets[BucketId::of(key).index()]
    }
}

impl BenchStore for PapayaStore {
    fn insert(&self, key: Bytes, value: Bytes) -> bool {
        let bucket = self.bucket(&key);
        let digest = Digest::of_entry(&key, &value).0;
        let bytes = (key.len() + value.len()) as i64;
        let inserted = bucket.map.pin().try_insert(key, value).is_ok();
        if inserted {
            bucket.len.fetch_add(1, Ordering::Relaxed);
            bucket.bytes.fetch_add(bytes, Ordering::Relaxed);
            bucket
                .digest_hi
                .fetch_add((digest >> 64) as u64, Ordering::Relaxed);
            bucket.digest_lo.fetch_add(digest as u64, Ordering::Relaxed);
        }
        inserted
    }

    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.bucket(key).map.pin().get(key).cloned()
    }

    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        let map = self.bucket(key).map.pin();
        map.get(key).map(|v| out.extend_from_slice(v)).is_some()
    }
}

/// One store's figures, as a child reports them to the parent.
struct Figures {
    /// Best insert throughput over [`ROUNDS`] with [`THREADS`] threads, M ops/s.
    insert_mops: f64,
    /// Best get throughput over [`ROUNDS`] with [`THREADS`] threads, M ops/s.
    get_mops: f64,
    /// The same with [`BenchStore::get_into`], M ops/s.
    get_into_mops: f64,
    /// Resident set growth per entry while filling, bytes.
    rss_per_entry: f64,
}

impl Figures {
    fn to_line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.insert_mops, self.get_mops, self.get_into_mops, self.rss_per_entry
        )
    }

    fn parse(line: &str) -> anyhow::Result<Figures> {
        let numbers: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad child output {line:?}"))?;
        let [insert_mops, get_mops, get_into_mops, rss_per_entry] = numbers[..] else {
            bail!("child output {line:?} is not four numbers");
        };
        Ok(Figures {
            insert_mops,
            get_mops,
            get_into_mops,
            rss_per_entry,
        })
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; ignore flags we do not know.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let entries = if quick { ENTRIES_QUICK } else { ENTRIES_FULL };
    if args.iter().any(|a| a == "--growth") {
        return growth(entries);
    }
    match args.iter().position(|a| a == "--child") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("flurry") => child(entries, Store::new),
            Some("papaya") => child(entries, PapayaStore::new),
            other => bail!("unknown store {other:?}"),
        },
        None => parent(entries, quick),
    }
}

/// Runs one child per store and prints the comparison table.
fn parent(entries: usize, quick: bool) -> anyhow::Result<()> {
    let flurry = run_child("flurry", quick)?;
    let papaya = run_child("papaya", quick)?;
    let payload = (KEY_BYTES + VALUE_BYTES) as f64;
    println!(
        "{entries} entries ({KEY_BYTES} B keys, {VALUE_BYTES} B values), \
         {THREADS} threads, {} gets, best of {ROUNDS} rounds\n",
        entries * GETS_PER_ENTRY
    );
    println!("| figure | flurry | papaya | flurry/papaya |");
    println!("|---|---:|---:|---:|");
    let rows = [
        ("insert, M ops/s", flurry.insert_mops, papaya.insert_mops),
        ("get, M ops/s", flurry.get_mops, papaya.get_mops),
        (
            "get copied into a buffer, M ops/s",
            flurry.get_into_mops,
            papaya.get_into_mops,
        ),
        (
            "RSS per entry, B",
            flurry.rss_per_entry,
            papaya.rss_per_entry,
        ),
        ("payload per entry, B", payload, payload),
    ];
    for (figure, f, p) in rows {
        println!("| {figure} | {f:.2} | {p:.2} | {:.2} |", f / p);
    }
    Ok(())
}

/// Re-executes this binary to measure `store` in a fresh process.
fn run_child(store: &str, quick: bool) -> anyhow::Result<Figures> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["--child", store]);
    if quick {
        command.arg("--quick");
    }
    let output = command.stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        bail!("{store} child failed: {}", output.status);
    }
    Figures::parse(String::from_utf8(output.stdout)?.trim())
}

/// Measures one store and prints its [`Figures`] as one line.
fn child<S: BenchStore>(entries: usize, new_store: fn() -> S) -> anyhow::Result<()> {
    // Memory first, while the heap is pristine.
    let rss_per_entry = rss_per_entry(entries, new_store)?;
    let mut figures = Figures {
        insert_mops: 0.0,
        get_mops: 0.0,
        get_into_mops: 0.0,
        rss_per_entry,
    };
    for _ in 0..ROUNDS {
        let (insert_mops, get_mops, get_into_mops) = throughput(entries, new_store)?;
        figures.insert_mops = figures.insert_mops.max(insert_mops);
        figures.get_mops = figures.get_mops.max(get_mops);
        figures.get_into_mops = figures.get_into_mops.max(get_into_mops);
    }
    println!("{}", figures.to_line());
    Ok(())
}

/// Resident set growth per entry while filling a fresh store. Entries are
/// allocated as they are inserted, as a server would, so the payload and
/// its allocator overhead count too.
fn rss_per_entry<S: BenchStore>(entries: usize, new_store: fn() -> S) -> anyhow::Result<f64> {
    let before = rss_bytes()?;
    let store = new_store();
    for i in 0..entries {
        let (key, value) = entry(i);
        store.insert(key, value);
    }
    Ok(rss_bytes()?.saturating_sub(before) as f64 / entries as f64)
}

/// One round of insert, get and get-into throughput on a fresh store, M ops/s each.
fn throughput<S: BenchStore>(
    entries: usize,
    new_store: fn() -> S,
) -> anyhow::Result<(f64, f64, f64)> {
    // Each thread owns its share of pre-generated entries, so the timed loop
    // only moves them into the store.
    let chunk = entries.div_ceil(THREADS);
    let shares: Vec<Vec<(Bytes, Bytes)>> = (0..THREADS)
        .map(|t| {
            (t * chunk..entries.min((t + 1) * chunk))
                .map(entry)
                .collect()
        })
        .collect();
    let keys: Vec<Bytes> = (0..entries).map(|i| entry(i).0).collect();
    let store = new_store();
    let insert_secs = timed(|| {
        std::thread::scope(|s| {
            for share in shares {
                let store = &store;
                s.spawn(move || {
                    for (key, value) in share {
                        store.insert(key, value);
                    }
                });
            }
        });
    });

    let gets = entries * GETS_PER_ENTRY;
    let mut hits = 0;
    let get_secs = timed(|| {
        hits = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, keys) = (&store, &keys);
                    s.spawn(move || {
                        (0..gets / THREADS)
                            .filter(|j| {
                                let key = &keys[(t * chunk + j) % keys.len()];
                                black_box(store.get(key)).is_some()
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
    });
    if hits != gets / THREADS * THREADS {
        bail!("only {hits} of {gets} gets found their key");
    }
    let mut copied = 0;
    let into_secs = timed(|| {
        copied = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, keys) = (&store, &keys);
                    s.spawn(move || {
                        // An answer buffer, emptied as a stream's batch is once written.
                        let mut out = Vec::with_capacity(64 * 1024);
                        (0..gets / THREADS)
                            .filter(|j| {
                                if out.len() > 60 * 1024 {
                                    out.clear();
                                }
                                let key = &keys[(t * chunk + j) % keys.len()];
                                black_box(store.get_into(key, &mut out))
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
    });
    if copied != hits {
        bail!("only {copied} of {hits} copied gets found their key");
    }
    Ok((
        entries as f64 / insert_secs / 1e6,
        hits as f64 / get_secs / 1e6,
        copied as f64 / into_secs / 1e6,
    ))
}

/// Inserts `entries` fresh keys one at a time (one thread, like the current-thread server), timing
/// each, into a default store and into one presized for them; prints a table of the latency
/// percentiles. Best of [`ROUNDS`] by p99.9, each round on a fresh store.
fn growth(entries: usize) -> anyhow::Result<()> {
    let pairs: Vec<(Bytes, Bytes)> = (0..entries).map(entry).collect();
    println!("{entries} fresh-key inserts, one thread, per-insert latency in µs (best of {ROUNDS} rounds by p99.9)");
    println!();
    println!("| store | total s | p50 | p99 | p99.9 | p99.99 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let sizes: [(&str, Option<usize>); 2] = [
        ("Store::new", None),
        ("Store::with_capacity", Some(entries)),
    ];
    for (name, capacity) in sizes {
        let mut best: Option<(f64, Vec<f64>)> = None;
        for _ in 0..ROUNDS {
            let store = capacity.map_or_else(Store::new, Store::with_capacity);
            let mut lat = Vec::with_capacity(entries);
            let t0 = Instant::now();
            for (k, v) in &pairs {
                let t = Instant::now();
                black_box(store.insert(k.clone(), v.clone()));
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let total = t0.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            if best
                .as_ref()
                .is_none_or(|(_, b)| pct(&lat, 99.9) < pct(b, 99.9))
            {
                best = Some((total, lat));
            }
        }
        let Some((total, lat)) = best else {
            bail!("no rounds")
        };
        println!(
            "| {name} | {total:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} |",
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            pct(&lat, 99.9),
            pct(&lat, 99.99),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// The `p`th percentile of sorted samples (nearest rank).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The `i`th benchmark entry: a unique 16-byte key (index, then a hash of it
/// so keys do not share a long prefix) and a 100-byte value.
fn entry(i: usize) -> (Bytes, Bytes) {
    let index = (i as u64).to_le_bytes();
    let mut key = Vec::with_capacity(KEY_BYTES);
    key.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&index).to_le_bytes());
    key.extend_from_slice(&index);
    (Bytes::from(key), Bytes::from(vec![i as u8; VALUE_BYTES]))
}

/// Wall-clock seconds taken by `f`.
fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// This process's resident set size, from `VmRSS` in /proc/self/status.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb.trim().parse::<u64>()? * BYTES_PER_KB)
}
