//! One case table for every device path: runs the composed tensor ops ([`super::composed`]) on a device and
//! compares them with this crate's CPU slice implementations (forward and, for the mixer core, backward through
//! candle autograd against the hand-written backward). The CPU unit tests run it on `Device::Cpu`; the CUDA
//! tests (`cargo test --features cuda -- --ignored`, on a GPU machine) run the same table on `cuda:0`.

use super::composed::{self, Segments};
use crate::mixer_core::{mixer_core_backward, mixer_core_forward, MixerCoreDims, MixerParams};
use crate::ssd::{ssd_chunked, ssd_reference, SsdDims, SsdInputs};
use crate::{conv1d, dt, norm};
use candle_core::{DType, Device, Result, Tensor, Var};

/// The worst error of one case: `max |got − want| / max(1, max |want|)`, against its tolerance.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub err: f32,
    pub tol: f32,
}

impl CaseResult {
    pub fn ok(&self) -> bool {
        self.err <= self.tol && self.err.is_finite()
    }
}

/// A seeded generator (LCG), so every device sees the same inputs.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect()
    }
}

/// `max |got − want| / max(1, max |want|)`.
pub fn scaled_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| if a.is_nan() { f32::NAN } else { (a - b).abs() })
        .fold(0f32, |m, e| {
            if e.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(e)
            }
        });
    worst / scale
}

/// Packed-row ids: `segments` pieces per row, boundaries spread over the row (the last piece may be longer).
pub fn packed_ids(batch: usize, seqlen: usize, pieces: usize) -> Vec<i32> {
    (0..batch)
        .flat_map(|b| {
            (0..seqlen).map(move |t| {
                let len = (seqlen / pieces).max(1) + b; // rows differ in where they cut
                ((t / len).min(pieces - 1)) as i32
            })
        })
        .collect()
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Runs the whole table on `dev` with inputs in `dtype` (f32, or bf16 where the inputs are rounded first);
/// `tol` scales the tolerances (1 for f32).
pub fn run_case_table(dev: &Device, dtype: DType) -> Result<Vec<CaseResult>> {
    // The arithmetic is f32 on both sides (bf16 inputs are rounded for the CPU side too), so forward outputs
    // agree to f32 rounding either way; bf16 gradients are rounded to bf16 ([`mixer_cases`]).
    let tol = 2e-5;
    let mut out = vec![];
    out.extend(ssd_cases(dev, dtype, tol)?);
    out.extend(conv_cases(dev, dtype, tol)?);
    out.extend(small_op_cases(dev, dtype, tol)?);
    out.extend(mixer_cases(dev, dtype, tol)?);
    Ok(out)
}

/// The inputs rounded to `dtype` and back, so the CPU reference sees what the device sees.
fn round(v: Vec<f32>, dtype: DType) -> Result<Vec<f32>> {
    if dtype == DType::F32 {
        return Ok(v);
    }
    let n = v.len();
    host(&Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)?)
}

fn put(v: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Result<Tensor> {
    Tensor::from_slice(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// (B, T, H, P, G, N, Q, initial state, packed pieces)
type SsdCase = (usize, usize, usize, usize, usize, usize, usize, bool, usize);

fn ssd_cases(dev: &Device, dtype: DType, tol: f32) -> Result<Vec<CaseResult>> {
    let table: [SsdCase; 8] = [
        (1, 1, 2, 4, 1, 8, 4, false, 1),
        (3, 1, 4, 4, 2, 8, 4, true, 1),
        (2, 7, 4, 4, 2, 8, 4, true, 1),
        (1, 16, 4, 8, 2, 16, 8, true, 1),
        (1, 9, 2, 4, 1, 4, 16, true, 1),
        (2, 13, 6, 4, 3, 8, 5, false, 3),
        (2, 24, 4, 4, 2, 8, 4, true, 4),
        (1, 40, 8, 16, 2, 32, 16, false, 2),
    ];
    let mut res = vec![];
    for (k, &(b, t, h, p, g, n, q, init, pieces)) in table.iter().enumerate() {
        let dims = SsdDims {
            batch: b,
            seqlen: t,
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
        };
        let mut r = Lcg(100 + k as u64);
        let x = round(r.vec(dims.x_len(), -1.0, 1.0), dtype)?;
        let dtv = round(r.vec(dims.dt_len(), 0.001, 0.3), dtype)?;
        let a = r.vec(h, -4.0, -0.5);
        let bv = round(r.vec(dims.bc_len(), -1.0, 1.0), dtype)?;
        let cv = round(r.vec(dims.bc_len(), -1.0, 1.0), dtype)?;
        let d = r.vec(h, -1.0, 1.0);
        let s0 = init.then(|| r.vec(dims.state_len(), -1.0, 1.0));
        let ids = (pieces > 1).then(|| packed_ids(b, t, pieces));
        let inp = SsdInputs {
            x: &x,
            dt: &dtv,
            a: &a,
            b: &bv,
            c: &cv,
            d: &d,
            initial_state: s0.as_deref(),
            seq_idx: ids.as_deref(),
        };
        let want = ssd_reference(dims, inp);
        let fast = ssd_chunked(dims, inp, q);
        let segs = ids.clone().map(|ids| Segments {
            batch: b,
            seqlen: t,
            ids,
        });
        let s0t = s0
            .as_ref()
            .map(|s| put(s, &[b, h, p, n], dev, DType::F32))
            .transpose()?;
        let (y, fin) = composed::ssd(
            &put(&x, &[b, t, h, p], dev, dtype)?,
            &put(&dtv, &[b, t, h], dev, dtype)?,
            &put(&a, &[h], dev, DType::F32)?,
            &put(&bv, &[b, t, g, n], dev, dtype)?,
            &put(&cv, &[b, t, g, n], dev, dtype)?,
            &put(&d, &[h], dev, DType::F32)?,
            s0t.as_ref(),
            q,
            segs.as_ref(),
        )?;
        let name = format!("ssd B{b} T{t} H{h} P{p} G{g} N{n} Q{q} init={init} pieces={pieces}");
        let (y, fin) = (host(&y)?, host(&fin)?);
        res.push(CaseResult {
            name: format!("{name}: y vs reference"),
            err: scaled_err(&y, &want.y),
            tol,
        });
        res.push(CaseResult {
            name: format!("{name}: final state vs reference"),
            err: scaled_err(&fin, &want.final_state),
            tol,
        });
        res.push(CaseResult {
            name: format!("{name}: y vs CPU chunked"),
            err: scaled_err(&y, &fast.y),
            tol,
        });
    }
    Ok(res)
}

fn conv_cases(dev: &Device, dtype: DType, tol: f32) -> Result<Vec<CaseResult>> {
    // (B, T, C, K, history, packed pieces)
    let table = [
        (1, 1, 3, 4, false, 1),
        (2, 9, 5, 4, true, 1),
        (2, 11, 4, 3, true, 3),
        (1, 6, 8, 2, false, 2),
    ];
    let mut res = vec![];
    for (k_case, &(b, t, c, k, with_hist, pieces)) in table.iter().enumerate() {
        let mut r = Lcg(200 + k_case as u64);
        let x = round(r.vec(b * t * c, -1.0, 1.0), dtype)?;
        let w = r.vec(c * k, -0.5, 0.5);
        let bias = r.vec(c, -0.5, 0.5);
        let hist = with_hist.then(|| r.vec(b * c * (k - 1), -1.0, 1.0));
        let ids = (pieces > 1).then(|| packed_ids(b, t, pieces));
        let want = conv1d::causal_conv1d_silu(
            &x,
            (b, t, c),
            &w,
            k,
            Some(&bias),
            hist.as_deref(),
            ids.as_deref(),
        );
        let segs = ids.map(|ids| Segments {
            batch: b,
            seqlen: t,
            ids,
        });
        let ht = hist
            .as_ref()
            .map(|h| put(h, &[b, c, k - 1], dev, DType::F32))
            .transpose()?;
        let got = composed::causal_conv1d_silu(
            &put(&x, &[b, t, c], dev, dtype)?,
            &put(&w, &[c, k], dev, DType::F32)?,
            Some(&put(&bias, &[c], dev, DType::F32)?),
            ht.as_ref(),
            segs.as_ref(),
        )?;
        res.push(CaseResult {
            name: format!("conv1d B{b} T{t} C{c} K{k} history={with_hist} pieces={pieces}"),
            err: scaled_err(&host(&got)?, &want),
            tol,
        });
    }
    Ok(res)
}

fn small_op_cases(dev: &Device, dtype: DType, tol: f32) -> Result<Vec<CaseResult>> {
    let mut res = vec![];
    let mut r = Lcg(300);
    let (rows, h) = (7, 6);
    let raw = round(r.vec(rows * h, -8.0, 24.0), dtype)?;
    let bias = r.vec(h, -1.0, 1.0);
    for limit in [(0.0, f32::INFINITY), (0.05, 0.3)] {
        let want = dt::dt_softplus(&raw, &bias, limit);
        let got = composed::dt_softplus(
            &put(&raw, &[rows, h], dev, dtype)?,
            &put(&bias, &[h], dev, DType::F32)?,
            limit,
        )?;
        res.push(CaseResult {
            name: format!("dt softplus limit {limit:?}"),
            err: scaled_err(&host(&got)?, &want),
            tol,
        });
    }
    for (width, groups) in [(12, 1), (12, 3), (32, 4)] {
        let y = round(r.vec(rows * width, -2.0, 2.0), dtype)?;
        let z = round(r.vec(rows * width, -3.0, 3.0), dtype)?;
        let w = r.vec(width, 0.5, 1.5);
        let want = norm::gated_rmsnorm(&y, &z, &w, groups, 1e-5);
        let got = composed::gated_rmsnorm(
            &put(&y, &[rows, width], dev, dtype)?,
            &put(&z, &[rows, width], dev, dtype)?,
            &put(&w, &[width], dev, DType::F32)?,
            groups,
            1e-5,
        )?;
        res.push(CaseResult {
            name: format!("gated rmsnorm width {width} groups {groups}"),
            err: scaled_err(&host(&got)?, &want),
            tol,
        });
    }
    Ok(res)
}

fn mixer_cases(dev: &Device, dtype: DType, tol: f32) -> Result<Vec<CaseResult>> {
    // (heads, head_dim, groups, state, K, chunk, limit, (B, T), packed pieces)
    let inf = f32::INFINITY;
    let table = [
        (4, 4, 2, 8, 4, 4, (0.0, inf), (2, 9), 1),
        (2, 8, 1, 16, 4, 8, (0.05, 0.3), (1, 20), 1),
        (6, 4, 3, 8, 3, 4, (0.0, inf), (2, 14), 3),
    ];
    let mut res = vec![];
    for (k_case, &(h, p, g, n, k, q, limit, (b, t), pieces)) in table.iter().enumerate() {
        let dims = MixerCoreDims {
            heads: h,
            head_dim: p,
            groups: g,
            state: n,
            conv_kernel: k,
            chunk: q,
            eps: 1e-5,
            dt_limit: limit,
        };
        let mut r = Lcg(400 + k_case as u64);
        let zx = round(r.vec(b * t * dims.in_width(), -1.0, 1.0), dtype)?;
        let w = round(r.vec(dims.conv_channels() * k, -0.5, 0.5), dtype)?;
        let mut params = r.vec(dims.params_len(), -0.5, 0.5);
        // A_log in (−1, 1.5) and a positive norm weight, as trained models have.
        let (c, hh) = (dims.conv_channels(), dims.heads);
        for v in &mut params[c + hh..c + 2 * hh] {
            *v = *v * 2.0 + 0.25;
        }
        for v in &mut params[c + 3 * hh..] {
            *v += 1.0;
        }
        let params = round(params, dtype)?;
        let dout = r.vec(b * t * dims.inner(), -1.0, 1.0);
        let ids = (pieces > 1).then(|| packed_ids(b, t, pieces));
        let pv = MixerParams::unpack(&dims, &params);
        let want = mixer_core_forward(dims, (b, t), &zx, &w, pv, ids.as_deref());
        let want_g = mixer_core_backward(dims, (b, t), &zx, &w, pv, ids.as_deref(), &dout);

        let segs = ids.clone().map(|ids| Segments {
            batch: b,
            seqlen: t,
            ids,
        });
        let seq_t = ids
            .as_ref()
            .map(|v| Tensor::from_slice(v, (b, t), dev))
            .transpose()?;
        // Two routes: the composed chain under autograd, and the public op (`mixer_core_packed`: on a GPU its
        // forward runs the composed chain without a graph and its backward recomputes it).
        for route in ["composed", "op"] {
            let zx_v = Var::from_tensor(&put(&zx, &[b, t, dims.in_width()], dev, dtype)?)?;
            let w_v = Var::from_tensor(&put(&w, &[c, k], dev, dtype)?)?;
            let p_v = Var::from_tensor(&put(&params, &[dims.params_len()], dev, dtype)?)?;
            let got = if route == "composed" {
                composed::mixer_core(
                    zx_v.as_tensor(),
                    w_v.as_tensor(),
                    p_v.as_tensor(),
                    dims,
                    segs.as_ref(),
                )?
            } else {
                super::mixer_core_packed(
                    zx_v.as_tensor(),
                    w_v.as_tensor(),
                    p_v.as_tensor(),
                    dims,
                    seq_t.as_ref(),
                )?
                .to_dtype(DType::F32)?
            };
            let dout_t = put(&dout, &[b, t, dims.inner()], dev, DType::F32)?;
            let grads = (got.mul(&dout_t)?).sum_all()?.backward()?;
            let grad_of = |v: &Var| -> Result<Vec<f32>> {
                match grads.get(v.as_tensor()) {
                    Some(t) => host(t),
                    None => candle_core::bail!("no gradient"),
                }
            };
            let name = format!(
                "mixer core ({route}) H{h} P{p} G{g} N{n} K{k} Q{q} limit {limit:?} B{b} T{t} pieces={pieces}"
            );
            // Values come back in the dtype of their inputs: bf16 rounding (2⁻⁸ relative) for bf16, except the
            // composed chain's output, which stays f32.
            let bf16 = dtype != DType::F32;
            let gtol = if bf16 { 1e-2 } else { 1e-4 };
            let ftol = if bf16 && route == "op" { 1e-2 } else { tol };
            for (what, got_v, want_v, tl) in [
                ("forward", host(&got)?, want.clone(), ftol),
                ("d zxbcdt", grad_of(&zx_v)?, want_g.d_zxbcdt.clone(), gtol),
                ("d conv_w", grad_of(&w_v)?, want_g.d_conv_w.clone(), gtol),
                ("d params", grad_of(&p_v)?, want_g.packed_params(), gtol),
            ] {
                res.push(CaseResult {
                    name: format!("{name}: {what}"),
                    err: scaled_err(&got_v, &want_v),
                    tol: tl,
                });
            }
        }
    }
    Ok(res)
}

/// Fails with every case that missed its tolerance listed (for tests).
pub fn assert_all_ok(results: &[CaseResult]) {
    for r in results {
        eprintln!(
            "{:<100} err {:.2e} (tol {:.0e}){}",
            r.name,
            r.err,
            r.tol,
            if r.ok() { "" } else { "  FAIL" }
        );
    }
    let bad: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(bad.is_empty(), "{} case(s) failed: {bad:#?}", bad.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_ops_match_the_cpu_kernels_in_f32() {
        assert_all_ok(&run_case_table(&Device::Cpu, DType::F32).unwrap());
    }

    #[test]
    fn composed_ops_match_the_cpu_kernels_in_bf16() {
        assert_all_ok(&run_case_table(&Device::Cpu, DType::BF16).unwrap());
    }
}
