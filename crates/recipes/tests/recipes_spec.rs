//! Every built-in recipe's resolved numbers against docs/nemo.md §2 and §4.

use coil_model::presets::{
    HYBRID_8B_PATTERN, NEMOTRON_H_47B_PATTERN, NEMOTRON_H_56B_PATTERN, NEMOTRON_H_8B_PATTERN,
};
use coil_recipes::recipe::{ExecutorKind, PrecisionName};
use coil_recipes::{apply_overrides, from_toml, recipe, recipe_names, to_toml, Mode, Recipe};
use std::path::Path;

fn get(name: &str, mode: Mode) -> Recipe {
    recipe(name, mode).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (name, layers, hidden, pattern, nodes, gpus, TP, SP, gbs, seq, max_steps, val_check, log_every, vocab)
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const TABLE: [(&str, usize, usize, Option<&str>, usize, usize, usize, bool, usize, usize, u64, u64, u64, usize); 11] = [
    ("mamba2_130m", 24, 768, None, 1, 8, 1, false, 8, 4096, 100, 100, 10, 50288),
    ("mamba2_370m", 48, 1024, None, 1, 8, 1, false, 8, 4096, 100, 100, 10, 50288),
    ("mamba2_780m", 48, 1536, None, 1, 8, 1, false, 8, 4096, 100, 100, 10, 50288),
    ("mamba2_1_3b", 48, 2048, None, 1, 1, 1, false, 8, 4096, 100, 100, 10, 50288),
    ("mamba2_2_7b", 64, 2560, None, 1, 8, 1, false, 8, 4096, 100, 100, 10, 50288),
    ("mamba2_8b", 56, 4096, None, 1, 8, 8, false, 8, 4096, 100, 100, 10, 256000),
    ("mamba2_hybrid_8b", 56, 4096, Some(HYBRID_8B_PATTERN), 1, 8, 8, false, 8, 4096, 100, 100, 10, 256000),
    ("nemotronh_4b", 52, 3072, Some(NEMOTRON_H_8B_PATTERN), 8, 8, 1, false, 768, 8192, 10, 10, 10, 131072),
    ("nemotronh_8b", 52, 4096, Some(NEMOTRON_H_8B_PATTERN), 8, 8, 2, true, 768, 8192, 10, 10, 10, 131072),
    ("nemotronh_47b", 98, 8192, Some(NEMOTRON_H_47B_PATTERN), 32, 8, 8, true, 768, 8192, 10, 10, 1, 131072),
    ("nemotronh_56b", 118, 8192, Some(NEMOTRON_H_56B_PATTERN), 32, 8, 8, true, 768, 8192, 10, 10, 1, 131072),
];

#[test]
fn pretrain_defaults_match_nemo() {
    for (name, layers, hidden, pattern, nodes, gpus, tp, sp, gbs, seq, steps, val, log, vocab) in
        TABLE
    {
        let r = get(name, Mode::Pretrain);
        assert_eq!(r.model.num_layers(), layers, "{name}");
        assert_eq!(r.model.hidden_size, hidden, "{name}");
        let want = pattern.map_or_else(|| "M".repeat(layers), str::to_string);
        assert_eq!(r.model.pattern, want, "{name}");
        let p = &r.parallel;
        assert_eq!(
            (
                p.num_nodes,
                p.num_gpus_per_node,
                p.tensor_parallelism,
                p.sequence_parallelism
            ),
            (nodes, gpus, tp, sp),
            "{name}"
        );
        assert_eq!(
            (p.pipeline_parallelism, p.context_parallelism),
            (1, 1),
            "{name}"
        );
        let t = &r.trainer;
        assert_eq!(
            (
                t.global_batch_size,
                t.micro_batch_size,
                t.seq_length,
                t.max_steps,
                t.val_check_interval
            ),
            (gbs, 1, seq, steps, val),
            "{name}"
        );
        assert_eq!(
            (
                t.log_every_n_steps,
                t.limit_val_batches,
                t.limit_test_batches
            ),
            (log, 32, 50),
            "{name}"
        );
        assert_eq!(r.model.vocab_size, vocab, "{name}");
        let o = &r.optim;
        assert_eq!(
            (o.max_lr, o.min_lr, o.warmup_steps, o.constant_steps),
            (3e-4, 3e-5, 2000, 0),
            "{name}"
        );
        assert_eq!(
            (
                o.adam_beta1,
                o.adam_beta2,
                o.adam_eps,
                o.weight_decay,
                o.clip_grad
            ),
            (0.9, 0.95, 1e-5, 0.1, 1.0)
        );
        assert!(
            matches!(r.data, coil_data::DataConfig::Mock { seed: 1234 }),
            "{name}: mock data with a real seed"
        );
        assert_eq!(r.executor.kind, ExecutorKind::Direct);
        assert_eq!(r.run.name, "default");
        let nemotron = name.starts_with("nemotronh");
        assert_eq!(
            r.checkpoint.save_top_k,
            if nemotron { 5 } else { 10 },
            "{name}"
        );
        assert!(r.checkpoint.save_last);
        let fp8 = matches!(name, "nemotronh_47b" | "nemotronh_56b");
        let want = if fp8 {
            PrecisionName::Bf16Fp8CurrentScaling
        } else {
            PrecisionName::Bf16Mixed
        };
        assert_eq!(t.precision, want, "{name}");
        r.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn finetune_defaults_match_nemo() {
    for name in coil_model::presets::PRESET_NAMES {
        let r = get(name, Mode::Finetune);
        let o = &r.optim;
        assert_eq!(
            (o.max_lr, o.min_lr, o.warmup_steps),
            (5e-6, 0.0, 50),
            "{name}"
        );
        let tp = match name {
            "mamba2_8b" | "mamba2_hybrid_8b" | "nemotronh_8b" | "nemotronh_47b"
            | "nemotronh_56b" => 8,
            _ => 1,
        };
        assert_eq!(
            r.parallel.tensor_parallelism, tp,
            "{name}: finetune TP override"
        );
        if let Some(size) = name.strip_prefix("nemotronh_") {
            let want = format!("nemotronh-{size}-pretrain");
            assert_eq!(r.checkpoint.resume_path.as_deref(), Some(Path::new(&want)));
            assert!(
                matches!(r.data, coil_data::DataConfig::Mock { .. }),
                "{name}: NeMo's NH finetune uses mock data"
            );
        } else {
            assert_eq!(r.checkpoint.resume_path, None);
            assert!(
                matches!(r.data, coil_data::DataConfig::Squad { .. }),
                "{name}"
            );
        }
        assert_eq!(r.run.name, "default_finetune");
        r.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn nemotron_tokenizer_names_and_the_56b_fix() {
    for (name, want) in [
        ("nemotronh_4b", "nvidia/Nemotron-H-4B-Base-8K"),
        ("nemotronh_8b", "nvidia/Nemotron-H-8B-Base-8K"),
        ("nemotronh_47b", "nvidia/Nemotron-H-47B-Base-8K"),
        // NeMo's recipe names the 8B tokenizer here; Coil names the model's own.
        ("nemotronh_56b", "nvidia/Nemotron-H-56B-Base-8K"),
    ] {
        assert_eq!(get(name, Mode::Pretrain).tokenizer.name, want);
    }
    assert_eq!(
        get("mamba2_130m", Mode::Pretrain).tokenizer.name,
        "EleutherAI/gpt-neox-20b"
    );
    assert_eq!(
        get("mamba2_130m", Mode::Pretrain).tokenizer.vocab_size,
        50277
    );
}

#[test]
fn parameter_counts() {
    // Untied embeddings, NeMo's padded vocabularies (the counts the model crate's parameter table gives).
    let count = |n: &str| coil_recipes::memory::num_parameters(&get(n, Mode::Pretrain));
    assert_eq!(count("mamba2_130m"), 167_610_816);
    let nh8 = count("nemotronh_8b");
    assert!((8.0e9..8.2e9).contains(&(nh8 as f64)), "{nh8}");
    let nh56 = count("nemotronh_56b");
    assert!((56.0e9..56.6e9).contains(&(nh56 as f64)), "{nh56}");
    let demo = count("demo");
    assert!(demo < 20_000_000, "demo has {demo} parameters");
}

#[test]
fn demo_is_a_small_three_kind_hybrid_on_shakespeare() {
    let r = get("demo", Mode::Pretrain);
    for c in ['M', '*', '-'] {
        assert!(
            r.model.pattern.contains(c),
            "demo pattern {} lacks {c}",
            r.model.pattern
        );
    }
    assert!(matches!(r.data, coil_data::DataConfig::Shakespeare { .. }));
    assert_eq!(r.tokenizer.path.as_deref(), Some("bytes"));
    let tok = r.load_tokenizer().unwrap_or_else(|e| panic!("{e}"));
    let ids = tok.encode("ROMEO: ó").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.decode(&ids).unwrap_or_default(), "ROMEO: ó");
    assert_eq!(tok.eos_id(), Some(256));
    assert_eq!(r.model.vocab_size, 320);
    assert_eq!(r.parallel.world_size(), 1);
    assert_eq!(r.trainer.precision, PrecisionName::F32);
    r.validate().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_recipe_round_trips_through_toml() {
    for name in recipe_names() {
        for mode in [Mode::Pretrain, Mode::Finetune] {
            let r = get(name, mode);
            let text = to_toml(&r).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = from_toml(&text, Path::new("x.toml"))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(back, r, "{name}");
        }
    }
}

#[test]
fn schedule_anneals_over_the_real_run() {
    let r = apply_overrides(
        &get("demo", Mode::Pretrain),
        &["trainer.max_steps=1000".into()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let run = r.train_run(String::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        run.schedule.max_steps, 1000,
        "NeMo's scheduler keeps 10; Coil uses trainer.max_steps"
    );
}

#[test]
fn memory_estimate_applies_tp() {
    let one = apply_overrides(
        &get("nemotronh_8b", Mode::Pretrain),
        &["parallel.tensor_parallelism=1".into()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let two = get("nemotronh_8b", Mode::Pretrain);
    let (m1, m2) = (
        coil_recipes::memory::estimate(&one),
        coil_recipes::memory::estimate(&two),
    );
    assert!(m2.weights * 2 <= m1.weights + 16 && m2.weights * 2 + 16 >= m1.weights);
    assert!(m2.activations < m1.activations);
    // bf16 weights: 2 bytes per parameter of the shard.
    assert_eq!(m1.weights, 2 * coil_recipes::memory::num_parameters(&one));
}
