//! Tests of the candle mixer-core op beyond the case table: forward equal to the four ops' entry points chained,
//! gradients from candle autograd bit-equal to the CPU backward (and against f64 finite differences) for
//! either conv-weight layout, bf16 in/out, and errors for bad shapes.

use super::tests::{tiny_dims, MixerCase};
use super::*;
use crate::conv1d::causal_conv1d_silu;
use crate::dt::dt_softplus;
use crate::gated_rmsnorm::gated_rmsnorm;
use crate::ssd::ssd;
use candle_core::Var;
use coil_testutil::{fd_err, max_abs_diff};

/// The case's inputs as tensors: zxbcdt, conv_w [C,K] and the five parameter pieces.
fn tensors(case: &MixerCase) -> Result<(Tensor, Tensor, [Tensor; 5])> {
    let d = &case.dims;
    let dev = &Device::Cpu;
    let (b, t) = case.bt;
    let zx = Tensor::from_vec(case.zx.clone(), (b, t, d.in_width()), dev)?;
    let w = Tensor::from_vec(case.conv_w.clone(), (d.conv_channels(), d.conv_kernel), dev)?;
    let p = MixerParams::unpack(d, &case.params);
    let pieces = [p.conv_bias, p.dt_bias, p.a_log, p.d, p.norm_w].map(|v| Tensor::new(v, dev));
    let [a, b1, c, d1, e] = pieces;
    Ok((zx, w, [a?, b1?, c?, d1?, e?]))
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

#[test]
fn forward_equals_composed_tensor_ops() -> Result<()> {
    for limit in [(0.0, f32::INFINITY), (0.05, 0.3)] {
        let case = MixerCase::new(tiny_dims(limit), (2, 5), 11);
        let d = case.dims;
        let (zx, w, [conv_b, dt_b, a_log, dd, norm_w]) = tensors(&case)?;
        let params = pack_mixer_params(&conv_b, &dt_b, &a_log, &dd, &norm_w)?;
        let got = mixer_core(&zx, &w, &params, d)?;

        let (b, t) = case.bt;
        let (i, ch, gn) = (d.inner(), d.conv_channels(), d.bc_width());
        let z = zx.narrow(2, 0, i)?;
        let xbc = causal_conv1d_silu(&zx.narrow(2, i, ch)?, &w, Some(&conv_b), None)?;
        let x = xbc.narrow(2, 0, i)?.reshape((b, t, d.heads, d.head_dim))?;
        let bm = xbc.narrow(2, i, gn)?.reshape((b, t, d.groups, d.state))?;
        let cm = xbc
            .narrow(2, i + gn, gn)?
            .reshape((b, t, d.groups, d.state))?;
        let dt = dt_softplus(&zx.narrow(2, i + ch, d.heads)?, &dt_b, d.dt_limit)?;
        let a = a_log.exp()?.neg()?;
        let (y, _) = ssd(&x, &dt, &a, &bm, &cm, &dd, None, d.chunk)?;
        let want = gated_rmsnorm(&y.reshape((b, t, i))?, &z, &norm_w, d.groups, d.eps as f64)?;
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(&flat(&got)?, &flat(&want)?);
        assert!(err < 1e-6, "limit {limit:?}: {err}");
    }
    Ok(())
}

/// Runs candle autograd on `Σ dout·mixer_core(...)` with every input a `Var`; returns the gradients of
/// zxbcdt, conv_w and the five pieces concatenated.
fn autograd(case: &MixerCase, dtype: DType, conv_w_3d: bool) -> Result<(Tensor, [Vec<f32>; 3])> {
    let (zx, w, pieces) = tensors(case)?;
    let w = if conv_w_3d { w.unsqueeze(1)? } else { w };
    let zx = Var::from_tensor(&zx.to_dtype(dtype)?)?;
    let w = Var::from_tensor(&w.to_dtype(dtype)?)?;
    let pieces: Vec<Var> = pieces
        .iter()
        .map(|p| Var::from_tensor(&p.to_dtype(dtype)?))
        .collect::<Result<_>>()?;
    let [cb, db, al, dd, nw] = [0, 1, 2, 3, 4].map(|k| pieces[k].as_tensor());
    let params = pack_mixer_params(cb, db, al, dd, nw)?;
    let out = mixer_core(zx.as_tensor(), w.as_tensor(), &params, case.dims)?;
    let dout = Tensor::from_vec(case.dout.clone(), out.shape(), &Device::Cpu)?.to_dtype(dtype)?;
    let grads = (out.mul(&dout)?).sum_all()?.backward()?;
    let get = |t: &Tensor| -> Result<Vec<f32>> {
        match grads.get(t) {
            Some(g) => {
                assert_eq!(g.dtype(), dtype, "gradient dtype");
                assert_eq!(g.dims(), t.dims(), "gradient shape");
                flat(g)
            }
            None => bail!("no gradient"),
        }
    };
    let mut p = vec![];
    for v in &pieces {
        p.extend(get(v.as_tensor())?);
    }
    Ok((out, [get(zx.as_tensor())?, get(w.as_tensor())?, p]))
}

#[test]
fn autograd_gradients_match_f64_finite_differences() -> Result<()> {
    let mut worst = 0f64;
    for (limit, seed, w3) in [((0.0, f32::INFINITY), 12, false), ((0.05, 0.3), 13, true)] {
        let case = MixerCase::new(tiny_dims(limit), (2, 5), seed);
        let (_, got) = autograd(&case, DType::F32, w3)?;
        let fd = case.fd_grads(None);
        for (k, name) in ["zxbcdt", "conv_w", "params"].iter().enumerate() {
            let e = fd_err(&got[k], &fd[k]);
            worst = worst.max(e);
            assert!(e < 1e-4, "limit {limit:?}: d{name} err {e}");
        }
        // and exactly what the slice backward gives: the op kept the SSD output from its forward (it is part of
        // a graph), the slice backward recomputes it
        let g = case.backward();
        assert_eq!(got[0], g.d_zxbcdt);
        assert_eq!(got[1], g.d_conv_w);
        assert_eq!(got[2], g.packed_params());
    }
    eprintln!(
        "mixer_core op: candle autograd vs f64 central differences, max err / (1+|fd|) {worst:e}"
    );
    Ok(())
}

#[test]
fn bf16_inputs_give_bf16_output_and_gradients() -> Result<()> {
    let case = MixerCase::new(tiny_dims((0.0, f32::INFINITY)), (1, 6), 14);
    let (out, got) = autograd(&case, DType::BF16, false)?;
    assert_eq!(out.dtype(), DType::BF16);
    let (out32, want) = autograd(&case, DType::F32, false)?;
    // bf16 keeps ~3 significant digits; inputs are rounded too, so compare loosely against the f32 run.
    assert!(max_abs_diff(&flat(&out)?, &flat(&out32)?) < 0.05);
    for k in 0..3 {
        let scale = want[k].iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got[k], &want[k]);
        assert!(
            err < 0.05 * scale.max(1.0),
            "grad {k}: {err} (scale {scale})"
        );
    }
    Ok(())
}

#[test]
fn bad_shapes_and_dtypes_are_errors() -> Result<()> {
    let case = MixerCase::new(tiny_dims((0.0, f32::INFINITY)), (1, 3), 15);
    let (zx, w, [cb, db, al, dd, nw]) = tensors(&case)?;
    let params = pack_mixer_params(&cb, &db, &al, &dd, &nw)?;
    let d = case.dims;
    assert!(mixer_core(&zx.narrow(2, 1, d.in_width() - 1)?, &w, &params, d).is_err());
    assert!(mixer_core(&zx, &w.narrow(1, 0, 2)?, &params, d).is_err());
    assert!(mixer_core(&zx, &w, &params.narrow(0, 1, d.params_len() - 1)?, d).is_err());
    assert!(mixer_core(&zx.to_dtype(DType::U32)?, &w, &params, d).is_err());
    let bad = MixerCoreDims { groups: 3, ..d };
    assert!(mixer_core(&zx, &w, &params, bad).is_err());
    assert!(pack_mixer_params(&cb.unsqueeze(0)?, &db, &al, &dd, &nw).is_err());
    assert!(pack_mixer_params(&cb, &db.to_dtype(DType::BF16)?, &al, &dd, &nw).is_err());
    Ok(())
}
