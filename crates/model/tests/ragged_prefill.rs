//! Ragged prefill: prompts of different lengths prefilled as one packed row give every prompt the last-position
//! logits and the decode state (conv window, SSM state) that `forward_with_state` of that prompt alone gives, and
//! a decode step from that state continues each prompt as it would alone.

mod common;

use candle_core::{DType, Device, Tensor};
use coil_model::presets::preset;
use coil_model::{HybridLm, LayerState, ModelState};
use common::*;

/// Lengths around the conv width (4) and the chunk sizes (16, 32, 64), in mixed order.
const LENGTHS: [usize; 8] = [37, 1, 130, 4, 65, 3, 64, 5];

/// Deterministic pseudo-random token ids below `vocab`.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn prompts(lengths: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    (lengths.iter().enumerate())
        .map(|(i, &n)| tokens(n, vocab, i as u64 + 1))
        .collect()
}

fn row(ids: &[u32], dev: &Device) -> Tensor {
    Tensor::new(ids, dev).unwrap().unsqueeze(0).unwrap()
}

/// `max |got − want| / max |want|` (scale floored at 1e-3).
fn rel(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "dtypes differ");
    coil_testutil::rel_err(got, want)
}

/// Worst relative gaps of one model, ragged vs each prompt alone.
#[derive(Debug, Default)]
struct Gaps {
    logits: f32,
    conv: f32,
    ssm: f32,
    step_logits: f32,
    step_state: f32,
}

/// The worst gaps of `got` (batch row `i`) against `want` (batch of one), layer by layer.
fn state_gaps(got: &ModelState, i: usize, want: &ModelState) -> (f32, f32) {
    assert_eq!(got.layers.len(), want.layers.len());
    let (mut conv, mut ssm) = (0f32, 0f32);
    for (g, w) in got.layers.iter().zip(&want.layers) {
        match (g, w) {
            (LayerState::Mamba(g), LayerState::Mamba(w)) => {
                conv = conv.max(rel(&g.conv.narrow(0, i, 1).unwrap(), &w.conv));
                ssm = ssm.max(rel(&g.ssm.narrow(0, i, 1).unwrap(), &w.ssm));
            }
            (LayerState::Stateless, LayerState::Stateless) => {}
            (g, w) => panic!("layer states differ in kind: {g:?} vs {w:?}"),
        }
    }
    (conv, ssm)
}

fn compare(model: &HybridLm, lengths: &[usize]) -> Gaps {
    let vocab = model.config.vocab_size;
    let ps = prompts(lengths, vocab);
    let (logits, state) = model.prefill_ragged(&ps).unwrap();
    assert_eq!(logits.dims(), [ps.len(), vocab]);
    assert_eq!(logits.dtype(), DType::F32);

    // One decode step for all prompts from the ragged state.
    let next: Vec<u32> = (0..ps.len())
        .map(|i| (7 * i as u32 + 3) % vocab as u32)
        .collect();
    let next_ids = Tensor::new(next.as_slice(), model.device())
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let (step, step_state) = model
        .forward_with_state(&next_ids, Some(&state), None, true)
        .unwrap();

    let mut gaps = Gaps::default();
    for (i, p) in ps.iter().enumerate() {
        let (alone, alone_state) = model
            .forward_with_state(&row(p, model.device()), None, None, true)
            .unwrap();
        let alone = alone.squeeze(1).unwrap();
        gaps.logits = gaps
            .logits
            .max(rel(&logits.narrow(0, i, 1).unwrap(), &alone));
        let (conv, ssm) = state_gaps(&state, i, &alone_state);
        gaps.conv = gaps.conv.max(conv);
        gaps.ssm = gaps.ssm.max(ssm);

        let (alone_step, alone_step_state) = model
            .forward_with_state(
                &row(&next[i..=i], model.device()),
                Some(&alone_state),
                None,
                true,
            )
            .unwrap();
        gaps.step_logits = gaps
            .step_logits
            .max(rel(&step.narrow(0, i, 1).unwrap(), &alone_step));
        let (conv, ssm) = state_gaps(&step_state, i, &alone_step_state);
        gaps.step_state = gaps.step_state.max(conv.max(ssm));
    }
    gaps
}

fn assert_close(name: &str, g: &Gaps) {
    eprintln!("{name}: ragged vs alone (worst relative): {g:?}");
    for (what, v) in [
        ("last logits", g.logits),
        ("conv state", g.conv),
        ("ssm state", g.ssm),
        ("decode-step logits", g.step_logits),
        ("decode-step state", g.step_state),
    ] {
        assert!(v <= 1e-5, "{name}: {what} differ by {v:.3e} (relative)");
    }
}

#[test]
fn ragged_prefill_equals_each_prompt_alone_on_hf_fixtures() {
    // mamba2_tied_limit clamps dt to [0.01, 0.5]: a dt processed differently from the prefill shows there.
    for name in ["mamba2_tiny", "mamba2_g1_chunk64", "mamba2_tied_limit"] {
        assert_close(name, &compare(&load_model(name), &LENGTHS));
    }
}

/// The same on a CUDA GPU in f32 (the conv, SSD and state ops with `seq_idx` on the device). Run by hand there:
/// `cargo test --release --features cuda -p coil-model --test ragged_prefill -- --ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn ragged_prefill_equals_each_prompt_alone_on_cuda() {
    let gpu = Device::new_cuda(0).expect("a CUDA GPU");
    for name in ["mamba2_tiny", "mamba2_g1_chunk64", "mamba2_tied_limit"] {
        let model = load_model_on(name, &gpu, DType::F32);
        assert_close(&format!("{name} on cuda"), &compare(&model, &LENGTHS));
    }
}

#[test]
fn ragged_prefill_equals_each_prompt_alone_on_a_random_model_with_mlp_layers() {
    let mut cfg = preset("nemotronh_8b").unwrap().config;
    cfg.hidden_size = 128;
    cfg.vocab_size = 512;
    cfg.pattern = "M-M-".into();
    cfg.mamba.num_heads = 4;
    cfg.mamba.n_groups = 2;
    cfg.mamba.state_size = 16;
    cfg.mamba.chunk_size = 32;
    // dt initialises in [1e-3, 0.1]: a lower clamp bites (Nemotron-H clamps from below only).
    cfg.mamba.dt_clamp_min = 0.01;
    cfg.mlp.intermediate_size = 256;
    let model = HybridLm::init(&cfg, 11, &Device::Cpu, DType::F32).unwrap();
    assert_close("random M-M-", &compare(&model, &LENGTHS));
    // Long prompts: the per-segment state's decay sums do not drift with length.
    assert_close("random M-M-, long", &compare(&model, &[1500, 2, 700]));
}

#[test]
fn ragged_prefill_of_one_prompt_is_forward_with_state() {
    let model = load_model("mamba2_tiny");
    let p = tokens(37, 256, 5);
    let (logits, state) = model.prefill_ragged(std::slice::from_ref(&p)).unwrap();
    let (want, want_state) = model
        .forward_with_state(&row(&p, &Device::Cpu), None, None, true)
        .unwrap();
    assert!(rel(&logits, &want.squeeze(1).unwrap()) <= 1e-5);
    let (conv, ssm) = state_gaps(&state, 0, &want_state);
    assert!(
        conv <= 1e-5 && ssm <= 1e-5,
        "conv {conv:.2e}, ssm {ssm:.2e}"
    );
}

#[test]
fn models_with_attention_are_refused_naming_the_reason() {
    let model = load_model("nemotron_h_tiny");
    let err = model
        .prefill_ragged(&[vec![1, 2, 3], vec![4]])
        .unwrap_err()
        .to_string();
    for part in [
        "ragged prefill",
        "attention",
        "KV-cache lengths",
        "forward_with_state",
    ] {
        assert!(err.contains(part), "{err}");
    }
}

#[test]
fn empty_inputs_and_bad_ids_are_clear_errors() {
    let model = load_model("mamba2_tiny");
    let err = model.prefill_ragged(&[]).unwrap_err().to_string();
    assert!(err.contains("at least one prompt"), "{err}");
    let err = model
        .prefill_ragged(&[vec![1, 2], vec![3], vec![]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 2") && err.contains("empty"), "{err}");
    // An id outside the vocabulary: the message forward_with_state gives for the same prompts as a batch.
    let ps = [vec![1, 2, 3], vec![4, 5, 256]];
    let err = model.prefill_ragged(&ps).unwrap_err().to_string();
    let batch = Tensor::new(&[[1u32, 2, 3], [4, 5, 256]], &Device::Cpu).unwrap();
    let want = model
        .forward_with_state(&batch, None, None, true)
        .unwrap_err()
        .to_string();
    assert_eq!(err, want);
    assert!(err.contains("[1, 2]"), "{err}");
}
