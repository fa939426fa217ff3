//! A small deterministic PRNG (PCG-XSH-RR 64/32) for sequence numbers and jitter.
//!
//! The core never reads an entropy source: the caller seeds the generator, from the OS in
//! production and from the simulation seed in tests.
#![forbid(unsafe_code)]

/// PCG32 random number generator. Not cryptographic; used only to make sequence numbers
/// unpredictable to another host and to spread wait windows.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    inc: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng {
            state: 0,
            inc: (seed.rotate_left(17) << 1) | 1,
        };
        let _ = rng.next_u32();
        rng.state = rng.state.wrapping_add(seed);
        let _ = rng.next_u32();
        rng
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(self.inc);
        #[allow(clippy::cast_possible_truncation)]
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        #[allow(clippy::cast_possible_truncation)]
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())
    }

    /// A value uniform in `0..=max` (rejection sampling, no modulo bias).
    pub fn below_inclusive(&mut self, max: u32) -> u32 {
        if max == u32::MAX {
            return self.next_u32();
        }
        let range = max + 1;
        let zone = u32::MAX - (u32::MAX % range) - 1;
        loop {
            let v = self.next_u32();
            if v <= zone {
                return v % range;
            }
        }
    }
}

/// The splitmix64 finaliser: a bijective mix of 64 bits, so nearby inputs give unrelated
/// outputs. Used to derive seeds, and by the simulator's and fault plans' generator.
#[must_use]
pub const fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.below_inclusive(0xE24D_4D4F);
            assert_eq!(x, b.below_inclusive(0xE24D_4D4F));
            assert!(x <= 0xE24D_4D4F);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
