//! `generate_on_device` (generation on the model's own device, the path `coil generate --device cuda` takes) on
//! the CPU, where its steps are the model's T = 1 forward: the same greedy tokens and stop reasons as the CPU
//! engine on the HF fixtures, with and without an EOS that stops one prompt early. The CUDA twin of this test,
//! on the fused step, is in `cuda_step.rs`.

mod common;

use coil_infer::{
    generate, generate_on_device, DecodeDtClamp, GenerateParams, SamplingParams, StopReason,
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
        let params = GenerateParams {
            max_new_tokens: 6,
            sampling: SamplingParams::greedy(),
            seed: 0,
            eos: None,
            vocab_limit: None,
            max_batch: 8,
        };
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
