//! Key choice: a small deterministic PRNG and the uniform and zipfian distributions over a keyspace.
//!
//! The generator picks a key index for every request, so this sits on the hot path of the load
//! loop: no allocation, no locking, a handful of arithmetic operations per draw. Each load worker
//! owns its own [`SplitMix64`] seeded from the run's seed and the worker's index, so a run is
//! reproducible and workers never contend on shared random state.

use std::fmt;
use std::str::FromStr;

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, and is the seeding
/// generator recommended by the xoshiro authors. Statistical quality far beyond what picking keys
/// needs; chosen because it is one multiply-xorshift chain and needs no crate.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    /// The Weyl sequence position; advanced by the golden-ratio increment on every draw.
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (Lemire's multiply-high; the bias is below 2^-32 for any `n` a
    /// keyspace can have, far under what a benchmark can observe). `n == 0` yields 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How request keys are spread over the keyspace, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DistKind {
    /// Every key equally likely: the worst case for caches, the fair case for a hash table.
    Uniform,
    /// A few hot keys take most requests (YCSB's default skew, theta 0.99), the shape of most real
    /// traffic.
    Zipfian,
}

impl DistKind {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DistKind::Uniform => "uniform",
            DistKind::Zipfian => "zipfian",
        }
    }
}

impl fmt::Display for DistKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DistKind {
    type Err = String;

    fn from_str(s: &str) -> Result<DistKind, String> {
        match s {
            "uniform" => Ok(DistKind::Uniform),
            "zipfian" | "zipf" => Ok(DistKind::Zipfian),
            other => Err(format!(
                "unknown distribution {other:?}: expected uniform or zipfian"
            )),
        }
    }
}

/// A prepared key distribution over `0..n`. Cheap to clone: the zipfian constants are computed
/// once per run (O(n) for zeta) and shared by value.
#[derive(Clone, Debug)]
pub enum KeyDist {
    /// Uniform over `0..n`.
    Uniform {
        /// Keyspace size.
        n: u64,
    },
    /// Zipfian over `0..n`; see [`Zipfian`].
    Zipfian(Zipfian),
}

impl KeyDist {
    /// Prepares `kind` over `n` keys (`n` ≥ 1; 0 is treated as 1 so a draw is always defined).
    pub fn new(kind: DistKind, n: u64, theta: f64) -> KeyDist {
        let n = n.max(1);
        match kind {
            DistKind::Uniform => KeyDist::Uniform { n },
            DistKind::Zipfian => KeyDist::Zipfian(Zipfian::new(n, theta)),
        }
    }

    /// The next key index, in `0..n`.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        match self {
            KeyDist::Uniform { n } => rng.below(*n),
            KeyDist::Zipfian(z) => z.sample(rng),
        }
    }
}

/// The zipfian generator of Gray et al., "Quickly generating billion-record synthetic databases"
/// (SIGMOD 1994), as used by YCSB: rank `i` (0-based) is drawn with probability proportional to
/// `1 / (i + 1)^theta`. One draw is a uniform float and a `powf`, with no table, so huge keyspaces
/// cost nothing per request; only `zeta(n)` is computed up front.
///
/// Rank 0 is the hottest key. Key indices are not scrambled: quickv and Redis both hash keys, so
/// hot indices land in unrelated buckets/slots anyway.
#[derive(Clone, Debug)]
pub struct Zipfian {
    /// Keyspace size.
    n: u64,
    /// Skew; 0.99 is YCSB's default. Must be in (0, 1).
    theta: f64,
    /// `1 / (1 - theta)`.
    alpha: f64,
    /// `zeta(n, theta) = Σ_{i=1..n} 1/i^theta`.
    zeta_n: f64,
    /// Gray et al.'s correction constant.
    eta: f64,
    /// `1 + 0.5^theta`: the cumulative weight of ranks 0 and 1, scaled by zeta.
    two_threshold: f64,
}

impl Zipfian {
    /// Default skew, YCSB's.
    pub const DEFAULT_THETA: f64 = 0.99;

    /// Prepares a generator over `0..n` (`n` ≥ 1). `theta` outside (0, 1) is clamped into it,
    /// because the closed form divides by `1 - theta`.
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let n = n.max(1);
        let theta = theta.clamp(0.01, 0.999);
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let eta = if n > 2 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            0.0
        };
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            two_threshold: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// Probability of rank 0, the hottest key: `1 / zeta(n)`.
    pub fn p_hottest(&self) -> f64 {
        1.0 / self.zeta_n
    }

    /// The skew this generator was built with (after clamping).
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The next rank, in `0..n`.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        let u = rng.unit();
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < self.two_threshold || self.n == 2 {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

/// `Σ_{i=1..n} 1/i^theta`, summed from the small terms up for accuracy.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).rev().map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let x = rng.below(10);
            assert!(x < 10);
            seen[x as usize] += 1;
        }
        // Each bucket expects 1000; a broken reduction (e.g. always 0) fails this by far.
        for count in seen {
            assert!((850..1150).contains(&count), "{seen:?}");
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn unit_is_in_the_half_open_interval() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn zipfian_stays_in_range() {
        let mut rng = SplitMix64::new(42);
        for n in [1u64, 2, 3, 10, 1000, 100_000] {
            let z = Zipfian::new(n, Zipfian::DEFAULT_THETA);
            for _ in 0..20_000 {
                assert!(z.sample(&mut rng) < n, "n = {n}");
            }
        }
    }

    #[test]
    fn zipfian_is_skewed_like_the_formula_says() {
        let n = 10_000;
        let z = Zipfian::new(n, 0.99);
        let mut rng = SplitMix64::new(3);
        let draws = 200_000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        // Rank 0 matches its exact probability 1/zeta(n) (~0.102 here) within a few percent.
        let p0 = f64::from(counts[0]) / draws as f64;
        let expected = z.p_hottest();
        assert!(
            (p0 - expected).abs() < 0.1 * expected,
            "p0 {p0} vs {expected}"
        );
        // Rank 1 is about half as hot as rank 0 (1/2^0.99).
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        assert!((0.42..0.58).contains(&ratio), "ratio {ratio}");
        // The hottest 1% of keys take far more than 1% of requests (about 55% at theta 0.99).
        let top: u32 = counts[..(n / 100) as usize].iter().sum();
        let share = f64::from(top) / draws as f64;
        assert!(share > 0.45 && share < 0.65, "top 1% share {share}");
        // And the tail is reached: some key in the last half is drawn.
        assert!(counts[(n / 2) as usize..].iter().any(|&c| c > 0));
    }

    #[test]
    fn uniform_key_dist_is_flat() {
        let d = KeyDist::new(DistKind::Uniform, 100, 0.99);
        let mut rng = SplitMix64::new(9);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[d.sample(&mut rng) as usize] += 1;
        }
        let top: u32 = counts[..1].iter().sum();
        assert!((800..1200).contains(&top), "{top}");
    }

    #[test]
    fn dist_names_parse() {
        assert_eq!("zipfian".parse::<DistKind>(), Ok(DistKind::Zipfian));
        assert_eq!("uniform".parse::<DistKind>(), Ok(DistKind::Uniform));
        assert!("normal".parse::<DistKind>().is_err());
    }
}
