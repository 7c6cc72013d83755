//! Unit tests of [`Store::apply`](super::Store::apply): the decision table of `crate::write`,
//! applied at once.

use bytes::Bytes;
use quickv_proto::{Op, Reply};

use super::Store;
use crate::write::{decide, Effect};
fn ops() -> Vec<Op> {
    let (key, value) = (Bytes::from("k"), Bytes::from("new"));
    vec![
        Op::Insert {
            key: key.clone(),
            value: value.clone(),
        },
        Op::Update {
            key: key.clone(),
            value,
        },
        Op::Delete { key },
    ]
}

/// A standalone store answers every write exactly as the table says, and ends up where the
/// table's effect leads, whatever the key held.
#[test]
fn a_standalone_store_applies_the_table() {
    for op in ops() {
        for current in [None, Some(Bytes::from("old"))] {
            let store = Store::new();
            if let Some(v) = &current {
                store.put(Bytes::from("k"), v.clone());
            }
            let (effect, expected) = decide(op.clone(), current.as_ref());
            assert_eq!(store.apply(op.clone()), expected, "{op:?} on {current:?}");
            let after = match effect {
                Effect::Put(_, v) => Some(v),
                Effect::Remove(_) => None,
                Effect::Nothing => current.clone(),
            };
            assert_eq!(store.get(b"k"), after, "{op:?} on {current:?}");
            let b = quickv_proto::BucketId::of(b"k");
            assert_eq!(store.digest(b), store.recompute_digest(b), "digest follows");
            assert_eq!(store.count(), u64::from(after.is_some()), "count follows");
        }
    }
}

#[test]
fn concurrent_inserts_of_one_key_are_decided_once() {
    let store = std::sync::Arc::new(Store::new());
    let oks: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                s.spawn(move || {
                    (0..2_000)
                        .filter(|n| {
                            let op = Op::Insert {
                                key: Bytes::from(format!("k{n}")),
                                value: Bytes::from(format!("{i}")),
                            };
                            store.apply(op) == Reply::Ok
                        })
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum()
    });
    assert_eq!(oks, 2_000, "each key inserted once");
    assert_eq!(store.count(), 2_000);
}
