//! The fast single-token decode step over a batch of independent sequences (docs/numerics.md §4).
//!
//! Per layer: RMSNorm → one batched matrix-vector product for the input projection (every weight row read
//! once for the whole batch) → the per-sequence update (Mamba: roll the conv window, conv + SiLU, dt, the SSM
//! update `s ← exp(dt·A)·s + dt·x⊗B`, `y = s·C + D·x`, gated RMSNorm; attention: append to the KV cache and
//! attend with a one-pass softmax; MLP: activation) → the output projection → residual add. Then the final norm
//! and the LM head. All buffers live in [`Scratch`], allocated once; the step itself allocates nothing (KV
//! caches grow only past the capacity reserved at prefill). The readable reference is
//! `HybridLm::forward_with_state` with one token, which the tests compare against.

use crate::error::{InferError, Result};
use crate::matvec::Matrix;
use crate::state::{LayerCache, SeqState};
use crate::weights::{AttentionWeights, MambaWeights, MixerWeights, MlpWeights, StepWeights};
use coil_model::config::MlpActivation;
use coil_ops::conv1d::silu;
use coil_ops::dt::softplus;
use rayon::prelude::*;

/// Work below this many multiply-adds per sequence stays on one thread.
const PARALLEL_MIN: usize = 1 << 14;

/// Preallocated buffers of the step for up to `max_batch` sequences.
#[derive(Debug)]
pub struct Scratch {
    max_batch: usize,
    resid: Vec<f32>,
    h: Vec<f32>,
    out: Vec<f32>,
    proj: Vec<f32>,
    xbc: Vec<f32>,
    y: Vec<f32>,
    yt: Vec<f32>,
    logits: Vec<f32>,
}

impl Scratch {
    pub fn new(w: &StepWeights, max_batch: usize) -> Self {
        let (mut proj, mut xbc, mut y) = (0usize, 0usize, 0usize);
        let mut rows = w.lm_head().rows().max(w.hidden);
        for l in &w.layers {
            match &l.mixer {
                MixerWeights::Mamba(m) => {
                    proj = proj.max(m.in_proj.rows());
                    xbc = xbc.max(m.dims.conv_dim());
                    y = y.max(m.dims.d_inner());
                    rows = rows.max(m.in_proj.rows());
                }
                MixerWeights::Attention(a) => {
                    proj = proj.max(a.qkv.rows());
                    y = y.max(a.num_heads * a.head_dim);
                    rows = rows.max(a.qkv.rows());
                }
                MixerWeights::Mlp(m) => {
                    proj = proj.max(m.up.rows());
                    rows = rows.max(m.up.rows());
                }
            }
        }
        let b = max_batch.max(1);
        Scratch {
            max_batch: b,
            resid: vec![0.0; b * w.hidden],
            h: vec![0.0; b * w.hidden],
            out: vec![0.0; b * w.hidden],
            proj: vec![0.0; b * proj],
            xbc: vec![0.0; b * xbc],
            y: vec![0.0; b * y],
            yt: vec![0.0; b * rows],
            logits: vec![0.0; b * w.vocab],
        }
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Logits [batch, V] of the last step.
    pub fn logits(&self, batch: usize, vocab: usize) -> &[f32] {
        &self.logits[..batch * vocab]
    }
}

/// `y = w ⊙ x / sqrt(mean(x²) + eps)` per row of width `w.len()`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let rms = (ms + eps).sqrt();
        for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *o = v / rms * wv;
        }
    }
}

fn add_bias(y: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
    }
}

/// Checks the request before any state is touched.
fn check(w: &StepWeights, states: &[SeqState], tokens: &[u32], s: &Scratch) -> Result<()> {
    if tokens.len() != states.len() {
        return Err(InferError::Invalid(format!(
            "{} tokens for {} sequence states",
            tokens.len(),
            states.len()
        )));
    }
    if tokens.len() > s.max_batch {
        return Err(InferError::Invalid(format!(
            "batch of {} exceeds the scratch size {}",
            tokens.len(),
            s.max_batch
        )));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= w.vocab) {
        return Err(InferError::Invalid(format!(
            "token id {t} is outside the vocabulary [0, {})",
            w.vocab
        )));
    }
    for (b, st) in states.iter().enumerate() {
        let ok = st.layers.len() == w.layers.len()
            && st.layers.iter().zip(&w.layers).all(|(c, l)| {
                matches!(
                    (c, &l.mixer),
                    (LayerCache::Mamba { .. }, MixerWeights::Mamba(_))
                        | (LayerCache::Attention { .. }, MixerWeights::Attention(_))
                        | (LayerCache::Stateless, MixerWeights::Mlp(_))
                )
            });
        if !ok {
            return Err(InferError::Invalid(format!(
                "state of sequence {b} does not match the model's layers"
            )));
        }
    }
    Ok(())
}

/// Advances every sequence by its token; the logits land in [`Scratch::logits`].
pub fn step(
    w: &StepWeights,
    states: &mut [SeqState],
    tokens: &[u32],
    s: &mut Scratch,
) -> Result<()> {
    check(w, states, tokens, s)?;
    let (bsz, d) = (tokens.len(), w.hidden);
    if bsz == 0 {
        return Ok(());
    }
    for (b, &t) in tokens.iter().enumerate() {
        w.embeddings
            .row_into(t as usize, &mut s.resid[b * d..(b + 1) * d]);
    }
    for (i, layer) in w.layers.iter().enumerate() {
        rms_norm(&s.resid[..bsz * d], &layer.norm, w.eps, &mut s.h[..bsz * d]);
        match &layer.mixer {
            MixerWeights::Mamba(m) => mamba(m, i, states, bsz, s),
            MixerWeights::Attention(a) => attention(a, i, states, bsz, s),
            MixerWeights::Mlp(m) => mlp(m, bsz, s),
        }
        for (r, o) in s.resid[..bsz * d].iter_mut().zip(&s.out[..bsz * d]) {
            *r += o;
        }
    }
    for st in states.iter_mut() {
        st.position += 1;
    }
    rms_norm(&s.resid[..bsz * d], &w.norm_f, w.eps, &mut s.h[..bsz * d]);
    w.lm_head().matvec(&s.h, bsz, &mut s.logits, &mut s.yt);
    Ok(())
}

fn project(
    m: &Matrix,
    x: &[f32],
    bsz: usize,
    y: &mut [f32],
    yt: &mut [f32],
    bias: Option<&Vec<f32>>,
) {
    m.matvec(x, bsz, y, yt);
    add_bias(&mut y[..bsz * m.rows()], bias);
}

fn mamba(m: &MambaWeights, layer: usize, states: &mut [SeqState], bsz: usize, s: &mut Scratch) {
    let rows = m.in_proj.rows();
    project(
        &m.in_proj,
        &s.h,
        bsz,
        &mut s.proj,
        &mut s.yt,
        m.in_bias.as_ref(),
    );
    let (inner, conv) = (m.dims.d_inner(), m.dims.conv_dim());
    let heavy = m.dims.heads * m.dims.head_dim * m.dims.state >= PARALLEL_MIN;
    states[..bsz]
        .par_iter_mut()
        .zip(s.proj.par_chunks(rows))
        .zip(s.xbc.par_chunks_mut(conv))
        .zip(s.y.par_chunks_mut(inner))
        .with_min_len(if heavy { 1 } else { usize::MAX })
        .for_each(|(((st, proj), xbc), y)| {
            if let LayerCache::Mamba { conv: cw, ssm } = &mut st.layers[layer] {
                mamba_seq(m, cw, ssm, proj, xbc, y, heavy);
            }
        });
    project(
        &m.out_proj,
        &s.y,
        bsz,
        &mut s.out,
        &mut s.yt,
        m.out_bias.as_ref(),
    );
}

/// One sequence of one Mamba layer: `proj` = [z | xBC | dt_raw] of this token; writes the gated-norm output to
/// `y` [I].
fn mamba_seq(
    m: &MambaWeights,
    conv_state: &mut [f32],
    ssm: &mut [f32],
    proj: &[f32],
    xbc: &mut [f32],
    y: &mut [f32],
    heavy: bool,
) {
    let dims = m.dims;
    let (inner, k) = (dims.d_inner(), dims.conv_kernel);
    let (p_dim, n_dim, heads, groups) = (dims.head_dim, dims.state, dims.heads, dims.groups);
    let z = &proj[..inner];
    let xbc_raw = &proj[inner..inner + dims.conv_dim()];
    let dt_raw = &proj[inner + dims.conv_dim()..inner + dims.conv_dim() + heads];
    // Conv window roll (oldest first) and the depthwise conv + SiLU.
    for (c, out) in xbc.iter_mut().enumerate() {
        let win = &mut conv_state[c * k..(c + 1) * k];
        win.copy_within(1.., 0);
        win[k - 1] = xbc_raw[c];
        let wc = &m.conv_w[c * k..(c + 1) * k];
        let mut acc = m.conv_b.as_ref().map_or(0.0, |b| b[c]);
        for (a, b) in wc.iter().zip(win.iter()) {
            acc += a * b;
        }
        *out = silu(acc);
    }
    let xbc = &*xbc;
    let (x, bm, cm) = (
        &xbc[..inner],
        &xbc[inner..inner + groups * n_dim],
        &xbc[inner + groups * n_dim..inner + 2 * groups * n_dim],
    );
    let per_group = heads / groups;
    let (lo, hi) = m.dt_limit;
    let arch = pulp::Arch::new();
    ssm.par_chunks_mut(p_dim * n_dim)
        .zip(y.par_chunks_mut(p_dim))
        .enumerate()
        .with_min_len(if heavy { 2 } else { usize::MAX })
        .for_each(|(h, (s, yh))| {
            let g = h / per_group;
            let dt = softplus(dt_raw[h] + m.dt_bias[h]).max(lo).min(hi);
            arch.dispatch(HeadUpdate {
                state: s,
                y: yh,
                x: &x[h * p_dim..(h + 1) * p_dim],
                b: &bm[g * n_dim..(g + 1) * n_dim],
                c: &cm[g * n_dim..(g + 1) * n_dim],
                dt,
                decay: (dt * m.a[h]).exp(),
                d: m.d[h],
            });
        });
    // Gated RMSNorm: gate first, then one RMS per group of I/G channels.
    for (v, &zv) in y.iter_mut().zip(z) {
        *v *= silu(zv);
    }
    let gs = inner / groups;
    for (seg, w) in y.chunks_exact_mut(gs).zip(m.norm_w.chunks_exact(gs)) {
        let ms = seg.iter().map(|v| v * v).sum::<f32>() / gs as f32;
        let inv = 1.0 / (ms + m.eps).sqrt();
        for (v, &wv) in seg.iter_mut().zip(w) {
            *v = wv * (*v * inv);
        }
    }
}

/// The SSM update of one head: `s ← decay·s + dt·x ⊗ B`, `y = s·C + D·x` (state [P, N], row p for x[p]).
struct HeadUpdate<'a> {
    state: &'a mut [f32],
    y: &'a mut [f32],
    x: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    dt: f32,
    decay: f32,
    d: f32,
}

impl pulp::WithSimd for HeadUpdate<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let n_dim = self.b.len();
        let (bv, bt) = S::as_simd_f32s(self.b);
        let (cv, ct) = S::as_simd_f32s(self.c);
        let decay = simd.splat_f32s(self.decay);
        for (p, row) in self.state.chunks_exact_mut(n_dim).enumerate() {
            let dx = self.dt * self.x[p];
            let dxv = simd.splat_f32s(dx);
            let (rv, rt) = S::as_mut_simd_f32s(row);
            let mut acc = [simd.splat_f32s(0.0); 2];
            for (j, ((r, &b), &c)) in rv.iter_mut().zip(bv).zip(cv).enumerate() {
                *r = simd.mul_add_e_f32s(decay, *r, simd.mul_f32s(dxv, b));
                acc[j & 1] = simd.mul_add_e_f32s(*r, c, acc[j & 1]);
            }
            let mut tail = 0f32;
            for ((r, &b), &c) in rt.iter_mut().zip(bt).zip(ct) {
                *r = self.decay * *r + dx * b;
                tail += *r * c;
            }
            self.y[p] =
                simd.reduce_sum_f32s(simd.add_f32s(acc[0], acc[1])) + tail + self.d * self.x[p];
        }
    }
}

fn attention(
    a: &AttentionWeights,
    layer: usize,
    states: &mut [SeqState],
    bsz: usize,
    s: &mut Scratch,
) {
    let rows = a.qkv.rows();
    project(&a.qkv, &s.h, bsz, &mut s.proj, &mut s.yt, None);
    let (nq, nkv, hd) = (a.num_heads, a.num_kv_heads, a.head_dim);
    let (qw, kvw) = (nq * hd, nkv * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    states[..bsz]
        .par_iter_mut()
        .zip(s.proj.par_chunks(rows))
        .zip(s.y.par_chunks_mut(qw))
        .for_each(|((st, proj), y)| {
            let LayerCache::Attention { k, v, .. } = &mut st.layers[layer] else {
                return;
            };
            k.extend_from_slice(&proj[qw..qw + kvw]);
            v.extend_from_slice(&proj[qw + kvw..qw + 2 * kvw]);
            let (k, v) = (&*k, &*v);
            let len = k.len() / kvw;
            let heavy = nq * len * hd >= PARALLEL_MIN;
            y.par_chunks_mut(hd)
                .enumerate()
                .with_min_len(if heavy { 1 } else { usize::MAX })
                .for_each(|(j, out)| {
                    let q = &proj[j * hd..(j + 1) * hd];
                    let kv = j / (nq / nkv);
                    // One pass: running max `mx`, running normaliser `l`, unnormalised output in `out`.
                    let (mut mx, mut l) = (f32::NEG_INFINITY, 0f32);
                    out.fill(0.0);
                    for pos in 0..len {
                        let off = pos * kvw + kv * hd;
                        let score = q
                            .iter()
                            .zip(&k[off..off + hd])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale;
                        if score > mx {
                            let r = (mx - score).exp();
                            l *= r;
                            out.iter_mut().for_each(|o| *o *= r);
                            mx = score;
                        }
                        let p = (score - mx).exp();
                        l += p;
                        for (o, &vv) in out.iter_mut().zip(&v[off..off + hd]) {
                            *o += p * vv;
                        }
                    }
                    out.iter_mut().for_each(|o| *o /= l);
                });
        });
    a.o.matvec(&s.y, bsz, &mut s.out, &mut s.yt);
}

fn mlp(m: &MlpWeights, bsz: usize, s: &mut Scratch) {
    let f = m.up.rows();
    project(&m.up, &s.h, bsz, &mut s.proj, &mut s.yt, m.up_bias.as_ref());
    let hidden = &mut s.proj[..bsz * f];
    match m.activation {
        MlpActivation::Relu2 => hidden.iter_mut().for_each(|v| {
            let r = v.max(0.0);
            *v = r * r
        }),
        MlpActivation::Gelu => hidden.iter_mut().for_each(|v| {
            *v = (candle_core::cpu::erf::erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2) + 1.0)
                * 0.5
                * *v
        }),
    }
    project(
        &m.down,
        &s.proj,
        bsz,
        &mut s.out,
        &mut s.yt,
        m.down_bias.as_ref(),
    );
}
