//! The hasher of a lane's maps of writes in flight (the overlay by key, the stamped writes by
//! stamp): every replicated write hashes a key or a stamp four to six times on the primary (decide,
//! queue, ack), and the standard SipHash-1-3 was ≈ 9 % of the primary's CPU per insert (issue 23,
//! round 8, `docs/benchmarks.md`). Keys go through one xxh3 call, stamps through a folded
//! multiply per word; both start from a seed drawn per map from the standard library's random
//! keys, so a client cannot choose keys that collide on a server it does not know the seed of.
//! The maps hold at most the lane's writes in flight (bounded by the clients' stream credit), so
//! even a collision set costs a probe sequence over that many entries, not a growing table.

use std::hash::{BuildHasher, Hasher};

/// Builds [`LaneHasher`]s from one random seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LaneHash {
    seed: u64,
}

impl Default for LaneHash {
    /// A fresh random seed (the standard library's per-process random keys, advanced per call).
    fn default() -> LaneHash {
        LaneHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x9e37_79b9_u64),
        }
    }
}

impl BuildHasher for LaneHash {
    type Hasher = LaneHasher;

    fn build_hasher(&self) -> LaneHasher {
        LaneHasher(self.seed)
    }
}

/// The state of one hash: the seed, then what was written so far, mixed.
#[derive(Debug)]
pub(crate) struct LaneHasher(u64);

/// The multiplier of the folded multiply (the 64-bit golden ratio, odd).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// A folded multiply: the high and low halves of `x * K` xored; every input bit reaches the
/// low bits hashbrown indexes by and the high bits of its control bytes.
fn mix(x: u64) -> u64 {
    let m = u128::from(x) * u128::from(K);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for LaneHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix(self.0 ^ x);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use bytes::Bytes;
    use quickv_proto::WriteStamp;

    #[test]
    fn keys_and_stamps_spread_over_the_index_and_control_bits() {
        let h = LaneHash::default();
        let keys: HashSet<u64> = (0..4096u32)
            .map(|i| h.hash_one(Bytes::from(format!("key-{i:012}"))) & 0xfff)
            .collect();
        // 4096 keys into 4096 slots: a uniform hash fills about 1 − 1/e of them (2589).
        assert!(
            keys.len() > 2400,
            "low bits of key hashes: {} distinct",
            keys.len()
        );
        let stamps: HashSet<u64> = (1..=4096u64)
            .map(|seq| {
                h.hash_one(WriteStamp {
                    owner: 7,
                    session: 42,
                    seq,
                }) >> 57
            })
            .collect();
        assert_eq!(stamps.len(), 128, "top 7 bits of sequential stamps");
    }

    #[test]
    fn two_maps_hash_the_same_key_differently() {
        let key = Bytes::from_static(b"the same key");
        let (a, b) = (LaneHash::default(), LaneHash::default());
        assert_ne!(a.hash_one(&key), b.hash_one(&key));
        assert_eq!(a.hash_one(&key), a.hash_one(key.clone()));
    }
}
