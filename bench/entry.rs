//! What one stored entry costs in heap bytes, piece by piece: the accounting behind
//! docs/benchmarks.md, "What one entry costs".
//!
//! Run with `cargo bench --bench entry` (`-- --quick` for 10 000 entries instead of 100 000).
//! Both layouts are flurry maps filled the way the store fills a bucket (presized, so no table
//! copies are counted): **bytes** is the layout before issue 23 (`flurry::HashMap<Bytes, Bytes>`,
//! each a `Bytes::copy_from_slice` copy), **entry** the store's layout today
//! (`flurry::HashMap<Key, Value>`, `quickv_core::store::entry`). The global allocator counts every
//! allocation (`stats_alloc`), so each piece's figure is exact: what was asked of the allocator
//! per entry. What an allocator then spends for a request of `n` bytes is its size class, which
//! the table prints for glibc (`malloc`: 8-byte header, 16-byte steps, 32 at least) and for
//! jemalloc/mimalloc (no header; 16-byte classes up to 128, then four per doubling).

use std::alloc::System;
use std::hint::black_box;

use bytes::Bytes;
use quickv_core::store::entry::{Key, Value};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Entries per layout in the full run.
const ENTRIES_FULL: usize = 100_000;
/// Entries per layout with `--quick`.
const ENTRIES_QUICK: usize = 10_000;
/// Entries in the whole-store fill (what `bench/rss.sh` stores).
const STORE_ENTRIES: usize = 1_000_000;
/// Key length in bytes (what `quickv bench` and `bench/rss.sh` store).
const KEY_BYTES: usize = 16;
/// Value length in bytes.
const VALUE_BYTES: usize = 100;
/// The reclaimer's link in front of every node and value box flurry allocates (seize 0.3's
/// `Linked<T>`: one 8-byte word).
const LINK_BYTES: usize = 8;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { ENTRIES_QUICK } else { ENTRIES_FULL };
    // First, while the heap is fresh: its resident growth is then the store's alone.
    whole_store(if quick { ENTRIES_QUICK } else { STORE_ENTRIES });
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{i:0KEY_BYTES$}").into_bytes())
        .collect();
    let value = vec![b'v'; VALUE_BYTES];
    println!("{n} entries of {KEY_BYTES} B keys and {VALUE_BYTES} B values, per entry:\n");
    println!(
        "| layout | piece | allocations | bytes asked | glibc chunk | jemalloc class |\n\
         |---|---|---:|---:|---:|---:|"
    );
    let bytes = measure::<Bytes, Bytes>(
        "bytes",
        &keys,
        &value,
        Bytes::copy_from_slice,
        Bytes::copy_from_slice,
        |v| v.clone(),
    );
    let entry = measure::<Key, Value>("entry", &keys, &value, Key::new, Value::new, |v| {
        v.to_bytes()
    });
    tables(n);
    println!(
        "\nTotal per entry (glibc / jemalloc, the table at {} entries per bucket's load): \
         bytes {:.0} / {:.0}, entry {:.0} / {:.0}",
        n, bytes.0, bytes.1, entry.0, entry.1
    );
}

/// Fills a presized flurry map with `keys` → `value` in layout `K → V`, printing one row per
/// piece; returns the total per entry as (glibc, jemalloc) bytes, the table included.
fn measure<K, V>(
    layout: &str,
    keys: &[Vec<u8>],
    value: &[u8],
    key: impl Fn(&[u8]) -> K,
    val: impl Fn(&[u8]) -> V,
    answer: impl Fn(&V) -> Bytes,
) -> (f64, f64)
where
    K: std::hash::Hash + Ord + Clone + Send + Sync + std::borrow::Borrow<[u8]> + 'static,
    V: Send + Sync + 'static,
{
    let n = keys.len();
    // The table: 8 B a slot, the next power of two above 1.5 n, allocated with the map (the
    // reclaimer's registration of this thread at the first pin is in the figure too: noise).
    let region = Region::new(GLOBAL);
    let map = flurry::HashMap::<K, V>::with_capacity(n);
    drop(map.pin());
    let table = region.change();
    let mut total = (0.0, 0.0);
    let mut row = |piece: &str, stats: stats_alloc::Stats, each: Option<usize>, counted: bool| {
        let allocs = stats.allocations as f64 / n as f64;
        let asked = (stats.bytes_allocated - stats.bytes_deallocated) as f64 / n as f64;
        let (glibc, jemalloc) = match each {
            // Pieces of one size: their size class, times how many there are per entry.
            Some(size) => (
                glibc_chunk(size) as f64 * allocs,
                jemalloc_class(size) as f64 * allocs,
            ),
            // The table: large blocks, no rounding worth counting.
            None => (asked, asked),
        };
        if counted {
            total.0 += glibc;
            total.1 += jemalloc;
        }
        println!("| {layout} | {piece} | {allocs:.2} | {asked:.1} | {glibc:.1} | {jemalloc:.1} |");
    };

    // The first pin registers this thread with the map's reclaimer (a one-off, not the table's).
    row("table (8 B a slot)", table, None, true);

    let mut stored_keys = Vec::with_capacity(n);
    let mut stored_values = Vec::with_capacity(n);
    let region = Region::new(GLOBAL);
    stored_keys.extend(keys.iter().map(|k| key(k)));
    let key_stats = region.change();
    let key_each = (key_stats.allocations > 0).then(|| key_stats.bytes_allocated / n);
    row("key bytes", key_stats, key_each.or(Some(0)), true);

    let region = Region::new(GLOBAL);
    stored_values.extend(keys.iter().map(|_| val(value)));
    let value_stats = region.change();
    row(
        "value bytes",
        value_stats,
        Some(value_stats.bytes_allocated / n),
        true,
    );

    let region = Region::new(GLOBAL);
    {
        let pinned = map.pin();
        for (k, v) in stored_keys.into_iter().zip(stored_values) {
            pinned.insert(k, v);
        }
    }
    let insert = region.change();
    // Each insert allocates the node and the value's box (`Linked<V>`), nothing else.
    let boxed = LINK_BYTES + std::mem::size_of::<V>();
    let node = insert.bytes_allocated / n - boxed;
    let per = |size: usize| stats_alloc::Stats {
        allocations: n,
        bytes_allocated: size * n,
        ..Default::default()
    };
    row(
        "node (link, hash, key, 2 pointers, lock; sized for a tree node)",
        per(node),
        Some(node),
        true,
    );
    row(
        &format!("value box (link + {} B handle)", std::mem::size_of::<V>()),
        per(boxed),
        Some(boxed),
        true,
    );

    // A read: what stays allocated after the answer is gone (a `Bytes` promoted to shared on its
    // first clone keeps its header for the entry's life).
    let region = Region::new(GLOBAL);
    {
        let pinned = map.pin();
        for k in keys {
            let got = pinned.get(&k[..]).map(&answer);
            black_box(got);
        }
    }
    let read = region.change();
    let kept = (read.bytes_allocated - read.bytes_deallocated) / n;
    let kept_allocs = read.allocations - read.deallocations;
    let mut kept_stats = read;
    kept_stats.allocations = kept_allocs;
    row(
        "kept for good after one read of each key (not in the total)",
        kept_stats,
        Some(kept),
        false,
    );
    println!(
        "| {layout} | (a read allocates {:.2} times, {:.0} B, freed with its answer) | | | | |",
        read.allocations as f64 / n as f64,
        read.bytes_allocated as f64 / n as f64
    );
    black_box(map);
    total
}

/// Prints what growing an existing map's table up front costs per entry: flurry's own
/// `reserve(n)`, and `reserve(n / 2)`, which is what `Store::presize` and a resync into an empty
/// bucket ask for (`store::reserve`), against the table `with_capacity(n)` makes (the first row
/// of each layout above). Both reserves leave a first, smaller table retired beside the final one
/// until the reclaimer frees it: the figures count it.
fn tables(n: usize) {
    let reserved = |ask: usize| {
        let map = flurry::HashMap::<Key, Value>::new();
        drop(map.pin());
        let region = Region::new(GLOBAL);
        map.pin().reserve(ask);
        let bytes = region.change().bytes_allocated as f64 / n as f64;
        black_box(map);
        bytes
    };
    println!(
        "\nTable grown up front for {n} entries, bytes asked per entry: flurry `reserve(n)` \
         {:.1}, `reserve(n / 2)` {:.1}",
        reserved(n),
        reserved(n.div_ceil(2)),
    );
}

/// Fills a whole [`quickv_core::store::Store`] the way a server without `--expected-keys` is
/// filled (32 maps growing as they go) and prints the heap it holds per entry against the sum of
/// the pieces, and the process's resident growth per entry (glibc here).
fn whole_store(n: usize) {
    let store = quickv_core::store::Store::new();
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let rss_before = resident_bytes();
    let region = Region::new(GLOBAL);
    for i in 0..n {
        store.insert(Bytes::from(format!("{i:0KEY_BYTES$}")), value.clone());
    }
    let fill = region.change();
    let rss_after = resident_bytes();
    let per = |b: usize| b as f64 / n as f64;
    println!(
        "\nA whole store of {n} entries grown from empty: per entry {:.2} allocations and {:.1} B \
         asked during the fill, {:.1} B still held after it (freed: {:.1} B, the tables and nodes \
         that growth copied), resident growth {:.1} B",
        per(fill.allocations),
        per(fill.bytes_allocated),
        per(fill.bytes_allocated - fill.bytes_deallocated),
        per(fill.bytes_deallocated),
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
    );
    black_box(store);
}

/// This process's resident set in bytes (`VmRSS`), 0 if unreadable.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// glibc malloc's chunk for a request of `n` bytes (x86-64): an 8-byte size header, rounded up
/// to 16, at least 32; a request of 0 allocates nothing here (Rust does not call the allocator).
fn glibc_chunk(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    ((n + 8 + 15) & !15).max(32)
}

/// jemalloc's (and, in this range, mimalloc's) size class for `n` bytes: 8, then multiples of 16
/// up to 128, then four classes per doubling.
fn jemalloc_class(n: usize) -> usize {
    match n {
        0 => 0,
        1..=8 => 8,
        9..=128 => n.div_ceil(16) * 16,
        _ => {
            let pow = n.next_power_of_two();
            let step = pow / 8;
            n.div_ceil(step) * step
        }
    }
}
