//! The single-token decode step on a CUDA GPU for models whose layers are all Mamba2 mixers, on the fused kernels
//! of `coil_kernels::decode`: the embedding gather, three launches per layer (in_proj with the RMSNorm, conv
//! window and dt fused in; the SSM update with the gate; out_proj with the gated norm and the residual add), the
//! final norm with the LM head, and the greedy argmax. The launches of a step are captured once per batch into a
//! CUDA graph and replayed for every token; only the token ids (and, when sampling, the logits) cross to the host.
//! It is the GPU twin of the CPU engine's step ([`crate::step`]) with the same arithmetic (f32 activations and
//! states, weights in the model's dtype read as they are), which the CUDA tests compare it against; the prefill
//! stays the model's chunked forward.
//!
//! Weights are read in place from the model's tensors (no copy); the engine owns the per-sequence conv windows
//! and SSM states of a batch and the activation buffers, allocated once per batch size, so memory stays flat over
//! any number of tokens. Hybrids (attention and MLP layers) take the composed path until their decode kernels
//! exist.

use crate::error::{InferError, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaGraph, CudaSlice, CudaStream, CudaView, DriverError,
};
use candle_core::{DType, Device, Layout, Storage, Tensor};
use coil_kernels::decode::{
    self as k, Blas, ConvRows, DtRows, GatedNorm, GemvDims, Sched, SsmDims, StateBuf, Weights, Wide,
};
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

/// The buffers of one batch size, and the step captured over them.
struct Batch {
    /// The launches of a step, captured on first use. It holds raw pointers to the buffers below and to the
    /// model's weights (`CudaStep`'s tensors, which outlive every `Batch`); it is the first field, so it is
    /// destroyed before the buffers are freed.
    graph: Option<CudaGraph>,
    size: usize,
    conv: Vec<CudaSlice<f32>>,
    ssm: Vec<StateBuf>,
    /// The residual stream [B, hidden].
    resid: CudaSlice<f32>,
    /// The in_proj output [B, ld_proj]: z | SiLU(conv(xBC)) | dt.
    proj: CudaSlice<f32>,
    /// The gated SSM output [B, inner] and each head's sum of its squares [B, H].
    yg: CudaSlice<f32>,
    part: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    /// This step's token ids [B], and the argmax's ids and non-finite flags [B, 2].
    ids: CudaSlice<u32>,
    picked: CudaSlice<u32>,
    /// The batched path's scratch (batches above 8 sequences with bf16 weights): x̂ as two bf16 rows per sequence
    /// and the GEMM's f32 products.
    x2: Option<CudaSlice<half::bf16>>,
    p2: Option<CudaSlice<f32>>,
}

/// One step's greedy choice per sequence.
pub struct Picked {
    pub ids: Vec<u32>,
    /// The sequence's logits held NaN or infinity (its id means nothing then).
    pub non_finite: Vec<bool>,
}

pub struct CudaStep {
    stream: Arc<CudaStream>,
    sched: Sched,
    /// Capture the step into a CUDA graph (`COIL_DECODE_GRAPH=0`: plain launches every step, for measuring).
    use_graph: bool,
    /// How the SSM states are stored: f32 (the default, as the CPU engine and Hugging Face keep them) or bf16.
    state_dtype: DType,
    dims: MixerDims,
    hidden: usize,
    vocab: usize,
    norm_eps: f32,
    layers: Vec<Layer>,
    embeddings: Tensor,
    norm_f: Tensor,
    head: Tensor,
    batch: Option<Batch>,
    /// cuBLAS for the batched path, made when a batch first needs it.
    blas: Option<Blas>,
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
        let inner = dims.d_inner();
        let probe = SsmDims {
            batch: 1,
            heads: dims.heads,
            groups: dims.groups,
            head_dim: dims.head_dim,
            state: dims.state,
            ld_proj: ld_proj(&dims),
            xbc_off: inner,
            dt_off: inner + dims.conv_dim(),
            ld_y: inner,
        };
        // 16-byte chunks of bf16 (8) or f32 (4) weights per row and per norm group.
        let chunk = if lm.dtype == DType::BF16 { 8 } else { 4 };
        if !k::ssm_supported(&probe)
            || !hidden.is_multiple_of(chunk)
            || !inner.is_multiple_of(chunk)
            || !(inner / dims.groups).is_multiple_of(chunk)
        {
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
        let stream = dev.cuda_stream();
        let sched = Sched::for_stream(&stream).map_err(kernel_err)?;
        Ok(Some(CudaStep {
            stream,
            sched,
            use_graph: std::env::var("COIL_DECODE_GRAPH").map_or(true, |v| v != "0"),
            state_dtype: DType::F32,
            dims,
            hidden,
            vocab,
            norm_eps: lm.config.norm_eps as f32,
            layers,
            embeddings: lm.embeddings.contiguous()?,
            norm_f: f32_param(&lm.norm_f)?,
            head,
            batch: None,
            blas: None,
        }))
    }

    /// How the kernels are launched (programmatic dependent launch, L2 prefetch, grid sizes).
    pub fn sched(&self) -> Sched {
        self.sched
    }

    /// Turns programmatic dependent launch on or off (off: plain stream order; for comparing the two).
    pub fn set_pdl(&mut self, on: bool) {
        self.sched.pdl = on;
        if let Some(b) = &mut self.batch {
            b.graph = None;
        }
    }

    /// Replays the step from a CUDA graph (the default) or launches its kernels every step.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if let Some(b) = &mut self.batch {
            b.graph = None;
        }
    }

    /// Stores the SSM states in `dtype` from the next [`CudaStep::start`] on: f32 (the default) or bf16, which
    /// halves the bytes of a large batch's step (its state dominates there) at the cost of rounding the state to
    /// bf16 after every token, as mamba_ssm does for a bf16 model.
    pub fn set_state_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: an SSM state in {dtype:?} (f32 or bf16 only)"
            )));
        }
        if dtype != self.state_dtype {
            self.state_dtype = dtype;
            self.batch = None;
        }
        Ok(())
    }

    pub fn state_dtype(&self) -> DType {
        self.state_dtype
    }

    /// Takes over the decode state the prefill left for `batch` sequences (each Mamba layer's conv window
    /// `[B, C, K]` and SSM state `[B, H, P, N]`). The buffers (and the captured step) of the previous batch are
    /// kept when its size is the same.
    pub fn start(&mut self, state: &ModelState, batch: usize) -> Result<()> {
        if state.layers.len() != self.layers.len() {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: the state has {} layers, the model {}",
                state.layers.len(),
                self.layers.len()
            )));
        }
        if batch == 0 {
            return Err(InferError::Invalid(
                "CUDA decode step: a batch of 0 sequences".into(),
            ));
        }
        if self.wide(batch) && self.blas.is_none() {
            self.blas = Some(Blas::new(&self.stream).map_err(kernel_err)?);
        }
        let mut b = match self.batch.take() {
            Some(b) if b.size == batch => b,
            _ => self.alloc(batch)?,
        };
        let conv = self.dims.conv_dim();
        let st_len = self.dims.heads * self.dims.head_dim * self.dims.state;
        for (li, ls) in state.layers.iter().enumerate() {
            let LayerState::Mamba(m) = ls else {
                return Err(InferError::Invalid(
                    "CUDA decode step: a layer state is not a Mamba state".into(),
                ));
            };
            let (conv_len, ssm_len) = (batch * conv * self.dims.conv_kernel, batch * st_len);
            for (src, len) in [(&m.conv, conv_len), (&m.ssm, ssm_len)] {
                if src.elem_count() != len {
                    return Err(InferError::Invalid(format!(
                        "CUDA decode step: a layer state has {} elements, expected {len}",
                        src.elem_count()
                    )));
                }
            }
            self.copy_in(&m.conv, &mut b.conv[li], conv_len)?;
            match &mut b.ssm[li] {
                StateBuf::F32(dst) => self.copy_in(&m.ssm, dst, ssm_len)?,
                StateBuf::Bf16(dst) => self.copy_in(&m.ssm, dst, ssm_len)?,
            }
        }
        self.batch = Some(b);
        Ok(())
    }

    /// Copies the first `len` elements of `src` (any dtype; cast on the GPU) into `dst`.
    fn copy_in<T: candle_core::cuda_backend::CudaDType + candle_core::WithDType>(
        &self,
        src: &Tensor,
        dst: &mut CudaSlice<T>,
        len: usize,
    ) -> Result<()> {
        let t = src.to_dtype(T::DTYPE)?.contiguous()?;
        let (g, l) = t.storage_and_layout();
        let v = cuda_view::<T>(&g, l)?;
        self.stream
            .memcpy_dtod(&v.slice(..len), dst)
            .map_err(driver_err)
    }

    /// Whether a batch of `batch` sequences takes the batched path (one GEMM per matrix) rather than the GEMV
    /// kernels (`COIL_DECODE_WIDE=0` keeps the GEMVs, for measuring).
    fn wide(&self, batch: usize) -> bool {
        batch > k::MAX_GEMV_BATCH
            && self
                .layers
                .first()
                .is_some_and(|l| l.in_proj.dtype() == DType::BF16)
            && std::env::var("COIL_DECODE_WIDE").map_or(true, |v| v != "0")
    }

    fn alloc(&self, batch: usize) -> Result<Batch> {
        let (inner, conv) = (self.dims.d_inner(), self.dims.conv_dim());
        let st_len = self.dims.heads * self.dims.head_dim * self.dims.state;
        let s = &self.stream;
        let zeros = |n: usize| s.alloc_zeros::<f32>(n.max(1)).map_err(driver_err);
        let n_layers = self.layers.len();
        Ok(Batch {
            graph: None,
            size: batch,
            conv: (0..n_layers)
                .map(|_| zeros(batch * conv * self.dims.conv_kernel))
                .collect::<Result<_>>()?,
            ssm: (0..n_layers)
                .map(|_| -> Result<StateBuf> {
                    Ok(if self.state_dtype == DType::BF16 {
                        StateBuf::Bf16(
                            s.alloc_zeros::<half::bf16>(batch * st_len)
                                .map_err(driver_err)?,
                        )
                    } else {
                        StateBuf::F32(zeros(batch * st_len)?)
                    })
                })
                .collect::<Result<_>>()?,
            resid: zeros(batch * self.hidden)?,
            proj: zeros(batch * ld_proj(&self.dims))?,
            yg: zeros(batch * inner)?,
            part: zeros(batch * self.dims.heads)?,
            logits: zeros(batch * self.vocab)?,
            ids: s.alloc_zeros::<u32>(batch).map_err(driver_err)?,
            picked: s.alloc_zeros::<u32>(2 * batch).map_err(driver_err)?,
            x2: if self.wide(batch) {
                let cols = self.hidden.max(inner);
                Some(
                    s.alloc_zeros::<half::bf16>(2 * batch * cols)
                        .map_err(driver_err)?,
                )
            } else {
                None
            },
            p2: if self.wide(batch) {
                let rows = self.dims.in_proj_dim().max(self.hidden).max(self.vocab);
                Some(zeros(2 * batch * rows)?)
            } else {
                None
            },
        })
    }

    /// One token for every sequence of the batch given to [`CudaStep::start`]; returns each sequence's logits.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.run(tokens)?;
        self.logits()
    }

    /// One token for every sequence; returns each sequence's greedy choice, computed on the GPU (only the ids
    /// cross to the host).
    pub fn step_greedy(&mut self, tokens: &[u32]) -> Result<Picked> {
        self.run(tokens)?;
        let b = self.batch.as_ref().expect("run checked the batch");
        let host = self.stream.clone_dtoh(&b.picked).map_err(driver_err)?;
        Ok(Picked {
            ids: host.iter().step_by(2).copied().collect(),
            non_finite: host.iter().skip(1).step_by(2).map(|&f| f != 0).collect(),
        })
    }

    /// The logits of the last step, one row per sequence.
    pub fn logits(&self) -> Result<Vec<Vec<f32>>> {
        let Some(b) = &self.batch else {
            return Err(InferError::Invalid(
                "CUDA decode step: no step has run".into(),
            ));
        };
        let host = self.stream.clone_dtoh(&b.logits).map_err(driver_err)?;
        Ok(host.chunks(self.vocab).map(<[f32]>::to_vec).collect())
    }

    fn run(&mut self, tokens: &[u32]) -> Result<()> {
        let Some(mut b) = self.batch.take() else {
            return Err(InferError::Invalid(
                "CUDA decode step: step before start".into(),
            ));
        };
        let r = self.run_batch(&mut b, tokens);
        self.batch = Some(b);
        r
    }

    fn run_batch(&self, b: &mut Batch, tokens: &[u32]) -> Result<()> {
        if tokens.len() != b.size {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: {} tokens for a batch of {}",
                tokens.len(),
                b.size
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: token {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        self.stream
            .memcpy_htod(tokens, &mut b.ids)
            .map_err(driver_err)?;
        self.launch_step(b)
    }

    /// Launches one step: replays its graph (captured on first use), or launches the kernels when graphs are off.
    fn launch_step(&self, b: &mut Batch) -> Result<()> {
        if !self.use_graph {
            return self.record(b);
        }
        if b.graph.is_none() {
            self.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver_err)?;
            let recorded = self.record(b);
            // End the capture whatever happened, so the stream is usable again.
            let graph = self
                .stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(driver_err);
            recorded?;
            b.graph = Some(graph?.ok_or_else(|| {
                InferError::Invalid("CUDA decode step: the captured step is empty".into())
            })?);
        }
        b.graph
            .as_ref()
            .expect("captured above")
            .launch()
            .map_err(driver_err)
    }

    /// Launches one whole step on the stream (captured into the graph, or run as it is).
    fn record(&self, b: &mut Batch) -> Result<()> {
        let (s, sched, n) = (&self.stream, &self.sched, b.size);
        let (d, inner, conv) = (self.hidden, self.dims.d_inner(), self.dims.conv_dim());
        let (rows, ldp) = (self.dims.in_proj_dim(), ld_proj(&self.dims));
        let mut wide = match (&self.blas, &mut b.x2, &mut b.p2) {
            (Some(blas), Some(x2), Some(p2)) => Some(Wide { blas, x2, p2 }),
            _ => None,
        };
        {
            let (g, l) = self.embeddings.storage_and_layout();
            let table = weights(&g, l)?;
            k::embed(s, sched, &table, self.vocab, d, &b.ids, &mut b.resid, n, d)
                .map_err(kernel_err)?;
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
            let gd = GemvDims {
                rows,
                cols: d,
                batch: n,
                ldw: d,
                ldx: d,
                ldy: ldp,
            };
            let conv_rows = ConvRows {
                first: inner,
                channels: conv,
                k: self.dims.conv_kernel,
                window: &mut b.conv[li],
                w: &v[1],
                bias: ov[1].as_ref(),
            };
            let dt_rows = DtRows {
                first: inner + conv,
                bias: Some(&v[3]),
                limit: layer.dt_limit,
            };
            k::gemv_in(
                s,
                sched,
                &w_in,
                ov[0].as_ref(),
                &b.resid,
                &v[0],
                self.norm_eps,
                &mut b.proj,
                gd,
                Some(conv_rows),
                Some(dt_rows),
                wide.as_mut(),
            )
            .map_err(kernel_err)?;
            let sd = SsmDims {
                batch: n,
                heads: self.dims.heads,
                groups: self.dims.groups,
                head_dim: self.dims.head_dim,
                state: self.dims.state,
                ld_proj: ldp,
                xbc_off: inner,
                dt_off: inner + conv,
                ld_y: inner,
            };
            k::ssm_gate(
                s,
                sched,
                &b.proj,
                &v[2],
                Some(&v[4]),
                &mut b.ssm[li],
                &mut b.yg,
                &mut b.part,
                sd,
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
            let norm = GatedNorm {
                heads: self.dims.heads,
                groups: self.dims.groups,
                eps: layer.eps,
            };
            k::gemv_out(
                s,
                sched,
                &w_out,
                ov[2].as_ref(),
                &b.yg,
                &b.part,
                &v[5],
                norm,
                &mut b.resid,
                gd,
                wide.as_mut(),
            )
            .map_err(kernel_err)?;
        }
        let (gf, lf) = self.norm_f.storage_and_layout();
        let (gh, lh) = self.head.storage_and_layout();
        let (norm_f, head) = (cuda_view::<f32>(&gf, lf)?, weights(&gh, lh)?);
        let gd = GemvDims {
            rows: self.vocab,
            cols: d,
            batch: n,
            ldw: d,
            ldx: d,
            ldy: self.vocab,
        };
        k::gemv_in(
            s,
            sched,
            &head,
            None,
            &b.resid,
            &norm_f,
            self.norm_eps,
            &mut b.logits,
            gd,
            None,
            None,
            wide.as_mut(),
        )
        .map_err(kernel_err)?;
        k::argmax(
            s,
            sched,
            &b.logits,
            self.vocab,
            self.vocab,
            n,
            &mut b.picked,
        )
        .map_err(kernel_err)
    }
}

/// Row stride of the in_proj output buffer: its rows rounded up to whole 16-byte chunks, so x, B and C start
/// aligned for the SSM update's vector loads.
fn ld_proj(dims: &MixerDims) -> usize {
    dims.in_proj_dim().next_multiple_of(4)
}
