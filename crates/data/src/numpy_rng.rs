//! numpy's legacy `RandomState` stream, reimplemented so document and sample shuffles match megatron-core
//! bit for bit: MT19937 seeded with `init_genrand(seed)` (what `RandomState(int)` does), numpy's
//! `random_interval` (mask-and-reject bounded integers) and its Fisher-Yates `shuffle` for 1-D arrays.

const N: usize = 624;
const M: usize = 397;

/// `numpy.random.RandomState(seed)`: the Mersenne Twister with numpy's legacy integer seeding.
#[derive(Clone)]
pub struct RandomState {
    mt: [u32; N],
    index: usize,
}

impl RandomState {
    /// Seed like `RandomState(seed)` for an integer seed (numpy accepts 0..2^32).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1812433253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.mt[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.index = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_u64(&mut self) -> u64 {
        ((self.next_u32() as u64) << 32) | self.next_u32() as u64
    }

    /// A uniform integer in `0..=max` the way numpy's `random_interval` draws it.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// In-place shuffle identical to `RandomState.shuffle` on a 1-D array.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.interval(i as u64) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_mt19937_outputs() {
        // First outputs of init_genrand(5489), the reference implementation's default seed.
        let mut r = RandomState::new(5489);
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, vec![3499211612, 581869302, 3890346734]);
    }
}
