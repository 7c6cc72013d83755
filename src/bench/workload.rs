//! What the generator sends: the operation kinds, a weighted mix of them, and the keys.
//!
//! Keys are fixed-width printable ASCII (16 bytes, the size `bench/store.rs` measures), so quickv
//! and Redis see byte-identical requests and a key's cost does not depend on its index.
//! Preloaded keys are `k` + 15 digits of the index; inserted keys are `i` + a per-run tag + a
//! counter, so an `insert` run never collides with the preload or with an earlier run against the
//! same server and measures successful inserts, not `exists` answers.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;

use super::dist::SplitMix64;
use quickv_proto::OpKind;

/// Length of every generated key, in bytes.
pub const KEY_BYTES: usize = 16;

/// One kind of request the generator can send, a subset of the shared [`OpKind`] ([`LoadOp::kind`]).
/// Each has its own histogram and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadOp {
    /// Read an existing key (quickv `get`, Redis `GET`).
    Get,
    /// Create a fresh key (quickv `insert`, Redis `SET NX`).
    Insert,
    /// Replace an existing key's value (quickv `update`, Redis `SET XX`).
    Update,
    /// Remove an existing key (quickv `delete`, Redis `GETDEL`).
    Delete,
    /// Echo a payload of `--value-size` bytes without touching the store: the transport ceiling.
    Ping,
}

impl LoadOp {
    /// Every kind, in report order.
    pub const ALL: [LoadOp; 5] = [
        LoadOp::Get,
        LoadOp::Insert,
        LoadOp::Update,
        LoadOp::Delete,
        LoadOp::Ping,
    ];

    /// The operation this is, in the vocabulary the server's metrics and the tools share.
    pub fn kind(self) -> OpKind {
        match self {
            LoadOp::Get => OpKind::Get,
            LoadOp::Insert => OpKind::Insert,
            LoadOp::Update => OpKind::Update,
            LoadOp::Delete => OpKind::Delete,
            LoadOp::Ping => OpKind::Ping,
        }
    }

    /// The lowercase name used on the command line, in reports and in file names: the shared
    /// [`OpKind::name`].
    pub fn as_str(self) -> &'static str {
        self.kind().name()
    }

    /// Position in [`LoadOp::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True when the kind changes the store (and so is replicated, and paired with `WAIT` on
    /// Redis).
    pub fn is_write(self) -> bool {
        self.kind().is_write()
    }

    /// True when the kind addresses keys that must exist, so the run preloads the keyspace.
    pub fn needs_preload(self) -> bool {
        matches!(self, LoadOp::Get | LoadOp::Update | LoadOp::Delete)
    }
}

impl fmt::Display for LoadOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LoadOp {
    type Err = String;

    fn from_str(s: &str) -> Result<LoadOp, String> {
        LoadOp::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown operation {s:?}: expected get, insert, update, delete or ping")
            })
    }
}

/// A weighted choice of operation kinds, e.g. `get=90,update=10`. Weights are relative integers
/// (they need not add up to 100).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Kinds with a positive weight, in the order given, with the running sum of weights up to and
    /// including each, so a draw is one comparison per kind.
    cumulative: Vec<(LoadOp, u64)>,
}

impl Mix {
    /// A mix of one kind only.
    pub fn single(kind: LoadOp) -> Mix {
        Mix {
            cumulative: vec![(kind, 1)],
        }
    }

    /// Sum of all weights.
    fn total(&self) -> u64 {
        self.cumulative.last().map_or(0, |&(_, sum)| sum)
    }

    /// Draws a kind with probability proportional to its weight.
    pub fn pick(&self, rng: &mut SplitMix64) -> LoadOp {
        if let [(only, _)] = self.cumulative[..] {
            return only;
        }
        let x = rng.below(self.total());
        self.cumulative
            .iter()
            .find(|&&(_, sum)| x < sum)
            .or(self.cumulative.last())
            .map_or(LoadOp::Ping, |&(kind, _)| kind)
    }

    /// The kinds in the mix, in the order given.
    pub fn kinds(&self) -> impl Iterator<Item = LoadOp> + '_ {
        self.cumulative.iter().map(|&(kind, _)| kind)
    }

    /// Each kind's share of requests, in percent.
    pub fn shares(&self) -> Vec<(LoadOp, f64)> {
        let total = self.total() as f64;
        let mut prev = 0;
        self.cumulative
            .iter()
            .map(|&(kind, sum)| {
                let weight = sum - prev;
                prev = sum;
                (kind, 100.0 * weight as f64 / total)
            })
            .collect()
    }
}

impl fmt::Display for Mix {
    /// Renders back to the `get=90,update=10` syntax, with the weights as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut prev = 0;
        for (i, &(kind, sum)) in self.cumulative.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{kind}={}", sum - prev)?;
            prev = sum;
        }
        Ok(())
    }
}

impl FromStr for Mix {
    type Err = String;

    /// Parses `kind=weight[,kind=weight...]`. A kind may appear once; weights are non-negative
    /// integers and at least one must be positive (zero-weight kinds are dropped).
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut cumulative: Vec<(LoadOp, u64)> = Vec::new();
        let mut seen = Vec::new();
        let mut sum: u64 = 0;
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("empty entry in mix {s:?}"));
            }
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} is not KIND=WEIGHT"))?;
            let kind: LoadOp = name.trim().parse()?;
            if seen.contains(&kind) {
                return Err(format!("{kind} appears twice in mix {s:?}"));
            }
            seen.push(kind);
            let weight: u64 = weight.trim().parse().map_err(|_| {
                format!("weight {weight:?} of {kind} is not a non-negative integer")
            })?;
            if weight == 0 {
                continue;
            }
            sum = sum
                .checked_add(weight)
                .ok_or_else(|| format!("weights in mix {s:?} overflow"))?;
            cumulative.push((kind, sum));
        }
        if cumulative.is_empty() {
            return Err(format!("mix {s:?} has no operation with a positive weight"));
        }
        Ok(Mix { cumulative })
    }
}

/// The key of preloaded entry `index`: `k` and 15 decimal digits (indices ≥ 10^15 wrap, far beyond
/// any keyspace that fits in memory).
pub fn preload_key(index: u64) -> Bytes {
    let mut key = [b'0'; KEY_BYTES];
    key[0] = b'k';
    write_digits(&mut key[1..], index);
    Bytes::copy_from_slice(&key)
}

/// The key of the `seq`th fresh insert of the run tagged `run_tag`: `i`, five hex digits of the
/// tag, ten decimal digits of the sequence number. Distinct from every preload key (first byte)
/// and from other runs' inserts (tag), so inserts measure the success path.
pub fn insert_key(run_tag: u32, seq: u64) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = [b'0'; KEY_BYTES];
    key[0] = b'i';
    for (i, slot) in key[1..6].iter_mut().enumerate() {
        *slot = HEX[((run_tag >> (4 * (4 - i))) & 0xF) as usize];
    }
    write_digits(&mut key[6..], seq);
    Bytes::copy_from_slice(&key)
}

/// Writes `n` right-aligned in decimal into `out`, keeping the lowest digits if it does not fit.
fn write_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The value every write carries: `size` printable bytes, built once per run and shared by
/// reference count, so building a request never copies it.
pub fn value_of_size(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_draws_in_proportion() {
        let mix: Mix = "get=90, update=10".parse().expect("valid mix");
        assert_eq!(mix.to_string(), "get=90,update=10");
        assert_eq!(
            mix.kinds().collect::<Vec<_>>(),
            vec![LoadOp::Get, LoadOp::Update]
        );
        let mut rng = SplitMix64::new(5);
        let updates = (0..100_000)
            .filter(|_| mix.pick(&mut rng) == LoadOp::Update)
            .count();
        assert!((9_000..11_000).contains(&updates), "{updates}");
        let shares = mix.shares();
        assert_eq!(shares, vec![(LoadOp::Get, 90.0), (LoadOp::Update, 10.0)]);
    }

    #[test]
    fn mix_drops_zero_weights_and_rejects_nonsense() {
        let mix: Mix = "get=0,ping=3".parse().expect("valid");
        assert_eq!(mix.kinds().collect::<Vec<_>>(), vec![LoadOp::Ping]);
        assert_eq!(mix.to_string(), "ping=3");
        for bad in [
            "",
            "get",
            "get=",
            "get=-1",
            "get=1.5",
            "get=1,get=2",
            "fetch=1",
            "get=0",
            "get=1,,ping=1",
            "get=18446744073709551615,ping=1",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn keys_are_fixed_width_and_disjoint() {
        assert_eq!(&preload_key(42)[..], b"k000000000000042");
        assert_eq!(&insert_key(0xabcde, 7)[..], b"iabcde0000000007");
        assert_eq!(insert_key(0xfffff, u64::MAX).len(), KEY_BYTES);
        assert_ne!(preload_key(7)[0], insert_key(0, 7)[0]);
        assert_eq!(value_of_size(3), Bytes::from_static(b"abc"));
        assert_eq!(value_of_size(100).len(), 100);
    }

    #[test]
    fn op_kinds_round_trip() {
        for kind in LoadOp::ALL {
            assert_eq!(kind.as_str().parse::<LoadOp>(), Ok(kind));
            assert_eq!(LoadOp::ALL[kind.index()], kind);
        }
        assert!(LoadOp::Update.is_write() && !LoadOp::Ping.is_write());
    }
}
