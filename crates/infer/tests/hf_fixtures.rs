//! The engine against HF transformers' generation fixtures (greedy tokens, prefill and cached decode logits)
//! and against the model's own full forward.

mod common;

use candle_core::{DType, Tensor};
use coil_infer::{
    generate, DecodeDtClamp, GenerateParams, SamplingParams, StopReason, WeightDtype,
};
use common::*;

/// Prefill each row, then feed HF's first three generated tokens through batched steps; returns the logits
/// [row][position 0..4] (0 = prefill's last position).
fn decode_logits(e: &coil_infer::Engine, ids: &Tensor, gen: &Tensor) -> Vec<Vec<Vec<f32>>> {
    let rows = ids.dim(0).unwrap();
    let v = e.vocab_size();
    let mut out = vec![Vec::new(); rows];
    let mut states = Vec::new();
    for (b, o) in out.iter_mut().enumerate() {
        let (l, st) = e.prefill(&row_u32(ids, b), 8).unwrap();
        o.push(l);
        states.push(st);
    }
    let mut scratch = e.scratch(rows);
    for i in 0..3 {
        let toks: Vec<u32> = (0..rows).map(|b| row_u32(gen, b)[i]).collect();
        let logits = e.step(&mut states, &toks, &mut scratch).unwrap();
        for (b, o) in out.iter_mut().enumerate() {
            o.push(logits[b * v..(b + 1) * v].to_vec());
        }
    }
    out
}

#[test]
fn hf_unclamped_step_gives_hf_greedy_tokens_and_decode_logits() {
    for name in FIXTURES {
        let fx = load_fixture(name);
        let e = engine(name, WeightDtype::F32, DecodeDtClamp::HfUnclamped);
        let (ids, gen) = (&fx["input_ids"], &fx["gen_tokens"]);
        let got = decode_logits(&e, ids, gen);
        for (b, rows) in got.iter().enumerate() {
            for (i, l) in rows.iter().enumerate() {
                let err = max_abs(l, &logits_at(&fx["gen_logits"], b, i));
                assert!(err <= 1e-4, "{name} row {b} position {i}: {err}");
            }
        }
        let prompts: Vec<Vec<u32>> = (0..2).map(|b| row_u32(ids, b)).collect();
        let n = gen.dim(1).unwrap();
        let out = generate(&e, &prompts, &greedy(n, 2), &mut |_, _| {}).unwrap();
        for (b, g) in out.iter().enumerate() {
            assert_eq!(g.tokens, row_u32(gen, b), "{name} row {b} greedy tokens");
            assert_eq!(g.stop, StopReason::Length);
        }
    }
}

#[test]
fn coil_step_equals_full_recompute_and_hf_tokens() {
    for name in FIXTURES {
        let fx = load_fixture(name);
        let e = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let (ids, gen) = (&fx["input_ids"], &fx["gen_tokens"]);
        let got = decode_logits(&e, ids, gen);
        for (b, rows) in got.iter().enumerate() {
            for (i, l) in rows.iter().enumerate() {
                // gen_logits_nocache: HF recomputing the whole sequence with the chunked (clamped) path, i.e.
                // the function Coil's step computes.
                let err = max_abs(l, &logits_at(&fx["gen_logits_nocache"], b, i));
                assert!(
                    err <= 1e-4,
                    "{name} row {b} position {i} vs no-cache: {err}"
                );
                if name != "mamba2_tied_limit" {
                    // Elsewhere the clamp changes HF's cached decode by < 1e-4.
                    let err = max_abs(l, &logits_at(&fx["gen_logits"], b, i));
                    assert!(
                        err <= 1e-4,
                        "{name} row {b} position {i} vs HF decode: {err}"
                    );
                }
            }
        }
        if name != "mamba2_tied_limit" {
            let prompts: Vec<Vec<u32>> = (0..2).map(|b| row_u32(ids, b)).collect();
            let out = generate(
                &e,
                &prompts,
                &greedy(gen.dim(1).unwrap(), 2),
                &mut |_, _| {},
            )
            .unwrap();
            for (b, g) in out.iter().enumerate() {
                assert_eq!(g.tokens, row_u32(gen, b), "{name} row {b} greedy tokens");
            }
        }
    }
}

#[test]
fn prefill_then_steps_equals_one_full_forward_and_its_state() {
    for name in FIXTURES {
        let fx = load_fixture(name);
        let e = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let ids = row_u32(&fx["input_ids"], 0);
        let t = ids.len();
        let full_ids = Tensor::from_slice(&ids, (1, t), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap();
        let (full, full_state) = e
            .model()
            .forward_with_state(&full_ids, None, None, false)
            .unwrap();
        let full = full.get(0).unwrap();
        let cut = 5;
        let (first, mut st) = e.prefill(&ids[..cut], t).unwrap();
        assert!(max_abs(&first, &full.get(cut - 1).unwrap().to_vec1().unwrap()) <= 1e-5);
        let mut scratch = e.scratch(1);
        for (pos, &tok) in ids.iter().enumerate().skip(cut) {
            let l = e
                .step(std::slice::from_mut(&mut st), &[tok], &mut scratch)
                .unwrap();
            let want = full.get(pos).unwrap().to_vec1::<f32>().unwrap();
            let err = max_abs(l, &want);
            assert!(err <= 1e-4, "{name}: step at position {pos}: {err}");
        }
        assert_eq!(st.position, t);
        // The stepped state equals the state of the full forward (conv window, SSM state, KV cache).
        let back = st.to_model_state(e.model()).unwrap();
        for (i, (a, b)) in back.layers.iter().zip(&full_state.layers).enumerate() {
            use coil_model::LayerState::*;
            let diff = |x: &Tensor, y: &Tensor| -> f32 {
                (x - y)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            match (a, b) {
                (Mamba(x), Mamba(y)) => {
                    assert!(diff(&x.conv, &y.conv) <= 1e-5, "{name} layer {i} conv");
                    assert!(diff(&x.ssm, &y.ssm) <= 1e-4, "{name} layer {i} ssm");
                }
                (Attention(x), Attention(y)) => {
                    assert!(diff(&x.k, &y.k) <= 1e-5, "{name} layer {i} keys");
                    assert!(diff(&x.v, &y.v) <= 1e-5, "{name} layer {i} values");
                }
                (Stateless, Stateless) => {}
                _ => panic!("{name} layer {i}: kinds differ"),
            }
        }
    }
}

#[test]
fn mixed_length_batch_equals_each_prompt_alone() {
    for name in ["nemotron_h_tiny", "mamba2_tiny"] {
        let fx = load_fixture(name);
        let e = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let (a, b) = (row_u32(&fx["input_ids"], 0), row_u32(&fx["input_ids"], 1));
        let prompts = vec![
            a[..3].to_vec(),
            b.clone(),
            a[7..20].to_vec(),
            vec![b[4]],
            a.clone(),
        ];
        let sampled = GenerateParams {
            sampling: SamplingParams {
                temperature: 0.8,
                top_k: 0,
                top_p: 0.9,
            },
            seed: 42,
            ..greedy(12, 3)
        };
        let together = generate(&e, &prompts, &greedy(12, 3), &mut |_, _| {}).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone =
                generate(&e, std::slice::from_ref(p), &greedy(12, 1), &mut |_, _| {}).unwrap();
            assert_eq!(together[i].tokens, alone[0].tokens, "{name} prompt {i}");
            assert_eq!(together[i].tokens.len(), 12);
        }
        // Sampling: each prompt has its own random stream, so batching does not change the draws either.
        let batched = generate(&e, &prompts, &sampled, &mut |_, _| {}).unwrap();
        let one_by_one = generate(
            &e,
            &prompts,
            &GenerateParams {
                max_batch: 1,
                ..sampled.clone()
            },
            &mut |_, _| {},
        )
        .unwrap();
        for (i, (x, y)) in batched.iter().zip(&one_by_one).enumerate() {
            assert_eq!(x.tokens, y.tokens, "{name} sampled prompt {i}");
        }
    }
}

#[test]
fn generation_stops_at_eos_and_keeps_it() {
    let fx = load_fixture("nemotron_h_tiny");
    let e = engine(
        "nemotron_h_tiny",
        WeightDtype::F32,
        DecodeDtClamp::SameAsPrefill,
    );
    let gen = row_u32(&fx["gen_tokens"], 0);
    let prompts = vec![row_u32(&fx["input_ids"], 0), row_u32(&fx["input_ids"], 1)];
    let mut seen = Vec::new();
    let params = GenerateParams {
        eos: Some(gen[3]),
        ..greedy(20, 2)
    };
    let out = generate(&e, &prompts, &params, &mut |p, t| seen.push((p, t))).unwrap();
    let first = gen.iter().position(|&t| t == gen[3]).unwrap();
    assert_eq!(out[0].tokens, gen[..=first].to_vec());
    assert_eq!(out[0].stop, StopReason::Eos);
    assert_eq!(seen.iter().filter(|(p, _)| *p == 0).count(), first + 1);
    assert!(out[1].tokens.len() <= 20);
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    for name in ["mamba2_tiny", "nemotron_h_tiny"] {
        let fx = load_fixture(name);
        let e32 = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let e16 = engine(name, WeightDtype::Bf16, DecodeDtClamp::SameAsPrefill);
        let a = decode_logits(&e32, &fx["input_ids"], &fx["gen_tokens"]);
        let b = decode_logits(&e16, &fx["input_ids"], &fx["gen_tokens"]);
        for (ra, rb) in a.iter().zip(&b) {
            // Position 0 comes from the (f32) prefill; the steps read bf16 weights.
            assert_eq!(max_abs(&ra[0], &rb[0]), 0.0);
            for (la, lb) in ra.iter().zip(rb).skip(1) {
                let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = max_abs(la, lb);
                assert!(
                    err <= 0.05 * scale,
                    "{name}: bf16 step error {err} (logit scale {scale})"
                );
            }
        }
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let e = engine(
        "mamba2_tiny",
        WeightDtype::F32,
        DecodeDtClamp::SameAsPrefill,
    );
    assert!(e.prefill(&[], 0).is_err());
    assert!(e.prefill(&[100_000], 0).is_err());
    let (_, st) = e.prefill(&[1, 2, 3], 0).unwrap();
    let mut states = vec![st];
    let mut scratch = e.scratch(1);
    assert!(e.step(&mut states, &[100_000], &mut scratch).is_err());
    assert!(e.step(&mut states, &[1, 2], &mut scratch).is_err());
    let err = generate(&e, &[vec![]], &greedy(3, 1), &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("prompt 0 is empty"), "{err}");
}
