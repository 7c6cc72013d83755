//! How one entry is laid out in memory: the key inside flurry's node, the value in one shared
//! allocation.
//!
//! flurry spends, per entry, a node (hash, key, a pointer to the value, a next pointer, a lock,
//! sized for its red-black tree variant) and a separate box holding the value type; each behind
//! the reclaimer's 8-byte link. What the store chooses is what the key and the value types are,
//! and so how many more allocations an entry needs and how big the node and the box get
//! (docs/benchmarks.md, "What one entry costs", has the byte table):
//!
//! - [`Key`] keeps keys of up to [`INLINE_KEY_BYTES`] inside the node (24 bytes, 8 fewer than a
//!   `Bytes`), so a typical key costs no allocation of its own; a longer key is one exact-size
//!   boxed slice.
//! - [`Value`] is a reference-counted slice with no weak count (`triomphe::Arc<[u8]>`): one
//!   allocation of 8 bytes plus the value, behind a 16-byte handle. The server's get borrows it
//!   under the map's guard and copies it straight into the answer it encodes
//!   (`Store::get_with`): no reference count touched, nothing allocated. Other readers take a
//!   `Bytes` that shares it ([`Value::to_bytes`]): no copy of the value, one small handle
//!   allocation that lives as long as the `Bytes`. (A stored `Bytes`, as before, is a 32-byte
//!   handle whose first clone allocated a shared header that then stayed for the entry's life.)
//!
//! Both are copies made on the way in. Keys and values arrive as slices of a connection's 64 KiB
//! receive buffer (`FramedReader`, the peer link, resync transfers); kept as they are, one
//! surviving 100-byte value would pin its whole buffer. Copying makes the store's memory
//! proportional to what it holds (docs/benchmarks.md, "compact copies").
//!
//! Both hash, compare and order exactly as the `[u8]` they hold, as [`std::borrow::Borrow`]
//! requires: flurry finds a `Key` from a `&[u8]` the client sent.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// Keys up to this many bytes are stored inside flurry's node (see [`Key`]): the most that fits
/// beside a length byte and the variant's tag in the 24 bytes of a boxed slice's handle plus 8.
pub const INLINE_KEY_BYTES: usize = 22;

/// A stored key: inline when short, else one boxed slice of exactly its length.
#[derive(Clone)]
pub enum Key {
    /// `bytes[..len]` is the key; the rest is zero.
    Inline {
        /// The key's length, at most [`INLINE_KEY_BYTES`].
        len: u8,
        /// The key, zero-padded.
        bytes: [u8; INLINE_KEY_BYTES],
    },
    /// A key longer than [`INLINE_KEY_BYTES`].
    Heap(Box<[u8]>),
}

impl Key {
    /// A stored copy of `key`.
    pub fn new(key: &[u8]) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY_BYTES => {
                let mut bytes = [0; INLINE_KEY_BYTES];
                bytes[..key.len()].copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }

    /// The key's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }

    /// A `Bytes` copy of the key (an answer, a snapshot): keys are short, and a copy leaves the
    /// stored key as it is.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_slice())
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for Key {
    /// As `[u8]` hashes, which [`Borrow`] requires (flurry hashes the `&[u8]` of a lookup).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// As `[u8]` orders (flurry orders the keys of a tree bin).
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_slice()), f)
    }
}

/// A stored value: one reference-counted allocation of the bytes (see the module doc).
#[derive(Clone)]
pub struct Value(triomphe::Arc<[u8]>);

impl Value {
    /// A stored copy of `value`.
    pub fn new(value: &[u8]) -> Value {
        Value(triomphe::Arc::from(value))
    }

    /// The value's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The value as a `Bytes` that shares this allocation: no copy of the value.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }

    /// [`Value::to_bytes`], consuming this handle.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_bytes(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn a_key_round_trips_inline_up_to_the_limit_and_on_the_heap_past_it() {
        for len in [
            0,
            1,
            16,
            INLINE_KEY_BYTES,
            INLINE_KEY_BYTES + 1,
            300,
            70_000,
        ] {
            let raw: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let key = Key::new(&raw);
            assert_eq!(key.as_slice(), &raw[..], "len {len}");
            assert_eq!(&key.to_bytes()[..], &raw[..], "len {len}");
            let inline = matches!(key, Key::Inline { .. });
            assert_eq!(inline, len <= INLINE_KEY_BYTES, "len {len}");
        }
    }

    #[test]
    fn a_key_hashes_compares_and_orders_as_its_bytes() {
        let raws: [&[u8]; 6] = [b"", b"a", b"a\0", b"ab", &[7; 22], &[7; 23]];
        for a in raws {
            let ka = Key::new(a);
            assert_eq!(hash_of(&ka), hash_of(a), "{a:?}");
            let borrowed: &[u8] = ka.borrow();
            assert_eq!(borrowed, a);
            for b in raws {
                let kb = Key::new(b);
                assert_eq!(ka == kb, a == b, "{a:?} {b:?}");
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_key_is_no_larger_than_three_words() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert_eq!(std::mem::size_of::<Value>(), 16);
    }

    #[test]
    fn a_value_answer_shares_the_stored_bytes() {
        let value = Value::new(b"hello");
        let answer = value.to_bytes();
        assert_eq!(&answer[..], b"hello");
        assert_eq!(answer.as_ptr(), value.as_slice().as_ptr(), "no copy");
        drop(value);
        assert_eq!(
            &answer[..],
            b"hello",
            "the answer outlives the stored handle"
        );
        assert_eq!(&Value::new(b"").into_bytes()[..], b"");
    }
}
