//! The `coil generate` contract: `--input-ids` in, `tokens` (generated ids only) out, equal to HF's greedy
//! tokens; clear errors for what this build cannot do.

mod common;
use common::{coil, coil_model_io, fixture, text};

#[test]
fn input_ids_to_output_tokens_equal_hf_greedy() {
    greedy_tokens_equal_hf(&[]);
}

/// `coil generate --tp 2`: two ranks, each holding half of every layer's heads and of the vocabulary, give HF's
/// greedy tokens; rank 0 alone writes the output.
#[test]
fn tensor_parallel_generation_gives_hf_greedy_tokens() {
    greedy_tokens_equal_hf(&["--tp", "2", "--device", "cpu"]);
}

fn greedy_tokens_equal_hf(more: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.safetensors");
    for name in ["nemotron_h_tiny", "mamba2_tiny"] {
        let fx = fixture(name);
        let mut flags = vec![
            "--num-tokens-to-generate",
            "20",
            "--top-k",
            "1",
            "--top-p",
            "0",
            "--ignore-eos",
        ];
        flags.extend_from_slice(more);
        let ids = fx.join("fixture.safetensors");
        let o = coil_model_io("generate", &fx, "--input-ids", &ids, &out, &flags);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let cpu = candle_core::Device::Cpu;
        let got = candle_core::safetensors::load(&out, &cpu).unwrap();
        let want = candle_core::safetensors::load(fx.join("fixture.safetensors"), &cpu).unwrap();
        assert_eq!(got["tokens"].dtype(), candle_core::DType::I64);
        assert_eq!(
            got["tokens"].to_vec2::<i64>().unwrap(),
            want["gen_tokens"].to_vec2::<i64>().unwrap(),
            "{name}"
        );
        assert_eq!(got["lengths"].to_vec1::<i64>().unwrap(), vec![20, 20]);
    }
}

#[test]
fn unsupported_and_invalid_flags_fail_with_clear_messages() {
    let fx = fixture("mamba2_tiny");
    let ids = fx.join("fixture.safetensors");
    let base = [
        "generate",
        "--model",
        fx.to_str().unwrap(),
        "--input-ids",
        ids.to_str().unwrap(),
    ];
    let no_cuda = !candle_core::utils::cuda_is_available();
    let cases: [(&[&str], &str); 8] = [
        (&["--tp", "0"], "must be at least 1"),
        // Every rank fails on the split; the launcher names them.
        (
            &["--tp", "3", "--device", "cpu"],
            "must divide the Mamba2 mixer's 8 heads and 2 groups",
        ),
        (
            &["--ssm-state-dtype", "bf16"],
            "only the fused CUDA decode step stores a bf16 SSM state",
        ),
        (&["--fp8"], "not implemented yet"),
        (
            &["--device", if no_cuda { "cuda" } else { "tpu" }],
            if no_cuda {
                "--features cuda"
            } else {
                "unknown device"
            },
        ),
        (&["--top-k", "2", "--top-p", "0.5"], "cannot both be set"),
        (&["--prompts", "hi"], "not both"),
        (
            &["--temperature", "0", "--top-p", "0.9"],
            "temperature must be > 0",
        ),
    ];
    for (extra, msg) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let o = coil(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(err.contains(msg), "{extra:?}: {err}");
    }
    let o = coil(&[
        "generate",
        "--model",
        fx.to_str().unwrap(),
        "--prompts",
        "hello",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tokenizer"));
}

#[test]
fn non_finite_weights_or_logits_fail() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.safetensors");
    let name = "backbone.layers.0.mixer.in_proj.weight";
    let poisoned = common::edited_fixture("nemotron_h_tiny", name, |v| v[5] = f32::NAN);
    let huge = common::edited_fixture("nemotron_h_tiny", "lm_head.weight", |v| {
        v.iter_mut().for_each(|x| *x = f32::MAX / 2.0)
    });
    for (model, want) in [(&poisoned, name), (&huge, "NaN or inf")] {
        let ids = model.path().join("fixture.safetensors");
        let o = coil_model_io(
            "generate",
            model.path(),
            "--input-ids",
            &ids,
            &out,
            &["--num-tokens-to-generate", "3", "--top-k", "1"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn top_k_alone_turns_the_default_top_p_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.safetensors");
    let fx = fixture("mamba2_tiny");
    let ids = fx.join("fixture.safetensors");
    let flags = [
        "--num-tokens-to-generate",
        "20",
        "--top-k",
        "1",
        "--ignore-eos",
    ];
    let o = coil_model_io("generate", &fx, "--input-ids", &ids, &out, &flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cpu = candle_core::Device::Cpu;
    let got = candle_core::safetensors::load(&out, &cpu).unwrap();
    let want = candle_core::safetensors::load(&ids, &cpu).unwrap();
    assert_eq!(
        got["tokens"].to_vec2::<i64>().unwrap(),
        want["gen_tokens"].to_vec2::<i64>().unwrap()
    );
    // an explicit top-p with top-k is still Megatron's error
    let o = coil_model_io(
        "generate",
        &fx,
        "--input-ids",
        &ids,
        &out,
        &["--top-k", "1", "--top-p", "0.9"],
    );
    assert!(!o.status.success());
}

#[test]
fn prompt_ids_outside_the_model_read_cleanly() {
    // GPT-2 ids against a 256-token model: one clear sentence, no run of spaces
    let fx = fixture("nemotron_h_tiny");
    let o = coil(&[
        "generate",
        "--model",
        fx.to_str().unwrap(),
        "--tokenizer",
        "gpt2",
        "--prompts",
        "Wherefore art thou",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("outside the model's vocabulary [0, 256)"),
        "{err}"
    );
    assert!(!err.contains("  "), "{err:?}");
}

#[test]
fn text_prompt_on_a_freshly_trained_demo_checkpoint() {
    // The README's path: train the demo (here 2 steps), then prompt its checkpoint with text.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = format!("run.dir={}", dir.path().display());
    let o = coil(&[
        "pretrain",
        "--recipe",
        "demo",
        &run_dir,
        "trainer.max_steps=2",
        "trainer.seq_length=32",
        "trainer.global_batch_size=2",
        "trainer.micro_batch_size=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "run.sample_tokens=0",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let ckpt = dir.path().join("demo/checkpoints/step-2");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(ckpt.join(f).is_file(), "the checkpoint lacks {f}");
    }
    let model = ckpt.to_string_lossy().into_owned();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--prompts",
            "ROMEO:",
            "--num-tokens-to-generate",
            "12",
            "--top-k",
            "1",
            "--top-p",
            "0",
            "--ignore-eos",
        ];
        args.extend_from_slice(extra);
        coil(&args)
    };
    let o = generate(&[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("ROMEO:"), "{out}");
    assert!(err.contains("generated 12 tokens"), "{err}");
    // `--tokenizer bytes` names the built-in tokenizer (not a path) and encodes the same way.
    let o2 = generate(&["--tokenizer", "bytes"]);
    let (out2, err2) = text(&o2);
    assert!(o2.status.success(), "{out2}{err2}");
    assert_eq!(out2, out);
}
