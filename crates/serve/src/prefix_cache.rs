//! The prefix cache: snapshots of a sequence's complete model state (every Mamba layer's conv window and SSM
//! state, every attention layer's KV cache) after a prompt prefix that ends on a block boundary, keyed by the
//! prefix's tokens. A new prompt starts from the deepest snapshot of one of its prefixes and prefills only the
//! rest.
//!
//! Exactness: the scheduler prefills every prompt block by block, blocks aligned to absolute positions
//! (0..B, B..2B, ...), whether or not it started from a snapshot. A snapshot is the state the same sequence
//! of block forwards computed, so a prompt that starts from one computes bit for bit what it computes without.
//!
//! Memory: the snapshots' bytes stay under a budget; the least recently used go first. A snapshot is immutable
//! (candle tensors), so handing it out is a reference count, not a copy.

use coil_model::{LayerState, ModelState};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

struct Entry {
    tokens: Vec<u32>,
    state: ModelState,
    bytes: usize,
    last_used: u64,
}

pub struct PrefixCache {
    block: usize,
    budget: usize,
    bytes: usize,
    clock: u64,
    entries: HashMap<u64, Entry>,
}

fn key(prefix: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prefix.hash(&mut h);
    h.finish()
}

/// Bytes of a model state's tensors.
pub fn state_bytes(st: &ModelState) -> usize {
    let t = |x: &candle_core::Tensor| x.elem_count() * x.dtype().size_in_bytes();
    st.layers
        .iter()
        .map(|l| match l {
            LayerState::Mamba(m) => t(&m.conv) + t(&m.ssm),
            LayerState::Attention(c) => t(&c.k) + t(&c.v),
            LayerState::Stateless => 0,
        })
        .sum()
}

impl PrefixCache {
    /// Snapshots every `block` prompt tokens, at most `budget` bytes in all (0: off).
    pub fn new(block: usize, budget: usize) -> Self {
        PrefixCache {
            block: block.max(1),
            budget,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn block(&self) -> usize {
        self.block
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The deepest snapshot of a prefix of `prompt` that leaves at least one token to prefill (the last
    /// position's logits are needed): `(prefix length, state after it)`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(usize, ModelState)> {
        if !self.enabled() || prompt.len() < 2 {
            return None;
        }
        let deepest = (prompt.len() - 1) / self.block;
        for k in (1..=deepest).rev() {
            let prefix = &prompt[..k * self.block];
            if let Some(e) = self.entries.get_mut(&key(prefix)) {
                if e.tokens == prefix {
                    self.clock += 1;
                    e.last_used = self.clock;
                    return Some((prefix.len(), e.state.clone()));
                }
            }
        }
        None
    }

    pub fn contains(&self, prefix: &[u32]) -> bool {
        self.entries
            .get(&key(prefix))
            .is_some_and(|e| e.tokens == prefix)
    }

    /// Keeps `state` (the state after `prefix`, a whole number of blocks), evicting the least recently used
    /// snapshots to stay under the budget. A snapshot larger than the whole budget is not kept.
    pub fn insert(&mut self, prefix: &[u32], state: &ModelState) {
        if !self.enabled() || prefix.is_empty() || !prefix.len().is_multiple_of(self.block) {
            return;
        }
        let bytes = state_bytes(state) + prefix.len() * 4;
        if bytes > self.budget {
            return;
        }
        let k = key(prefix);
        if let Some(old) = self.entries.remove(&k) {
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.budget {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            k,
            Entry {
                tokens: prefix.to_vec(),
                state: state.clone(),
                bytes,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use coil_model::layers::mamba::MambaState;

    fn state(fill: f32) -> ModelState {
        let t = Tensor::full(fill, (1, 4, 4), &Device::Cpu).unwrap();
        ModelState {
            layers: vec![LayerState::Mamba(MambaState {
                conv: t.clone(),
                ssm: t,
            })],
        }
    }

    fn fill_of(st: &ModelState) -> f32 {
        match &st.layers[0] {
            LayerState::Mamba(m) => m.conv.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0],
            _ => unreachable!(),
        }
    }

    #[test]
    fn deepest_prefix_wins_and_one_token_is_left() {
        let mut c = PrefixCache::new(4, 1 << 20);
        let p: Vec<u32> = (0..12).collect();
        c.insert(&p[..4], &state(1.0));
        c.insert(&p[..8], &state(2.0));
        c.insert(&p[..12], &state(3.0));
        c.insert(&p[..5], &state(9.0)); // not on a block boundary: ignored
        assert_eq!(c.len(), 3);
        // A 12-token prompt can use 8 (12 would leave nothing to prefill).
        let (n, st) = c.lookup(&p).unwrap();
        assert_eq!((n, fill_of(&st)), (8, 2.0));
        let (n, _) = c.lookup(&[&p[..12], &[99]].concat()).unwrap();
        assert_eq!(n, 12);
        let (n, _) = c.lookup(&[&p[..6], &[99, 98]].concat()).unwrap();
        assert_eq!(n, 4);
        assert!(c.lookup(&[5, 1, 2, 3, 4, 5]).is_none());
        assert!(c.lookup(&p[..4]).is_none());
    }

    #[test]
    fn least_recently_used_snapshots_leave_first_under_the_budget() {
        let one = state_bytes(&state(0.0)) + 4 * 4;
        let mut c = PrefixCache::new(4, 2 * one);
        c.insert(&[1, 1, 1, 1], &state(1.0));
        c.insert(&[2, 2, 2, 2], &state(2.0));
        assert_eq!(c.bytes(), 2 * one);
        assert!(c.lookup(&[1, 1, 1, 1, 0]).is_some()); // 1 is now the most recent
        c.insert(&[3, 3, 3, 3], &state(3.0));
        assert_eq!(c.len(), 2);
        assert!(c.contains(&[1, 1, 1, 1]) && c.contains(&[3, 3, 3, 3]));
        assert!(!c.contains(&[2, 2, 2, 2]));
        assert!(c.bytes() <= 2 * one);
        let mut off = PrefixCache::new(4, 0);
        off.insert(&[1, 1, 1, 1], &state(1.0));
        assert!(off.is_empty() && off.lookup(&[1, 1, 1, 1, 1]).is_none());
    }
}
