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
