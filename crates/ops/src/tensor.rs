//! Tensor-level entry points: the one place in Coil that picks a device path for the mixer ops.
//!
//! Each function validates shapes, then runs on the CPU the fast f32 implementation of this crate, and on any
//! other device (CUDA) the same math composed from candle tensor ops ([`composed`], differentiable through
//! candle autograd). [`mixer_core`] is the one op with a hand-written backward: the whole mixer inner chain as a
//! candle custom op on the CPU (see `tensor/mixer_op.rs`), the composed chain elsewhere.

use crate::{conv1d, dt, norm, ssd};
use candle_core::{bail, DType, Device, Result, Tensor};

pub mod checks;
pub mod composed;
pub mod cross_entropy;
mod mixer_op;
pub use cross_entropy::row_cross_entropy;
pub use mixer_op::{mixer_core, mixer_core_packed, pack_mixer_params};

fn t_is_cpu(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu)
}

fn host_f32(t: &Tensor, op: &str) -> Result<Vec<f32>> {
    if !matches!(t.device(), Device::Cpu) {
        bail!(
            "{op}: no kernel for device {:?} in this build (CPU only)",
            t.device()
        );
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// `seq_idx` [B,T] (any integer dtype, any device) as host `i32`s, checked against (B, T).
pub fn seq_idx_host(seq_idx: &Tensor, batch: usize, seqlen: usize) -> Result<Vec<i32>> {
    expect_shape(seq_idx, &[batch, seqlen], "seq_idx")?;
    if seq_idx.dtype().is_float() {
        bail!(
            "seq_idx: expected an integer tensor, got {:?}",
            seq_idx.dtype()
        );
    }
    // On the host first: not every device has a cast kernel for every integer pair (CUDA lacks i32 → i64).
    let v = seq_idx
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    v.into_iter()
        .map(|x| {
            i32::try_from(x)
                .map_err(|_| candle_core::Error::Msg(format!("seq_idx: {x} does not fit i32")))
        })
        .collect()
}

fn dims4(t: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match t.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        other => bail!("{what}: expected 4 dimensions, got {other:?}"),
    }
}

fn expect_shape(t: &Tensor, want: &[usize], what: &str) -> Result<()> {
    if t.dims() != want {
        bail!("{what}: expected shape {want:?}, got {:?}", t.dims());
    }
    Ok(())
}

/// Chunked SSD. `x` [B,T,H,P], `dt` [B,T,H], `a` [H], `b`/`c` [B,T,G,N], `d` [H], `initial_state` [B,H,P,N].
/// Returns `(y [B,T,H,P], final_state [B,H,P,N])`, both f32.
#[allow(clippy::too_many_arguments)]
pub fn ssd(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    initial_state: Option<&Tensor>,
    chunk: usize,
) -> Result<(Tensor, Tensor)> {
    let (batch, seqlen, heads, head_dim) = dims4(x, "ssd x")?;
    let (_, _, groups, state) = dims4(b, "ssd B")?;
    if groups == 0 || heads % groups != 0 {
        bail!("ssd: {heads} heads not divisible by {groups} groups");
    }
    expect_shape(dt, &[batch, seqlen, heads], "ssd dt")?;
    expect_shape(a, &[heads], "ssd A")?;
    expect_shape(b, &[batch, seqlen, groups, state], "ssd B")?;
    expect_shape(c, &[batch, seqlen, groups, state], "ssd C")?;
    expect_shape(d, &[heads], "ssd D")?;
    if let Some(s) = initial_state {
        expect_shape(s, &[batch, heads, head_dim, state], "ssd initial state")?;
    }
    if !t_is_cpu(x) {
        return composed::ssd(x, dt, a, b, c, d, initial_state, chunk, None);
    }
    let dims = ssd::SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        groups,
        state,
    };
    let (xv, dtv, av, bv, cv, dv) = (
        host_f32(x, "ssd")?,
        host_f32(dt, "ssd")?,
        host_f32(a, "ssd")?,
        host_f32(b, "ssd")?,
        host_f32(c, "ssd")?,
        host_f32(d, "ssd")?,
    );
    let init = initial_state.map(|s| host_f32(s, "ssd")).transpose()?;
    let inp = ssd::SsdInputs {
        x: &xv,
        dt: &dtv,
        a: &av,
        b: &bv,
        c: &cv,
        d: &dv,
        initial_state: init.as_deref(),
        seq_idx: None,
    };
    let out = ssd::ssd_chunked(dims, inp, chunk);
    let dev = x.device();
    Ok((
        Tensor::from_vec(out.y, (batch, seqlen, heads, head_dim), dev)?,
        Tensor::from_vec(out.final_state, (batch, heads, head_dim, state), dev)?,
    ))
}

/// Causal depthwise conv + SiLU: `x` [B,T,C], `w` [C,K] (or [C,1,K]), `bias` [C], `history` [B,C,K−1] → [B,T,C].
pub fn causal_conv1d_silu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    history: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, seqlen, ch) = x.dims3()?;
    let k = *w.dims().last().unwrap_or(&0);
    if w.elem_count() != ch * k || k == 0 {
        bail!("conv1d: weight {:?} does not match {ch} channels", w.dims());
    }
    if let Some(bv) = bias {
        expect_shape(bv, &[ch], "conv1d bias")?;
    }
    if let Some(h) = history {
        expect_shape(h, &[batch, ch, k - 1], "conv1d history")?;
    }
    if !t_is_cpu(x) {
        return composed::causal_conv1d_silu(x, w, bias, history, None);
    }
    let xv = host_f32(x, "conv1d")?;
    let wv = host_f32(w, "conv1d")?;
    let bv = bias.map(|b| host_f32(b, "conv1d")).transpose()?;
    let hv = history.map(|h| host_f32(h, "conv1d")).transpose()?;
    let out = conv1d::causal_conv1d_silu(
        &xv,
        (batch, seqlen, ch),
        &wv,
        k,
        bv.as_deref(),
        hv.as_deref(),
        None,
    );
    Tensor::from_vec(out, (batch, seqlen, ch), x.device())
}

/// `clamp(softplus(dt_raw + bias), lo, hi)`: `dt_raw` [..., H], `bias` [H] → same shape as `dt_raw`, f32.
pub fn dt_softplus(dt_raw: &Tensor, bias: &Tensor, limit: (f32, f32)) -> Result<Tensor> {
    let h = bias.elem_count();
    if dt_raw.dims().last() != Some(&h) {
        bail!(
            "dt: last dimension of {:?} is not the {h} heads of dt_bias",
            dt_raw.dims()
        );
    }
    if !t_is_cpu(dt_raw) {
        return composed::dt_softplus(dt_raw, bias, limit);
    }
    let out = dt::dt_softplus(&host_f32(dt_raw, "dt")?, &host_f32(bias, "dt")?, limit);
    Tensor::from_vec(out, dt_raw.shape(), dt_raw.device())
}

/// Group-wise gated RMSNorm: `y`, `z` [..., I], `w` [I] → [..., I], f32.
pub fn gated_rmsnorm(
    y: &Tensor,
    z: &Tensor,
    w: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    if y.dims() != z.dims() {
        bail!(
            "gated_rmsnorm: y {:?} and z {:?} differ",
            y.dims(),
            z.dims()
        );
    }
    let width = w.elem_count();
    if y.dims().last() != Some(&width) || groups == 0 || !width.is_multiple_of(groups) {
        bail!(
            "gated_rmsnorm: weight of {width} channels, {groups} groups, input {:?}",
            y.dims()
        );
    }
    if !t_is_cpu(y) {
        return composed::gated_rmsnorm(y, z, w, groups, eps);
    }
    let out = norm::gated_rmsnorm(
        &host_f32(y, "gated_rmsnorm")?,
        &host_f32(z, "gated_rmsnorm")?,
        &host_f32(w, "gated_rmsnorm")?,
        groups,
        eps as f32,
    );
    Tensor::from_vec(out, y.shape(), y.device())
}
