//! `generate_on_device` (generation on the model's own device, the path `coil generate --device cuda` takes) on
//! the CPU, where its steps are the model's T = 1 forward: the same greedy tokens and stop reasons as the CPU
//! engine on the HF fixtures, with and without an EOS that stops one prompt early. The CUDA twin of this test,
//! on the fused step, is in `cuda_step.rs`.

mod common;

use coil_infer::{
    generate, generate_on_device, DecodeDtClamp, GenerateParams, StateDtype, StopReason,
    WeightDtype,
};
use common::*;

#[test]
fn generation_on_the_model_device_matches_the_cpu_engine() {
    for name in ["mamba2_tiny", "mamba2_g1_chunk64"] {
        let fx = load_fixture(name);
        let prompts: Vec<Vec<u32>> = (0..2).map(|b| row_u32(&fx["input_ids"], b)).collect();
        let lm = load_model(name);
        let cpu = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let params = greedy(6, 8);
        let want = generate(&cpu, &prompts, &params, &mut |_, _| {}).unwrap();
        let mut seen = vec![];
        let got =
            generate_on_device(&lm, &prompts, &params, &mut |i, t| seen.push((i, t))).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.tokens, w.tokens, "{name}");
            assert_eq!(g.stop, StopReason::Length, "{name}");
        }
        assert_eq!(seen.len(), 12, "{name}: every kept token is reported once");
        // An EOS that the first prompt generates third: it stops there, the other runs to the length.
        let eos = want[0].tokens[2];
        let params = GenerateParams {
            eos: Some(eos),
            ..params
        };
        let want = generate(&cpu, &prompts, &params, &mut |_, _| {}).unwrap();
        let got = generate_on_device(&lm, &prompts, &params, &mut |_, _| {}).unwrap();
        assert_eq!(got[0].stop, StopReason::Eos, "{name}");
        assert_eq!(got[0].tokens.len(), 3, "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.tokens, w.tokens, "{name} with EOS {eos}");
            assert_eq!(g.stop, w.stop, "{name} with EOS {eos}");
        }
    }
}

#[test]
fn a_bf16_state_off_the_fused_cuda_step_is_refused_with_the_reason() {
    let name = "mamba2_tiny";
    let fx = load_fixture(name);
    let prompts: Vec<Vec<u32>> = (0..2).map(|b| row_u32(&fx["input_ids"], b)).collect();
    let params = GenerateParams {
        ssm_state: StateDtype::Bf16,
        ..greedy(3, 8)
    };
    let cpu = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
    let e = generate(&cpu, &prompts, &params, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("bf16 SSM state"), "{e}");
    let e = generate_on_device(&load_model(name), &prompts, &params, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("fused CUDA decode step only"), "{e}");
}

#[test]
fn prompts_of_different_lengths_decode_together_as_when_alone() {
    // One batch (a packed ragged prefill, then steps together) against the CPU engine, which runs every prompt
    // on its own: lengths 1, 5 and the fixture's full row, in mixed order.
    for name in ["mamba2_tiny", "mamba2_g1_chunk64", "mamba2_tied_limit"] {
        let fx = load_fixture(name);
        let full = row_u32(&fx["input_ids"], 0);
        let other = row_u32(&fx["input_ids"], 1);
        let prompts = vec![
            other[..5].to_vec(),
            full.clone(),
            vec![full[3]],
            other.clone(),
        ];
        let lm = load_model(name);
        let cpu = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let params = greedy(6, 8);
        let want = generate(&cpu, &prompts, &params, &mut |_, _| {}).unwrap();
        let got = generate_on_device(&lm, &prompts, &params, &mut |_, _| {}).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.tokens,
                w.tokens,
                "{name}: prompt {i} of length {}",
                prompts[i].len()
            );
        }
    }
}
