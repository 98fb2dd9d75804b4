//! Seeded test inputs.

/// A 64-bit linear congruential generator (Knuth's MMIX constants): the one seeded source of test inputs, so a
/// case gives the same inputs on every device and every run.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// Advances the state and returns it.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// Uniform in [0, 1) with 24 random bits (the high bits of the state).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32) / ((1u64 << 24) as f32)
    }

    /// An integer in `0..m` (`m > 0`), from bits 33 and up of the state.
    pub fn below(&mut self, m: u64) -> u64 {
        (self.next_u64() >> 33) % m
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect()
    }
}

/// `seq_idx` [B,T] of packed rows: `pieces` examples per row, boundaries spread over the row (the last example
/// may be longer) and rows cut in different places. `pieces = 1` gives one example per row.
pub fn packed_seq_idx(batch: usize, seqlen: usize, pieces: usize) -> Vec<i32> {
    assert!(pieces > 0, "at least one example per row");
    (0..batch)
        .flat_map(|b| {
            (0..seqlen).map(move |t| {
                let len = (seqlen / pieces).max(1) + b; // rows differ in where they cut
                ((t / len).min(pieces - 1)) as i32
            })
        })
        .collect()
}
