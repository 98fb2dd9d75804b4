//! Next-token sampling exactly by Megatron's rules (docs/nemo.md §5, MLM `sample_from_logits`):
//!
//! - `top_k > 0` together with `top_p > 0` is refused; `top_p` must lie in [0, 1].
//! - `top_k == 1` is greedy: the first index of the largest logit; the temperature is ignored.
//! - otherwise the logits are divided by the temperature first; then `top_k > 1` keeps the logits ≥ the k-th
//!   largest (ties at the boundary stay), or `top_p > 0` keeps, in descending order, every token whose
//!   preceding probability mass is ≤ p (the smallest prefix whose mass exceeds p) and always the top token;
//!   then one draw from the softmax of what is left.
//! - sampled (not greedy) ids are clamped to `[0, vocab_size − 1]` of the tokenizer (the logits may be padded
//!   wider).
//!
//! Randomness: one seeded xoshiro256** stream per sequence (seed, sequence index), so results do not depend on
//! batching. Megatron draws from torch's generator; the rules match, the random streams cannot.

use crate::error::{InferError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
}

impl SamplingParams {
    /// `top_k = 1`.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 0.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.top_k == 1
    }

    /// Megatron's checks, with messages that say what to change. `logit_len` is the width of the logits,
    /// `vocab` the tokenizer's vocabulary (when known).
    pub fn validate(&self, logit_len: usize, vocab: Option<usize>) -> Result<()> {
        let bad = |m: String| Err(InferError::Sampling(m));
        if self.top_k > 0 && self.top_p > 0.0 {
            return bad(format!(
                "top-k ({}) and top-p ({}) cannot both be set (Megatron: \"Cannot have top-p and top-k both \
                 greater than zero\"); use --top-k 1 for greedy, --top-k K with --top-p 0, or --top-k 0 with --top-p P",
                self.top_k, self.top_p
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(format!("top-p must be in [0, 1], got {}", self.top_p));
        }
        if self.top_k > logit_len {
            return bad(format!(
                "top-k ({}) is larger than the logits ({logit_len})",
                self.top_k
            ));
        }
        if let Some(v) = vocab {
            if self.top_k > 1 && self.top_k >= v {
                return bad(format!(
                    "top-k ({}) must be smaller than the vocabulary ({v})",
                    self.top_k
                ));
            }
        }
        if !self.is_greedy() && (self.temperature.is_nan() || self.temperature <= 0.0) {
            return bad(format!(
                "temperature must be > 0 when sampling, got {} (use --top-k 1 for greedy decoding)",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let out = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Refuses logits holding NaN or infinity, which would otherwise sample as token 0 or the first finite one.
/// `prompt` and `generated` (tokens already generated for it) go into the message.
pub fn check_finite(logits: &[f32], prompt: usize, generated: usize) -> Result<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(non_finite(
            prompt,
            generated,
            &format!(" ({} at id {i})", logits[i]),
        )),
    }
}

/// The error for logits that hold NaN or infinity; `detail` names the first such value when it is known (a GPU
/// step that picks its tokens on the device only flags the row).
pub fn non_finite(prompt: usize, generated: usize, detail: &str) -> InferError {
    InferError::NonFinite(format!(
        "the model's logits for prompt {prompt} hold NaN or infinity{detail} before generated token \
         {generated}; the weights overflow inside the model (a diverged checkpoint?), so there is nothing to \
         sample from (`coil logits` on the same ids names the first layer whose output is not finite)"
    ))
}

/// The first index of the largest value (torch.argmax); NaNs are skipped.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// How many of the descending-sorted probabilities top-p keeps: token i stays while the mass before it is ≤ p
/// (Megatron's `cumsum > p` mask shifted right by one), and always at least the first.
pub fn nucleus_len(sorted_probs: &[f64], top_p: f64) -> usize {
    let mut before = 0.0;
    for (i, &p) in sorted_probs.iter().enumerate() {
        if i > 0 && before > top_p {
            return i;
        }
        before += p;
    }
    sorted_probs.len()
}

/// Samples next tokens for one sequence; owns its random stream and its work buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    vocab_limit: Option<usize>,
    work: Vec<f32>,
    order: Vec<u32>,
    probs: Vec<f64>,
}

impl Sampler {
    /// `params` must have passed [`SamplingParams::validate`]. `vocab_limit`: clamp ids below it.
    pub fn new(params: SamplingParams, seed: u64, stream: u64, vocab_limit: Option<usize>) -> Self {
        Sampler {
            params,
            rng: Rng::new(seed, stream),
            vocab_limit,
            work: Vec::new(),
            order: Vec::new(),
            probs: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() || logits.len() < 2 {
            return argmax(logits) as u32;
        }
        let id = self.draw(logits);
        // Megatron clamps sampled ids (not greedy ones) into the tokenizer's vocabulary.
        match self.vocab_limit {
            Some(v) if v > 0 => id.min(v - 1) as u32,
            _ => id as u32,
        }
    }

    fn draw(&mut self, logits: &[f32]) -> usize {
        let SamplingParams {
            temperature,
            top_k,
            top_p,
        } = self.params;
        self.work.clear();
        if temperature != 1.0 {
            self.work.extend(logits.iter().map(|v| v / temperature));
        } else {
            self.work.extend_from_slice(logits);
        }
        if top_k > 1 {
            // The k-th largest value, then mask everything strictly below it.
            self.probs.clear();
            self.probs.extend(self.work.iter().map(|&v| v as f64));
            let k = top_k.min(self.probs.len());
            let (_, kth, _) = self
                .probs
                .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth as f32;
            self.work.iter_mut().for_each(|v| {
                if *v < kth {
                    *v = f32::NEG_INFINITY
                }
            });
        } else if top_p > 0.0 {
            self.order.clear();
            self.order.extend(0..self.work.len() as u32);
            let w = &self.work;
            self.order
                .sort_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
            let mx = w[self.order[0] as usize] as f64;
            self.probs.clear();
            self.probs.extend(
                self.order
                    .iter()
                    .map(|&i| (w[i as usize] as f64 - mx).exp()),
            );
            let z: f64 = self.probs.iter().sum();
            self.probs.iter_mut().for_each(|p| *p /= z);
            let keep = nucleus_len(&self.probs, top_p as f64);
            for &i in &self.order[keep..] {
                self.work[i as usize] = f32::NEG_INFINITY;
            }
        }
        // Softmax of what is left, one draw by inversion.
        let mx = self.work.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        if !mx.is_finite() {
            return argmax(logits);
        }
        self.probs.clear();
        self.probs
            .extend(self.work.iter().map(|&v| (v as f64 - mx).exp()));
        let total: f64 = self.probs.iter().sum();
        let u = self.rng.next_f64() * total;
        let mut cum = 0.0;
        let mut last = 0;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last = i;
                if u < cum {
                    return i;
                }
            }
        }
        last
    }
}
