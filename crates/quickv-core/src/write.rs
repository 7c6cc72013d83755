//! The outcome table of a client write, written once: [`decide`] maps a write and the key's
//! current value to what it does to the store ([`Effect`]) and what the client is answered.
//!
//! Both ways a write is applied use it (review P4). A standalone server applies the effect at
//! once, deciding against the value under the key's bin lock ([`Store::apply`]); a primary
//! decides against its lane's overlay of writes in flight over the store, sends the effect to
//! the backup and applies it when the backup acknowledges ([`Lanes::submit`]).
//!
//! [`Store::apply`]: crate::store::Store::apply
//! [`Lanes::submit`]: crate::lanes::Lanes::submit

use bytes::Bytes;
use quickv_proto::{Op, Reply};

/// What a decided write does to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store `key → value`.
    Put(Bytes, Bytes),
    /// Remove `key`.
    Remove(Bytes),
    /// Nothing (a refusal: `exists`, `not_found`; or not a write).
    Nothing,
}

/// The table: a write and the key's current value (`None`: absent) → its effect and answer.
///
/// | write | absent | present (`old`) |
/// |---|---|---|
/// | insert | put, `ok` | nothing, `exists` |
/// | update | nothing, `not_found` | put, `ok` |
/// | delete | nothing, `not_found` | remove, `value(old)` |
///
/// Anything else is not a write: nothing, `unavailable`.
pub fn decide(op: Op, current: Option<&Bytes>) -> (Effect, Reply) {
    match (op, current) {
        (Op::Insert { .. }, Some(_)) => (Effect::Nothing, Reply::Exists),
        (Op::Insert { key, value }, None) => (Effect::Put(key, value), Reply::Ok),
        (Op::Update { .. }, None) => (Effect::Nothing, Reply::NotFound),
        (Op::Update { key, value }, Some(_)) => (Effect::Put(key, value), Reply::Ok),
        (Op::Delete { .. }, None) => (Effect::Nothing, Reply::NotFound),
        (Op::Delete { key }, Some(old)) => (Effect::Remove(key), Reply::Value(old.clone())),
        _ => (Effect::Nothing, Reply::Unavailable("not a write".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

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
}
