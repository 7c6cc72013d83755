//! Unit tests of [`super`], kept beside it so the module itself stays short.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::*;

/// One client or replication operation, over a small key space so that
/// histories revisit keys.
#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Update(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Get(Vec<u8>),
}

/// 42 keys: every byte string of length 0..=2 over a 4-letter alphabet (stored inside flurry's
/// node), and each of them behind a prefix that makes it one byte too long for that (stored on the
/// heap: see `entry::Key`).
fn key() -> impl Strategy<Value = Vec<u8>> {
    let short = prop::collection::vec(b'a'..=b'd', 0..=2);
    (short, any::<bool>()).prop_map(|(key, long)| {
        if long {
            [vec![b'z'; entry::INLINE_KEY_BYTES + 1], key].concat()
        } else {
            key
        }
    })
}

/// 3 values (`""`, `"x"`, `"y"`), so two histories often agree.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(b'x'..=b'y', 0..=1)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
        (key(), value()).prop_map(|(k, v)| Op::Update(k, v)),
        key().prop_map(Op::Delete),
        (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        key().prop_map(Op::Remove),
        key().prop_map(Op::Get),
    ]
}

fn history() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..200)
}

type Model = HashMap<Vec<u8>, Vec<u8>>;

/// Applies `op` to both, asserting that the store returns what the model
/// says it should.
fn apply(store: &Store, model: &mut Model, op: Op) {
    let bytes = |v: Option<Vec<u8>>| v.map(Bytes::from);
    match op {
        Op::Insert(k, v) => {
            let inserted = !model.contains_key(&k);
            if inserted {
                model.insert(k.clone(), v.clone());
            }
            assert_eq!(store.insert(k.into(), v.into()), inserted);
        }
        Op::Update(k, v) => {
            let old = model
                .get_mut(&k)
                .map(|slot| std::mem::replace(slot, v.clone()));
            assert_eq!(store.update(k.into(), v.into()), bytes(old));
        }
        Op::Delete(k) => assert_eq!(store.delete(&k), bytes(model.remove(&k))),
        Op::Put(k, v) => {
            let old = model.insert(k.clone(), v.clone());
            assert_eq!(store.put(k.into(), v.into()), bytes(old));
        }
        Op::Remove(k) => assert_eq!(store.remove(&k), bytes(model.remove(&k))),
        Op::Get(k) => {
            assert_eq!(store.get(&k), bytes(model.get(&k).cloned()));
            let borrowed = store.get_with(&k, |v| v.map(|v| v.as_slice().to_vec()));
            assert_eq!(borrowed.as_ref(), model.get(&k), "get_with");
        }
    }
}

fn run(ops: Vec<Op>) -> (Store, Model) {
    let store = Store::new();
    let mut model = Model::new();
    for op in ops {
        apply(&store, &mut model, op);
    }
    (store, model)
}

/// Checks every running total against a full scan.
fn assert_totals_exact(store: &Store) {
    let dump = store.dump();
    assert_eq!(store.count(), dump.len() as u64);
    let payload: usize = dump.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(store.approx_bytes(), payload as u64);
    for b in BucketId::all() {
        assert_eq!(store.digest(b), store.recompute_digest(b), "bucket {b}");
        assert_eq!(store.bucket_len(b), store.bucket_snapshot(b).len() as u64);
    }
}

fn sorted_snapshot(store: &Store, b: BucketId) -> Vec<(Bytes, Bytes)> {
    let mut entries = store.bucket_snapshot(b);
    entries.sort_unstable();
    entries
}

proptest! {
    #[test]
    fn matches_hash_map_model(ops in history()) {
        let (store, model) = run(ops);
        let mut expected: Vec<_> = model
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
            .collect();
        expected.sort_unstable();
        prop_assert_eq!(store.dump(), expected);
        assert_totals_exact(&store);
    }

    #[test]
    fn digests_equal_iff_contents_equal(a in history(), b in history()) {
        let ((left, _), (right, _)) = (run(a), run(b));
        for bucket in BucketId::all() {
            let same_contents = sorted_snapshot(&left, bucket) == sorted_snapshot(&right, bucket);
            let same_digest = left.digest(bucket) == right.digest(bucket);
            prop_assert_eq!(same_digest, same_contents, "bucket {}", bucket);
        }
    }

    #[test]
    fn replace_bucket_matches_fresh_store(ops in history(), source in history(), b in 0..BUCKETS) {
        let bucket = BucketId::new(b).expect("b < BUCKETS");
        let (store, _) = run(ops);
        let (source, _) = run(source);
        let others: Vec<_> = BucketId::all()
            .filter(|&o| o != bucket)
            .map(|o| (o, store.digest(o)))
            .collect();

        let entries = source.bucket_snapshot(bucket);
        let fresh = Store::new();
        for (k, v) in entries.clone() {
            fresh.put(k, v);
        }
        store.replace_bucket(bucket, entries);

        prop_assert_eq!(store.digest(bucket), fresh.digest(bucket));
        prop_assert_eq!(store.bucket_len(bucket), fresh.bucket_len(bucket));
        prop_assert_eq!(sorted_snapshot(&store, bucket), sorted_snapshot(&fresh, bucket));
        for (o, digest) in others {
            prop_assert_eq!(store.digest(o), digest, "bucket {} untouched", o);
        }
        assert_totals_exact(&store);
    }
}

#[test]
fn a_verified_replace_checks_first_and_fills_an_empty_bucket_like_a_fresh_store() {
    let source = Store::new();
    for i in 0..3_000u32 {
        source.put(
            Bytes::from(format!("key{i}")),
            Bytes::from(vec![i as u8; 40]),
        );
    }
    for b in BucketId::all() {
        let entries = source.bucket_snapshot(b);
        let (count, digest) = (entries.len() as u64, source.digest(b));
        let target = Store::new();
        target.put(Bytes::from_static(b"other"), Bytes::from_static(b"x"));
        let before = (target.count(), target.digest(b));
        let wrong = Digest(digest.0 ^ 1);
        assert_eq!(
            target.replace_bucket_verified(b, entries.clone(), count, wrong),
            Err((count, digest)),
            "a wrong digest is reported with what was received"
        );
        assert_eq!(
            target.replace_bucket_verified(b, entries.clone(), count + 1, digest),
            Err((count, digest))
        );
        assert_eq!(
            (target.count(), target.digest(b)),
            before,
            "nothing changed"
        );
        target.delete(b"other");
        assert_eq!(
            target.replace_bucket_verified(b, entries, count, digest),
            Ok(())
        );
        assert_eq!(target.digest(b), digest);
        assert_eq!(target.bucket_len(b), count);
        assert_eq!(target.bucket_snapshot(b).len() as u64, count);
        for (k, v) in source.bucket_snapshot(b) {
            assert_eq!(target.get(&k), Some(v));
        }
    }
}

#[test]
fn concurrent_writers_keep_totals_exact() {
    const THREADS: u64 = 4;
    const OPS_PER_THREAD: u64 = 50_000;
    const KEYS: u64 = 8;
    let store = Arc::new(Store::new());
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                // xorshift64: cheap, deterministic per thread.
                let mut state = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                for _ in 0..OPS_PER_THREAD {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let key = Bytes::from(format!("k{}", state % KEYS));
                    let value = Bytes::from(format!("v{t}-{}", state % 5));
                    match (state >> 32) % 4 {
                        0 => drop(store.put(key, value)),
                        1 => drop(store.remove(&key)),
                        2 => drop(store.insert(key, value)),
                        _ => drop(store.update(key, value)),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    assert_totals_exact(&store);
}

#[test]
fn a_presized_store_holds_and_accounts_entries_like_a_default_one() {
    let sized = Store::with_capacity(1000);
    let plain = Store::new();
    // Past the presized capacity too, so the presized maps grow as well.
    for i in 0..3000u32 {
        let (k, v) = (
            Bytes::from(format!("key-{i}")),
            Bytes::from(format!("v{i}")),
        );
        assert!(sized.insert(k.clone(), v.clone()));
        assert!(plain.insert(k, v));
    }
    assert!(!sized.insert(Bytes::from("key-7"), Bytes::from("again")));
    assert_eq!(sized.count(), 3000);
    assert_eq!(sized.get(b"key-2999"), Some(Bytes::from("v2999")));
    assert_eq!(sized.digests(), plain.digests());
    assert_eq!(sized.approx_bytes(), plain.approx_bytes());
}

#[test]
fn stored_entries_do_not_pin_the_callers_buffer() {
    // Keys and values arrive as slices of a 64 KiB receive buffer; the store must keep
    // copies of its own, or one surviving entry holds the whole buffer alive.
    let buffer: Bytes = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let inside = |b: &Bytes| buffer.as_ptr_range().contains(&b.as_ptr());
    let store = Store::new();
    let (k1, k2) = (buffer.slice(0..16), buffer.slice(16..32));
    assert!(store.insert(k1.clone(), buffer.slice(100..200)));
    assert!(store.update(k1.clone(), buffer.slice(200..300)).is_some());
    assert!(store.put(k2.clone(), buffer.slice(300..400)).is_none());
    store.replace_bucket(
        BucketId::of(&buffer[..8]),
        vec![(buffer.slice(0..8), buffer.slice(400..500))],
    );
    for (key, value) in store.dump() {
        assert!(
            !inside(&key),
            "key {key:?} is a slice of the caller's buffer"
        );
        assert!(
            !inside(&value),
            "value of {key:?} is a slice of the caller's buffer"
        );
    }
    assert_eq!(store.count(), 3);
    assert_eq!(store.get(&k1), Some(buffer.slice(200..300)));
}

#[test]
fn the_old_table_is_flushed_exactly_at_flurrys_growth_points() {
    // flurry doubles a table of n slots (16 at first) when an insert brings it to 3n/4 entries.
    let grew: Vec<i64> = (0..2000).filter(|&len| grew_at(len)).collect();
    assert_eq!(grew, [12, 24, 48, 96, 192, 384, 768, 1536]);
    assert!(grew_at(12 << 20) && !grew_at((12 << 20) + 12) && !grew_at(36) && !grew_at(-12));
}

#[test]
fn bucket_of_is_the_documented_hash() {
    // Regression guard: these are part of the replication protocol.
    let fixed: [(&[u8], usize); 5] = [
        (b"", 2),
        (b"a", 31),
        (b"hello", 29),
        (b"user:42", 10),
        (b"quickv", 3),
    ];
    for (key, bucket) in fixed {
        assert_eq!(BucketId::of(key).index(), bucket, "{key:?}");
        assert_eq!(bucket as u64, xxh3_64(key) % 32);
    }
}

#[test]
fn bucket_ids_cover_exactly_the_buckets() {
    let all: Vec<_> = BucketId::all().collect();
    assert_eq!(all.len(), BUCKETS);
    for (i, b) in all.into_iter().enumerate() {
        assert_eq!(BucketId::new(i), Some(b));
        assert_eq!(b.index(), i);
        assert_eq!(b.to_string(), i.to_string());
    }
    assert_eq!(BucketId::new(BUCKETS), None);
    assert_eq!(BucketId::new(256), None);
}

#[test]
fn entry_digest_is_length_prefixed_xxh3_128() {
    let mut framed = 2u32.to_le_bytes().to_vec();
    framed.extend_from_slice(b"abc");
    assert_eq!(Digest::of_entry(b"ab", b"c"), Digest(xxh3_128(&framed)));
    assert_ne!(Digest::of_entry(b"ab", b"c"), Digest::of_entry(b"a", b"bc"));
    assert_eq!(Digest::default().to_string(), "0".repeat(32));
}

#[test]
fn clear_empties_every_bucket() {
    let store = Store::new();
    for i in 0..100u32 {
        store.put(Bytes::from(i.to_string()), Bytes::from_static(b"v"));
    }
    store.clear(crate::testing::origin());
    assert_eq!(store.count(), 0);
    assert_eq!(store.approx_bytes(), 0);
    assert_eq!(store.digests(), [Digest::default(); BUCKETS]);
    assert!(store.dump().is_empty());
}

#[test]
fn a_reader_never_misses_a_key_kept_by_a_bucket_replace() {
    // Finding 5: the resync sink must not empty the bucket before refilling it.
    let store = std::sync::Arc::new(Store::new());
    let b = BucketId::of(b"kept");
    let mut entries = vec![(Bytes::from_static(b"kept"), Bytes::from_static(b"v"))];
    entries.extend(
        (0u32..)
            .map(|i| Bytes::from(format!("e{i}")))
            .filter(|k| BucketId::of(k) == b)
            .take(5_000)
            .map(|k| (k, Bytes::from_static(b"x"))),
    );
    store.replace_bucket(b, entries.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut misses = 0u32;
            let mut reads = 0u32;
            while !done.load(Ordering::Relaxed) || reads < 1_000 {
                misses += u32::from(store.get(b"kept").is_none());
                reads += 1;
                if reads > 50_000_000 {
                    break;
                }
            }
            misses
        })
    };
    for round in 0..20 {
        let mut next = entries.clone();
        next.truncate(1 + (round * 97) % entries.len());
        store.replace_bucket(b, next);
    }
    done.store(true, Ordering::Relaxed);
    assert_eq!(reader.join().expect("reader"), 0, "`kept` went missing");
    assert_eq!(store.recompute_digest(b), store.digest(b));
}

#[test]
fn a_whole_bucket_replace_leaves_totals_counted_from_the_contents() {
    // F1, defence in depth: whatever the running totals were (a clear that raced a writer), a
    // bucket replaced whole ends with totals that describe what it holds.
    let store = Store::new();
    let b = BucketId::of(b"k0");
    let mine: Vec<(Bytes, Bytes)> = (0..500)
        .map(|i| Bytes::from(format!("k{i}")))
        .filter(|k| BucketId::of(k) == b)
        .map(|k| (k, Bytes::from("v")))
        .collect();
    store.put(mine[0].0.clone(), Bytes::from("old"));
    let bucket = &store.buckets[b.index()];
    bucket.add(Footprint::of(b"ghost", b"entry")); // totals now wrong
    store.replace_bucket(b, mine.clone());
    assert_eq!(store.bucket_len(b), mine.len() as u64);
    assert_eq!(store.digest(b), store.recompute_digest(b));
    assert!(!store.recount_bucket(b), "already exact");
    bucket.sub(Footprint::of(b"ghost", b"entry"));
    assert!(
        store.recount_bucket(b),
        "a wrong total is found and repaired"
    );
    assert_eq!(store.digest(b), store.recompute_digest(b));
}

#[test]
fn a_borrowed_read_sees_the_stored_value_or_nothing() {
    let store = Store::new();
    let long = [7u8; entry::INLINE_KEY_BYTES + 9];
    for (key, value) in [(&b"k"[..], &b"v1"[..]), (&long[..], &b""[..])] {
        assert!(store.get_with(key, |v| v.is_none()), "absent at first");
        store.put(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        let read = store.get_with(key, |v| v.map(|v| v.as_slice().to_vec()));
        assert_eq!(read.as_deref(), Some(value));
        store.delete(key);
        assert_eq!(store.get_with(key, |v| v.map(|v| v.as_slice().len())), None);
    }
    assert!(!store.get_with(b"never", |v| v.is_some()));
}

#[test]
fn a_borrowed_read_racing_overwrites_never_sees_torn_or_freed_bytes() {
    // Values at the eager-reclamation size (`RECLAIM_AT_BYTES`): every replace hands the old
    // value to reclamation at once, so a read not protected by its guard would see freed memory,
    // soon reused by the next value of another byte.
    const LEN: usize = RECLAIM_AT_BYTES;
    let store = Arc::new(Store::new());
    store.put(Bytes::from_static(b"k"), Bytes::from(vec![0u8; LEN]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u32, 0u32);
            while !done.load(Ordering::Acquire) || reads < 200 {
                let whole = store.get_with(b"k", |v| {
                    v.map(|v| {
                        let bytes = v.as_slice();
                        bytes.len() == LEN && bytes.iter().all(|b| *b == bytes[0])
                    })
                });
                torn += u32::from(whole == Some(false));
                reads += 1;
            }
            torn
        })
    };
    for i in 0..2_000u32 {
        let fill = (i % 251) as u8 + 1;
        if i % 7 == 0 {
            store.delete(b"k");
        }
        store.put(Bytes::from_static(b"k"), Bytes::from(vec![fill; LEN]));
    }
    done.store(true, Ordering::Release);
    assert_eq!(reader.join().expect("reader"), 0, "a read saw torn bytes");
}
