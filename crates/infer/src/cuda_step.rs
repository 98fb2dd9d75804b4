//! The single-token decode step on a CUDA GPU for models whose layers are all Mamba2 mixers: the fused kernels of
//! `coil_kernels::decode`, six launches per layer (residual add + RMSNorm, in_proj, conv window + SiLU, SSM
//! update, gated RMSNorm, out_proj), then the final norm and the LM head. It is the GPU twin of the CPU engine's
//! step ([`crate::step`]) with the same arithmetic (f32 activations and states, weights in the model's dtype
//! read as they are), which the CUDA tests compare it against; the prefill stays the model's chunked forward.
//!
//! Weights are read in place from the model's tensors (no copy); the engine owns the per-sequence conv windows
//! and SSM states of a batch and the activation buffers, allocated once per batch. Hybrids (attention and MLP
//! layers) take the composed path until their decode kernels exist.

use crate::error::{InferError, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, CudaView, DriverError};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, Layout, Storage, Tensor};
use coil_kernels::decode::{self as k, ConvDims, GemvDims, SsmDims, Weights};
use coil_model::config::MixerDims;
use coil_model::lm::{LayerState, Mixer};
use coil_model::{HybridLm, ModelState};
use std::sync::Arc;

fn kernel_err(e: coil_kernels::KernelError) -> InferError {
    InferError::Invalid(format!("CUDA decode step: {e}"))
}

fn driver_err(e: DriverError) -> InferError {
    InferError::Invalid(format!("CUDA decode step: {e}"))
}

/// An f32 copy of a small parameter (or the tensor itself when it already is contiguous f32).
fn f32_param(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

fn cuda_view<'s, T: candle_core::cuda_backend::CudaDType>(
    s: &'s Storage,
    l: &Layout,
) -> Result<CudaView<'s, T>> {
    match s {
        Storage::Cuda(c) => Ok(c.as_cuda_slice::<T>()?.slice(l.start_offset()..)),
        _ => Err(InferError::Invalid(
            "CUDA decode step: a weight is not on the GPU".into(),
        )),
    }
}

struct Layer {
    norm: Tensor,
    in_proj: Tensor,
    in_bias: Option<Tensor>,
    conv_w: Tensor,
    conv_b: Option<Tensor>,
    a: Tensor,
    dt_bias: Tensor,
    d: Tensor,
    gnorm: Tensor,
    out_proj: Tensor,
    out_bias: Option<Tensor>,
    eps: f32,
    dt_limit: (f32, f32),
}

/// Buffers of one batch.
struct Batch {
    size: usize,
    conv: Vec<CudaSlice<f32>>,
    ssm: Vec<CudaSlice<f32>>,
    resid: CudaSlice<f32>,
    h: CudaSlice<f32>,
    proj: CudaSlice<f32>,
    xbc: CudaSlice<f32>,
    y: CudaSlice<f32>,
    yn: CudaSlice<f32>,
    out: CudaSlice<f32>,
    logits: CudaSlice<f32>,
}

pub struct CudaStep {
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    dims: MixerDims,
    hidden: usize,
    vocab: usize,
    norm_eps: f32,
    layers: Vec<Layer>,
    embeddings: Tensor,
    norm_f: Tensor,
    head: Tensor,
    batch: Option<Batch>,
}

impl CudaStep {
    /// The fused step for `lm`, or `None` when it does not apply (not on a CUDA device, a layer that is not a
    /// Mamba2 mixer, weights neither bf16 nor f32, or sizes the kernels do not take).
    pub fn new(lm: &HybridLm) -> Result<Option<Self>> {
        let Device::Cuda(dev) = lm.device() else {
            return Ok(None);
        };
        if !matches!(lm.dtype, DType::BF16 | DType::F32) {
            return Ok(None);
        }
        let dims = lm.config.mixer_dims();
        let (hidden, vocab) = (lm.config.hidden_size, lm.config.vocab_size);
        let (inner, conv) = (dims.d_inner(), dims.conv_dim());
        let rows = 2 * inner + 2 * dims.groups * dims.state + dims.heads;
        let probe = SsmDims {
            batch: 1,
            heads: dims.heads,
            groups: dims.groups,
            head_dim: dims.head_dim,
            state: dims.state,
            ld_xbc: conv,
            ld_dt: rows,
            ld_y: inner,
        };
        // 16-byte chunks of bf16 (8) or f32 (4) weights per row, 16-byte aligned activation rows.
        let chunk = if lm.dtype == DType::BF16 { 8 } else { 4 };
        if !k::ssm_supported(&probe) || hidden % chunk != 0 || inner % chunk != 0 || conv % 4 != 0 {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(lm.blocks.len());
        for block in &lm.blocks {
            let Mixer::Mamba(m) = &block.mixer else {
                return Ok(None);
            };
            let weight = |t: &Tensor| -> Result<Tensor> { Ok(t.contiguous()?) };
            layers.push(Layer {
                norm: f32_param(&block.norm)?,
                in_proj: weight(&m.in_proj.weight)?,
                in_bias: m.in_proj.bias.as_ref().map(f32_param).transpose()?,
                conv_w: f32_param(&m.conv_weight)?,
                conv_b: m.conv_bias.as_ref().map(f32_param).transpose()?,
                a: f32_param(&m.a_log.to_dtype(DType::F32)?.exp()?.neg()?)?,
                dt_bias: f32_param(&m.dt_bias)?,
                d: f32_param(&m.d)?,
                gnorm: f32_param(&m.norm_weight)?,
                out_proj: weight(&m.out_proj.weight)?,
                out_bias: m.out_proj.bias.as_ref().map(f32_param).transpose()?,
                eps: m.eps as f32,
                dt_limit: m.dt_limit,
            });
        }
        let head = lm.lm_head.as_ref().unwrap_or(&lm.embeddings).contiguous()?;
        Ok(Some(CudaStep {
            stream: dev.cuda_stream(),
            dev: dev.clone(),
            dims,
            hidden,
            vocab,
            norm_eps: lm.config.norm_eps as f32,
            layers,
            embeddings: lm.embeddings.clone(),
            norm_f: f32_param(&lm.norm_f)?,
            head,
            batch: None,
        }))
    }

    fn rows(&self) -> usize {
        2 * self.dims.d_inner() + 2 * self.dims.groups * self.dims.state + self.dims.heads
    }

    /// Takes over the decode state the prefill left for `batch` sequences (each Mamba layer's conv window
    /// `[B, C, K]` and SSM state `[B, H, P, N]`).
    pub fn start(&mut self, state: &ModelState, batch: usize) -> Result<()> {
        if state.layers.len() != self.layers.len() {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: the state has {} layers, the model {}",
                state.layers.len(),
                self.layers.len()
            )));
        }
        let (inner, conv) = (self.dims.d_inner(), self.dims.conv_dim());
        let st_len = self.dims.heads * self.dims.head_dim * self.dims.state;
        let s = &self.stream;
        let zeros = |n: usize| s.alloc_zeros::<f32>(n.max(1)).map_err(driver_err);
        let mut b = Batch {
            size: batch,
            conv: Vec::with_capacity(self.layers.len()),
            ssm: Vec::with_capacity(self.layers.len()),
            resid: zeros(batch * self.hidden)?,
            h: zeros(batch * self.hidden)?,
            proj: zeros(batch * self.rows())?,
            xbc: zeros(batch * conv)?,
            y: zeros(batch * inner)?,
            yn: zeros(batch * inner)?,
            out: zeros(batch * self.hidden)?,
            logits: zeros(batch * self.vocab)?,
        };
        for ls in &state.layers {
            let LayerState::Mamba(m) = ls else {
                return Err(InferError::Invalid(
                    "CUDA decode step: a layer state is not a Mamba state".into(),
                ));
            };
            for (src, len, dst) in [
                (&m.conv, batch * conv * self.dims.conv_kernel, &mut b.conv),
                (&m.ssm, batch * st_len, &mut b.ssm),
            ] {
                if src.elem_count() != len {
                    return Err(InferError::Invalid(format!(
                        "CUDA decode step: a layer state has {} elements, expected {len}",
                        src.elem_count()
                    )));
                }
                let t = src.to_dtype(DType::F32)?.contiguous()?;
                let (g, l) = t.storage_and_layout();
                let v = cuda_view::<f32>(&g, l)?;
                let mut buf = zeros(len)?;
                s.memcpy_dtod(&v.slice(..len), &mut buf)
                    .map_err(driver_err)?;
                dst.push(buf);
            }
        }
        self.batch = Some(b);
        Ok(())
    }

    /// One token for every sequence of the batch given to [`CudaStep::start`]; returns each sequence's logits.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let Some(mut b) = self.batch.take() else {
            return Err(InferError::Invalid(
                "CUDA decode step: step before start".into(),
            ));
        };
        let r = self.step_batch(&mut b, tokens);
        self.batch = Some(b);
        r
    }

    fn step_batch(&self, b: &mut Batch, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let n = b.size;
        if tokens.len() != n {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: {} tokens for a batch of {n}",
                tokens.len()
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: token {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let s = &self.stream;
        let (d, inner, conv, rows) = (
            self.hidden,
            self.dims.d_inner(),
            self.dims.conv_dim(),
            self.rows(),
        );
        let ids = Tensor::from_vec(tokens.to_vec(), n, &Device::Cuda(self.dev.clone()))?;
        let emb = self
            .embeddings
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        {
            let (g, l) = emb.storage_and_layout();
            s.memcpy_dtod(&cuda_view::<f32>(&g, l)?.slice(..n * d), &mut b.resid)
                .map_err(driver_err)?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let f32s = [
                &layer.norm,
                &layer.conv_w,
                &layer.a,
                &layer.dt_bias,
                &layer.d,
                &layer.gnorm,
            ];
            let guards: Vec<_> = f32s.iter().map(|t| t.storage_and_layout()).collect();
            let v: Vec<CudaView<f32>> = guards
                .iter()
                .map(|(g, l)| cuda_view(g, l))
                .collect::<Result<_>>()?;
            let opt = [&layer.in_bias, &layer.conv_b, &layer.out_bias]
                .map(|t| t.as_ref().map(|t| t.storage_and_layout()));
            let ov: Vec<Option<CudaView<f32>>> = opt
                .iter()
                .map(|o| o.as_ref().map(|(g, l)| cuda_view(g, l)).transpose())
                .collect::<Result<_>>()?;
            let (win, wout) = (
                layer.in_proj.storage_and_layout(),
                layer.out_proj.storage_and_layout(),
            );
            let (w_in, w_out) = (weights(&win.0, win.1)?, weights(&wout.0, wout.1)?);

            let prev = (li > 0).then(|| b.out.slice(..));
            k::add_rmsnorm(
                s,
                &mut b.resid,
                prev.as_ref(),
                &v[0],
                &mut b.h,
                n,
                d,
                self.norm_eps,
            )
            .map_err(kernel_err)?;
            let gd = GemvDims {
                rows,
                cols: d,
                batch: n,
                ldw: d,
                ldx: d,
                ldy: rows,
            };
            k::gemv(s, &w_in, ov[0].as_ref(), &b.h, &mut b.proj, gd).map_err(kernel_err)?;
            let cd = ConvDims {
                batch: n,
                channels: conv,
                k: self.dims.conv_kernel,
                ld_in: rows,
                ld_out: conv,
            };
            k::conv_step(
                s,
                &b.proj.slice(inner..),
                &mut b.conv[li],
                &v[1],
                ov[1].as_ref(),
                &mut b.xbc,
                cd,
            )
            .map_err(kernel_err)?;
            let sd = SsmDims {
                batch: n,
                heads: self.dims.heads,
                groups: self.dims.groups,
                head_dim: self.dims.head_dim,
                state: self.dims.state,
                ld_xbc: conv,
                ld_dt: rows,
                ld_y: inner,
            };
            k::ssm_step(
                s,
                &b.xbc,
                &b.proj.slice(inner + conv..),
                &v[2],
                Some(&v[3]),
                Some(&v[4]),
                &mut b.ssm[li],
                &mut b.y,
                sd,
                layer.dt_limit,
            )
            .map_err(kernel_err)?;
            k::gated_rmsnorm(
                s,
                &b.y,
                inner,
                &b.proj.slice(..),
                rows,
                &v[5],
                &mut b.yn,
                inner,
                n,
                inner,
                inner / self.dims.groups,
                layer.eps,
            )
            .map_err(kernel_err)?;
            let gd = GemvDims {
                rows: d,
                cols: inner,
                batch: n,
                ldw: inner,
                ldx: inner,
                ldy: d,
            };
            k::gemv(s, &w_out, ov[2].as_ref(), &b.yn, &mut b.out, gd).map_err(kernel_err)?;
        }
        let (gf, lf) = self.norm_f.storage_and_layout();
        let (gh, lh) = self.head.storage_and_layout();
        let (norm_f, head) = (cuda_view::<f32>(&gf, lf)?, weights(&gh, lh)?);
        let prev = (!self.layers.is_empty()).then(|| b.out.slice(..));
        k::add_rmsnorm(
            s,
            &mut b.resid,
            prev.as_ref(),
            &norm_f,
            &mut b.h,
            n,
            d,
            self.norm_eps,
        )
        .map_err(kernel_err)?;
        let gd = GemvDims {
            rows: self.vocab,
            cols: d,
            batch: n,
            ldw: d,
            ldx: d,
            ldy: self.vocab,
        };
        k::gemv(s, &head, None::<&CudaView<f32>>, &b.h, &mut b.logits, gd).map_err(kernel_err)?;
        let host = s
            .clone_dtoh(&b.logits.slice(..n * self.vocab))
            .map_err(driver_err)?;
        Ok(host.chunks(self.vocab).map(<[f32]>::to_vec).collect())
    }
}

fn weights<'s>(s: &'s Storage, l: &Layout) -> Result<Weights<'s>> {
    Ok(match s {
        Storage::Cuda(c) => match c.dtype() {
            DType::BF16 => {
                Weights::Bf16(c.as_cuda_slice::<half::bf16>()?.slice(l.start_offset()..))
            }
            DType::F32 => Weights::F32(c.as_cuda_slice::<f32>()?.slice(l.start_offset()..)),
            other => {
                return Err(InferError::Invalid(format!(
                    "CUDA decode step: {other:?} weights (bf16 or f32 only)"
                )))
            }
        },
        _ => {
            return Err(InferError::Invalid(
                "CUDA decode step: a weight is not on the GPU".into(),
            ))
        }
    })
}
