//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014): the one seeded generator of the core. Cheap, stateless to seed, well mixed:
//! what replica tie-breaks, the two random choices and exploration draws need. Not for secrets.

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One SplitMix64 output for the state `z`: a well-mixed 64-bit value.
pub fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 stream from a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        let z = mix(self.state);
        self.state = self.state.wrapping_add(GOLDEN);
        z
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Two uniform numbers in [0, 1) from a seed and a request number: exploration draws that are
/// reproducible from the decision log.
pub fn uniform_pair(seed: u64, request: u64) -> (f64, f64) {
    let mut rng = SplitMix64::new(seed ^ request.wrapping_mul(GOLDEN));
    (rng.next_f64(), rng.next_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix64() {
        // The reference outputs of SplitMix64 seeded with 0 (as in the paper's C code).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn draws_are_uniform_enough_and_reproducible() {
        assert_eq!(uniform_pair(1, 7), uniform_pair(1, 7));
        let n = 100_000u64;
        let below: usize = (0..n).filter(|&i| uniform_pair(3, i).0 < 0.25).count();
        assert!((below as f64 / n as f64 - 0.25).abs() < 0.01);
        assert!((0..1000).all(|i| {
            let (u, v) = uniform_pair(9, i);
            (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v)
        }));
    }
}
