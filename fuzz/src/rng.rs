//! A small deterministic random number generator (SplitMix64): one seed gives one sequence on
//! every machine, so a run can be repeated exactly.

/// A seeded generator of pseudo-random numbers. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator whose seed is derived from `bytes` (the same bytes give the same sequence).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let hash = blake3::hash(bytes);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&hash.as_bytes()[..8]);
        Self(u64::from_le_bytes(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for fuzzing, and no division.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.fill(&mut out);
        out
    }

    /// A length: mostly small, sometimes around the codec's varint boundaries (250/251,
    /// 65535/65536), rarely up to `max`.
    pub fn len(&mut self, max: usize) -> usize {
        let n = match self.below(16) {
            0..=9 => self.below(5),
            10..=12 => self.below(33),
            13 => *self.pick(&[250, 251, 252, 255, 256]),
            14 => self.below(1024),
            _ => self.below(max.saturating_add(1)),
        };
        n.min(max)
    }

    /// An integer of interest to a decoder: the varint and width boundaries, or anything.
    pub fn interesting_u64(&mut self) -> u64 {
        const VALUES: [u64; 16] = [
            0,
            1,
            2,
            127,
            128,
            250,
            251,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            1 << 32,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        if self.chance(1, 2) {
            *self.pick(&VALUES)
        } else {
            self.next_u64() >> self.below(64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_sequence() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Rng::from_bytes(b"x").next_u64(),
            Rng::from_bytes(b"x").next_u64()
        );
    }

    #[test]
    fn bounds_hold() {
        let mut r = Rng::new(1);
        for n in [1usize, 2, 3, 250, 1 << 20] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
        assert_eq!(r.below(0), 0);
        for _ in 0..1000 {
            let v = r.range(3, 5);
            assert!((3..=5).contains(&v));
            assert!(r.len(10) <= 10);
        }
        assert_eq!(r.bytes(13).len(), 13);
    }
}
