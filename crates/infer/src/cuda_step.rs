//! The single-token decode step on a CUDA GPU, on the fused kernels of `coil_kernels::decode` and
//! `coil_kernels::attn_decode`: the embedding gather; per Mamba2 layer three launches (in_proj with the RMSNorm,
//! conv window and dt fused in; the SSM update with the gate; out_proj with the gated norm and the residual add);
//! per attention layer three (the qkv projection with the RMSNorm; the attention over the KV cache, which appends
//! this token's keys and values, split over positions and merged; o_proj with the residual add); per MLP layer two
//! (up_proj with the RMSNorm and the activation; down_proj with the residual add); the final norm with the LM head,
//! and the greedy argmax. The launches of a step are captured once per batch into a CUDA graph and replayed for
//! every token; only the token ids (and, when sampling, the logits) cross to the host. The KV caches' lengths live
//! on the GPU (advanced by the step itself), so the same graph serves every position. It is the GPU twin of the
//! CPU engine's step ([`crate::step`]) with the same arithmetic (f32 activations, states and KV caches, weights in
//! the model's dtype read as they are), which the CUDA tests compare it against; the prefill stays the model's
//! chunked forward.
//!
//! Weights are read in place from the model's tensors (no copy, except an attention layer's q, k and v
//! projections, stacked once into one matrix); the engine owns the per-sequence conv windows, SSM states and KV
//! caches of a batch and the activation buffers, allocated once per batch size and KV capacity (the prompt plus
//! the tokens [`CudaStep::start`] is told to expect), so memory stays flat over any number of tokens.

use crate::error::{InferError, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaGraph, CudaSlice, CudaStream, CudaView, DriverError,
};
use candle_core::{DType, Device, Layout, Storage, Tensor};
use coil_kernels::attn_decode as ka;
use coil_kernels::decode::{
    self as k, Blas, ConvRows, DtRows, GatedNorm, GemvDims, Sched, SsmDims, StateBuf, Weights, Wide,
};
use coil_model::config::{MixerDims, MlpActivation};
use coil_model::layers::Linear;
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

/// A Mamba2 layer's parameters as the kernels take them.
struct MambaLayer {
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

/// An attention layer: q, k and v stacked into one projection `[heads·hd + 2·kv_heads·hd, hidden]`.
struct AttnLayer {
    norm: Tensor,
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    o: Tensor,
    o_bias: Option<Tensor>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl AttnLayer {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn qkv_rows(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// An MLP layer (up_proj, activation, down_proj).
struct MlpLayer {
    norm: Tensor,
    up: Tensor,
    up_bias: Option<Tensor>,
    down: Tensor,
    down_bias: Option<Tensor>,
    act: k::Act,
}

enum Layer {
    Mamba(MambaLayer),
    Attention(AttnLayer),
    Mlp(MlpLayer),
}

/// The KV cache of one attention layer for a batch: `[B, kv_heads, capacity, hd]` keys and values.
struct KvBuf {
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

/// The buffers of one batch size, and the step captured over them.
struct Batch {
    /// The launches of a step, captured on first use. It holds raw pointers to the buffers below and to the
    /// model's weights (`CudaStep`'s tensors, which outlive every `Batch`); it is the first field, so it is
    /// destroyed before the buffers are freed.
    graph: Option<CudaGraph>,
    size: usize,
    /// Per Mamba layer (in layer order).
    conv: Vec<CudaSlice<f32>>,
    ssm: Vec<StateBuf>,
    /// Per attention layer (in layer order), each holding `capacity` positions per sequence.
    kv: Vec<KvBuf>,
    capacity: usize,
    /// Positions in the KV caches per sequence [B] (advanced on the GPU at the end of every step), the host's
    /// count of the same (for refusing a step past the capacity), the attention output [B, heads·hd] and the
    /// attention's partials.
    lens: Option<CudaSlice<u32>>,
    used: usize,
    attn_y: Option<CudaSlice<f32>>,
    attn_scratch: Option<CudaSlice<f32>>,
    /// The residual stream [B, hidden].
    resid: CudaSlice<f32>,
    /// The first projection's output [B, ld_proj]: in_proj's z | SiLU(conv(xBC)) | dt, the attention's q | k | v,
    /// the MLP's hidden activation.
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
    /// The batched path: one zeroed counter per sequence (the SSM update's last-CTA election).
    count: Option<CudaSlice<u32>>,
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
    /// Row stride of the first projection's output (the widest of the layers', in whole 16-byte chunks).
    ld_proj: usize,
    embeddings: Tensor,
    norm_f: Tensor,
    head: Tensor,
    batch: Option<Batch>,
    /// cuBLAS for the batched path, made when a batch first needs it.
    blas: Option<Blas>,
}

impl CudaStep {
    /// The fused step for `lm`, or `None` when it does not apply (not on a CUDA device, weights neither bf16 nor
    /// f32, or sizes the kernels do not take).
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
        // 16-byte chunks of bf16 (8) or f32 (4) weights per row (and per norm group).
        let chunk = if lm.dtype == DType::BF16 { 8 } else { 4 };
        let whole = |n: usize| n.is_multiple_of(chunk);
        if !whole(hidden) {
            return Ok(None);
        }
        let weight = |t: &Tensor| -> Result<Tensor> { Ok(t.contiguous()?) };
        let bias = |b: &Option<Tensor>| b.as_ref().map(f32_param).transpose();
        let mut layers = Vec::with_capacity(lm.blocks.len());
        let mut ld = 0;
        for block in &lm.blocks {
            let norm = f32_param(&block.norm)?;
            layers.push(match &block.mixer {
                Mixer::Mamba(m) => {
                    let probe = SsmDims {
                        batch: 1,
                        heads: dims.heads,
                        groups: dims.groups,
                        head_dim: dims.head_dim,
                        state: dims.state,
                        ld_proj: ld_mamba(&dims),
                        xbc_off: inner,
                        dt_off: inner + dims.conv_dim(),
                        ld_y: inner,
                    };
                    if !k::ssm_supported(&probe) || !whole(inner) || !whole(inner / dims.groups) {
                        return Ok(None);
                    }
                    ld = ld.max(ld_mamba(&dims));
                    Layer::Mamba(MambaLayer {
                        norm,
                        in_proj: weight(&m.in_proj.weight)?,
                        in_bias: bias(&m.in_proj.bias)?,
                        conv_w: f32_param(&m.conv_weight)?,
                        conv_b: bias(&m.conv_bias)?,
                        a: f32_param(&m.a_log.to_dtype(DType::F32)?.exp()?.neg()?)?,
                        dt_bias: f32_param(&m.dt_bias)?,
                        d: f32_param(&m.d)?,
                        gnorm: f32_param(&m.norm_weight)?,
                        out_proj: weight(&m.out_proj.weight)?,
                        out_bias: bias(&m.out_proj.bias)?,
                        eps: m.eps as f32,
                        dt_limit: m.dt_limit,
                    })
                }
                Mixer::Attention(a) => {
                    let layer = AttnLayer {
                        norm,
                        qkv: Tensor::cat(
                            &[&a.q_proj.weight, &a.k_proj.weight, &a.v_proj.weight],
                            0,
                        )?
                        .contiguous()?,
                        qkv_bias: stacked_bias(
                            [&a.q_proj, &a.k_proj, &a.v_proj],
                            [a.num_heads, a.num_kv_heads, a.num_kv_heads].map(|h| h * a.head_dim),
                        )?,
                        o: weight(&a.o_proj.weight)?,
                        o_bias: bias(&a.o_proj.bias)?,
                        heads: a.num_heads,
                        kv_heads: a.num_kv_heads,
                        head_dim: a.head_dim,
                    };
                    let probe = attn_dims(&layer, 1, 1, layer.qkv_rows().next_multiple_of(4));
                    if !ka::attn_supported(&probe) || !whole(layer.q_width()) {
                        return Ok(None);
                    }
                    ld = ld.max(layer.qkv_rows());
                    Layer::Attention(layer)
                }
                Mixer::Mlp(m) => {
                    let f = m.up_proj.weight.dim(0)?;
                    if !whole(f) {
                        return Ok(None);
                    }
                    ld = ld.max(f);
                    Layer::Mlp(MlpLayer {
                        norm,
                        up: weight(&m.up_proj.weight)?,
                        up_bias: bias(&m.up_proj.bias)?,
                        down: weight(&m.down_proj.weight)?,
                        down_bias: bias(&m.down_proj.bias)?,
                        act: match m.activation {
                            MlpActivation::Relu2 => k::Act::Relu2,
                            MlpActivation::Gelu => k::Act::Gelu,
                        },
                    })
                }
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
            ld_proj: ld.next_multiple_of(4).max(4),
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

    /// Runs the batched path (more than 8 sequences, bf16 weights) with its fused launches or each step of it as its
    /// own kernel (the default; `COIL_DECODE_FUSE=1` changes it); the results are the same bits.
    pub fn set_fuse_wide(&mut self, on: bool) {
        self.sched.fuse_wide = on;
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
    /// `[B, C, K]` and SSM state `[B, H, P, N]`, each attention layer's keys and values `[B, kv_heads, S, hd]`),
    /// with room in the KV caches for `steps` more tokens. The buffers (and the captured step) of the previous
    /// batch are kept when its size and KV capacity are the same.
    pub fn start(&mut self, state: &ModelState, batch: usize, steps: usize) -> Result<()> {
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
        // The prompt length the KV caches hold (one per batch), and the capacity it needs.
        let mut prompt = None;
        for ls in &state.layers {
            if let LayerState::Attention(c) = ls {
                let (_, _, s, _) = c.k.dims4()?;
                if prompt.is_some_and(|p| p != s) {
                    return Err(InferError::Invalid(format!(
                        "CUDA decode step: KV caches of {} and {s} positions in one state",
                        prompt.unwrap_or(0)
                    )));
                }
                prompt = Some(s);
            }
        }
        let capacity = prompt.map_or(0, |p| p + steps.max(1));
        if self.wide(batch) && self.blas.is_none() {
            self.blas = Some(Blas::new(&self.stream).map_err(kernel_err)?);
        }
        let mut b = match self.batch.take() {
            Some(b) if b.size == batch && b.capacity == capacity => b,
            other => {
                drop(other); // free the old buffers before allocating the new ones
                self.alloc(batch, capacity)?
            }
        };
        let conv = self.dims.conv_dim();
        let st_len = self.dims.heads * self.dims.head_dim * self.dims.state;
        let (mut mi, mut ai) = (0, 0);
        for (li, (ls, layer)) in state.layers.iter().zip(&self.layers).enumerate() {
            match (ls, layer) {
                (LayerState::Mamba(m), Layer::Mamba(_)) => {
                    let (conv_len, ssm_len) =
                        (batch * conv * self.dims.conv_kernel, batch * st_len);
                    for (src, len) in [(&m.conv, conv_len), (&m.ssm, ssm_len)] {
                        if src.elem_count() != len {
                            return Err(InferError::Invalid(format!(
                                "CUDA decode step: layer {li}'s state has {} elements, expected {len}",
                                src.elem_count()
                            )));
                        }
                    }
                    self.copy_in(&m.conv, &mut b.conv[mi], conv_len)?;
                    match &mut b.ssm[mi] {
                        StateBuf::F32(dst) => self.copy_in(&m.ssm, dst, ssm_len)?,
                        StateBuf::Bf16(dst) => self.copy_in(&m.ssm, dst, ssm_len)?,
                    }
                    mi += 1;
                }
                (LayerState::Attention(c), Layer::Attention(a)) => {
                    let want = (batch, a.kv_heads, prompt.unwrap_or(0), a.head_dim);
                    for t in [&c.k, &c.v] {
                        if t.dims4()? != want {
                            return Err(InferError::Invalid(format!(
                                "CUDA decode step: layer {li}'s KV cache is {:?}, expected {want:?}",
                                t.dims()
                            )));
                        }
                    }
                    let kv = &mut b.kv[ai];
                    self.copy_kv(&c.k, &mut kv.k, capacity)?;
                    self.copy_kv(&c.v, &mut kv.v, capacity)?;
                    ai += 1;
                }
                (LayerState::Stateless, Layer::Mlp(_)) => {}
                _ => {
                    return Err(InferError::Invalid(format!(
                        "CUDA decode step: layer {li}'s state does not match its kind"
                    )))
                }
            }
        }
        if let Some(lens) = &mut b.lens {
            let p = prompt.unwrap_or(0) as u32;
            self.stream
                .memcpy_htod(&vec![p; batch], lens)
                .map_err(driver_err)?;
        }
        b.used = prompt.unwrap_or(0);
        self.batch = Some(b);
        Ok(())
    }

    /// Copies a prefill's keys or values `[B, kv_heads, S, hd]` into a cache of `capacity` positions per (sequence,
    /// kv head).
    fn copy_kv(&self, src: &Tensor, dst: &mut CudaSlice<f32>, capacity: usize) -> Result<()> {
        let (b, h, len, hd) = src.dims4()?;
        if len == 0 {
            return Ok(());
        }
        let t = src.to_dtype(DType::F32)?.contiguous()?;
        let (g, l) = t.storage_and_layout();
        let v = cuda_view::<f32>(&g, l)?;
        for r in 0..b * h {
            self.stream
                .memcpy_dtod(
                    &v.slice(r * len * hd..(r + 1) * len * hd),
                    &mut dst.slice_mut(r * capacity * hd..(r * capacity + len) * hd),
                )
                .map_err(driver_err)?;
        }
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
            && self.embeddings.dtype() == DType::BF16
            && std::env::var("COIL_DECODE_WIDE").map_or(true, |v| v != "0")
    }

    fn mamba_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l, Layer::Mamba(_)))
            .count()
    }

    fn attn_layers(&self) -> impl Iterator<Item = &AttnLayer> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Attention(a) => Some(a),
            _ => None,
        })
    }

    fn alloc(&self, batch: usize, capacity: usize) -> Result<Batch> {
        let (inner, conv) = (self.dims.d_inner(), self.dims.conv_dim());
        let st_len = self.dims.heads * self.dims.head_dim * self.dims.state;
        let s = &self.stream;
        let zeros = |n: usize| s.alloc_zeros::<f32>(n.max(1)).map_err(driver_err);
        let n_mamba = self.mamba_layers();
        let attn: Vec<&AttnLayer> = self.attn_layers().collect();
        let attn_y = attn.iter().map(|a| a.q_width()).max();
        let scratch = attn
            .iter()
            .map(|a| ka::attn_scratch_len(&attn_dims(a, batch, capacity, self.ld_proj)))
            .max();
        // The widest input and output of any GEMV (for the batched path's scratch).
        let mut cols = self.hidden.max(inner).max(attn_y.unwrap_or(0));
        for l in &self.layers {
            if let Layer::Mlp(m) = l {
                cols = cols.max(m.up.dim(0)?);
            }
        }
        let wide = self.wide(batch);
        Ok(Batch {
            graph: None,
            size: batch,
            conv: (0..n_mamba)
                .map(|_| zeros(batch * conv * self.dims.conv_kernel))
                .collect::<Result<_>>()?,
            ssm: (0..n_mamba)
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
            kv: attn
                .iter()
                .map(|a| -> Result<KvBuf> {
                    let n = batch * a.kv_heads * capacity * a.head_dim;
                    let kv = |n: usize| {
                        s.alloc_zeros::<f32>(n.max(1)).map_err(|e| {
                            InferError::Invalid(format!(
                                "CUDA decode step: allocating the KV caches ({:.2} GB: {} attention layers, \
                                 {batch} sequences, {capacity} positions, {} kv heads of {}, f32 keys and values): \
                                 {e}; fewer new tokens or a smaller batch need less",
                                kv_bytes(&attn, batch, capacity) as f64 / 1e9,
                                attn.len(),
                                a.kv_heads,
                                a.head_dim
                            ))
                        })
                    };
                    Ok(KvBuf { k: kv(n)?, v: kv(n)? })
                })
                .collect::<Result<_>>()?,
            capacity,
            lens: if attn.is_empty() {
                None
            } else {
                Some(s.alloc_zeros::<u32>(batch).map_err(driver_err)?)
            },
            used: 0,
            attn_y: attn_y.map(|w| zeros(batch * w)).transpose()?,
            attn_scratch: scratch.map(zeros).transpose()?,
            resid: zeros(batch * self.hidden)?,
            proj: zeros(batch * self.ld_proj)?,
            yg: zeros(batch * inner)?,
            part: zeros(batch * self.dims.heads)?,
            logits: zeros(batch * self.vocab)?,
            ids: s.alloc_zeros::<u32>(batch).map_err(driver_err)?,
            picked: s.alloc_zeros::<u32>(2 * batch).map_err(driver_err)?,
            x2: if wide {
                Some(
                    s.alloc_zeros::<half::bf16>(2 * batch * cols)
                        .map_err(driver_err)?,
                )
            } else {
                None
            },
            p2: if wide {
                let rows = self.ld_proj.max(self.hidden).max(self.vocab);
                Some(zeros(2 * batch * rows)?)
            } else {
                None
            },
            count: if wide {
                Some(s.alloc_zeros::<u32>(batch).map_err(driver_err)?)
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
        if b.lens.is_some() && b.used >= b.capacity {
            return Err(InferError::Invalid(format!(
                "CUDA decode step: the KV caches hold {} positions per sequence, all used (start the batch with \
                 room for more steps)",
                b.capacity
            )));
        }
        self.stream
            .memcpy_htod(tokens, &mut b.ids)
            .map_err(driver_err)?;
        self.launch_step(b)?;
        b.used += 1;
        Ok(())
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
        let (d, ldp) = (self.hidden, self.ld_proj);
        let mut wide = match (&self.blas, &mut b.x2, &mut b.p2, &mut b.count) {
            (Some(blas), Some(x2), Some(p2), Some(count)) => Some(Wide::new(blas, x2, p2, count)),
            _ => None,
        };
        {
            let (g, l) = self.embeddings.storage_and_layout();
            let table = weights(&g, l)?;
            k::embed(s, sched, &table, self.vocab, d, &b.ids, &mut b.resid, n, d)
                .map_err(kernel_err)?;
        }
        let (mut mi, mut ai) = (0, 0);
        for layer in &self.layers {
            match layer {
                Layer::Mamba(m) => {
                    let (conv, ssm) = (&mut b.conv[mi], &mut b.ssm[mi]);
                    mi += 1;
                    self.record_mamba(
                        m,
                        conv,
                        ssm,
                        &mut b.resid,
                        &mut b.proj,
                        &mut b.yg,
                        &mut b.part,
                        n,
                        &mut wide,
                    )?;
                }
                Layer::Attention(a) => {
                    let kv = &mut b.kv[ai];
                    ai += 1;
                    self.first_proj(
                        &a.norm,
                        &a.qkv,
                        a.qkv_bias.as_ref(),
                        k::Act::None,
                        &b.resid,
                        &mut b.proj,
                        n,
                        &mut wide,
                    )?;
                    let (Some(lens), Some(y), Some(scratch)) =
                        (&b.lens, &mut b.attn_y, &mut b.attn_scratch)
                    else {
                        return Err(InferError::Invalid(
                            "CUDA decode step: no KV buffers for an attention layer".into(),
                        ));
                    };
                    let ad = attn_dims(a, n, b.capacity, ldp);
                    ka::attn_decode(
                        s, sched, &b.proj, &mut kv.k, &mut kv.v, lens, y, scratch, ad,
                    )
                    .map_err(kernel_err)?;
                    self.add_proj(
                        &a.o,
                        a.o_bias.as_ref(),
                        y,
                        a.q_width(),
                        &mut b.resid,
                        n,
                        &mut wide,
                    )?;
                }
                Layer::Mlp(m) => {
                    self.first_proj(
                        &m.norm,
                        &m.up,
                        m.up_bias.as_ref(),
                        m.act,
                        &b.resid,
                        &mut b.proj,
                        n,
                        &mut wide,
                    )?;
                    self.add_proj(
                        &m.down,
                        m.down_bias.as_ref(),
                        &b.proj,
                        ldp,
                        &mut b.resid,
                        n,
                        &mut wide,
                    )?;
                }
            }
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
            k::Act::None,
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
        .map_err(kernel_err)?;
        if let Some(lens) = &mut b.lens {
            ka::attn_advance_lens(s, sched, lens, n, b.capacity).map_err(kernel_err)?;
        }
        // The LM head's split took the last layer's pending residual add; nothing should be left.
        if let Some(w) = wide.as_mut() {
            w.flush(s, sched).map_err(kernel_err)?;
        }
        Ok(())
    }

    /// The first projection of an attention or MLP layer: `proj[b, ..rows] = act(W·(RMSNorm(resid)·norm) + bias)`.
    #[allow(clippy::too_many_arguments)]
    fn first_proj(
        &self,
        norm: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: k::Act,
        resid: &CudaSlice<f32>,
        proj: &mut CudaSlice<f32>,
        n: usize,
        wide: &mut Option<Wide<'_>>,
    ) -> Result<()> {
        let (gn, ln) = norm.storage_and_layout();
        let (gw, lw) = w.storage_and_layout();
        let gb = bias.map(|t| t.storage_and_layout());
        let bias = gb
            .as_ref()
            .map(|(g, l)| cuda_view::<f32>(g, l))
            .transpose()?;
        let gd = GemvDims {
            rows: w.dim(0)?,
            cols: self.hidden,
            batch: n,
            ldw: self.hidden,
            ldx: self.hidden,
            ldy: self.ld_proj,
        };
        k::gemv_in(
            &self.stream,
            &self.sched,
            &weights(&gw, lw)?,
            bias.as_ref(),
            resid,
            &cuda_view::<f32>(&gn, ln)?,
            self.norm_eps,
            proj,
            gd,
            None,
            None,
            act,
            wide.as_mut(),
        )
        .map_err(kernel_err)
    }

    /// The last projection of an attention or MLP layer: `resid[b] += W·x[b] + bias` (x at row stride `ldx`).
    #[allow(clippy::too_many_arguments)]
    fn add_proj(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        x: &CudaSlice<f32>,
        ldx: usize,
        resid: &mut CudaSlice<f32>,
        n: usize,
        wide: &mut Option<Wide<'_>>,
    ) -> Result<()> {
        let (gw, lw) = w.storage_and_layout();
        let gb = bias.map(|t| t.storage_and_layout());
        let bias = gb
            .as_ref()
            .map(|(g, l)| cuda_view::<f32>(g, l))
            .transpose()?;
        let cols = w.dim(1)?;
        let gd = GemvDims {
            rows: self.hidden,
            cols,
            batch: n,
            ldw: cols,
            ldx,
            ldy: self.hidden,
        };
        k::gemv_plain(
            &self.stream,
            &self.sched,
            &weights(&gw, lw)?,
            bias.as_ref(),
            x,
            resid,
            gd,
            wide.as_mut(),
        )
        .map_err(kernel_err)
    }

    /// A Mamba2 layer's three launches: in_proj (RMSNorm, conv window, dt), the SSM update with the gate, out_proj
    /// (gated norm, residual add).
    #[allow(clippy::too_many_arguments)]
    fn record_mamba(
        &self,
        layer: &MambaLayer,
        window: &mut CudaSlice<f32>,
        ssm: &mut StateBuf,
        resid: &mut CudaSlice<f32>,
        proj: &mut CudaSlice<f32>,
        yg: &mut CudaSlice<f32>,
        part: &mut CudaSlice<f32>,
        n: usize,
        wide: &mut Option<Wide<'_>>,
    ) -> Result<()> {
        let (s, sched) = (&self.stream, &self.sched);
        let (d, inner, conv) = (self.hidden, self.dims.d_inner(), self.dims.conv_dim());
        let (rows, ldp) = (self.dims.in_proj_dim(), self.ld_proj);
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
            window,
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
            resid,
            &v[0],
            self.norm_eps,
            proj,
            gd,
            Some(conv_rows),
            Some(dt_rows),
            k::Act::None,
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
        let wide_ssm = wide.as_mut().map(|w| k::WideSsm {
            wide: w,
            norm_w: &v[5],
            eps: layer.eps,
        });
        k::ssm_gate(
            s,
            sched,
            proj,
            &v[2],
            Some(&v[4]),
            ssm,
            yg,
            part,
            sd,
            wide_ssm,
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
            yg,
            part,
            &v[5],
            norm,
            resid,
            gd,
            wide.as_mut(),
        )
        .map_err(kernel_err)
    }
}

/// Row stride a Mamba layer needs of the projection buffer: its in_proj rows rounded up to whole 16-byte chunks,
/// so x, B and C start aligned for the SSM update's vector loads.
fn ld_mamba(dims: &MixerDims) -> usize {
    dims.in_proj_dim().next_multiple_of(4)
}

/// The biases of q, k and v stacked as the projection's (zeros for a missing one), or `None` when none has one.
fn stacked_bias(linears: [&Linear; 3], widths: [usize; 3]) -> Result<Option<Tensor>> {
    if linears.iter().all(|l| l.bias.is_none()) {
        return Ok(None);
    }
    let dev = linears[0].weight.device();
    let parts = linears
        .iter()
        .zip(widths)
        .map(|(l, w)| match &l.bias {
            Some(b) => f32_param(b),
            None => Ok(Tensor::zeros(w, DType::F32, dev)?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&parts, 0)?.contiguous()?))
}

/// Bytes of the KV caches of these attention layers at this batch and capacity (f32 keys and values).
fn kv_bytes(layers: &[&AttnLayer], batch: usize, capacity: usize) -> usize {
    layers
        .iter()
        .map(|a| 2 * batch * a.kv_heads * capacity * a.head_dim * 4)
        .sum()
}

/// The attention kernel's sizes for `layer` at this batch and KV capacity.
fn attn_dims(layer: &AttnLayer, batch: usize, capacity: usize, ld_qkv: usize) -> ka::AttnDims {
    ka::AttnDims {
        batch,
        heads: layer.heads,
        kv_heads: layer.kv_heads,
        head_dim: layer.head_dim,
        max_len: capacity,
        ld_qkv,
        ld_out: layer.q_width(),
        scale: 1.0 / (layer.head_dim as f32).sqrt(),
    }
}
