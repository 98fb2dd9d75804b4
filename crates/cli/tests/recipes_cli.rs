//! Contract tests of `coil recipes`, `coil recipe show`, `coil pretrain` / `coil finetune` and the executors.

mod common;
use common::{coil, text};
use std::path::Path;

#[test]
fn recipes_json_contract() {
    let o = coil(&["recipes", "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON: {e}"));
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(list.len(), 12);
    for entry in list {
        assert!(entry["name"].is_string(), "{entry}");
        assert!(
            entry["num_parameters"].as_u64().is_some_and(|n| n > 0),
            "{entry}"
        );
        let m = &entry["model"];
        for k in ["hidden_size", "num_layers", "vocab_size"] {
            assert!(m[k].as_u64().is_some_and(|n| n > 0), "{k} in {entry}");
        }
        let pattern = m["pattern"].as_str().unwrap_or_default();
        assert_eq!(pattern.len() as u64, m["num_layers"].as_u64().unwrap_or(0));
    }
    let nh56 = list
        .iter()
        .find(|e| e["name"] == "nemotronh_56b")
        .unwrap_or_else(|| panic!("no nemotronh_56b"));
    assert_eq!(nh56["model"]["num_layers"], 118);
    assert_eq!(nh56["model"]["hidden_size"], 8192);
    assert_eq!(nh56["model"]["vocab_size"], 131072);
    let names: Vec<&str> = list.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&"demo") && names.contains(&"mamba2_130m"));
}

#[test]
fn the_56b_recipe_fits_an_80_gb_gpu_split_as_nemo_splits_it() {
    let o = coil(&["recipe", "show", "nemotronh_56b"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("TP 8 x PP 1 x CP 1") && out.contains("sequence parallel"),
        "{out}"
    );
    assert!(out.contains("TP groups {0..7}, {8..15}"), "{out}");
    let total = out
        .lines()
        .find(|l| l.starts_with("# memory per GPU"))
        .and_then(|l| l.rsplit_once("total "))
        .and_then(|(_, t)| t.strip_suffix(" GiB"))
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no total in {out}"));
    // 80 GB = 74.5 GiB, the distributed optimizer splitting the f32 state over 32 data-parallel ranks.
    assert!(total < 74.5, "{total} GiB per GPU:\n{out}");
    assert!(
        out.contains("split over the 32 data-parallel ranks"),
        "{out}"
    );
}

#[test]
fn recipe_show_prints_a_recipe_file_with_derived_figures() {
    let o = coil(&[
        "recipe",
        "show",
        "nemotronh_8b",
        "--finetune",
        "trainer.max_steps=7",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("max_steps = 7") && out.contains("mode = \"finetune\""),
        "{out}"
    );
    assert!(
        out.contains("max_lr = 5e-6") || out.contains("max_lr = 0.000005"),
        "{out}"
    );
    assert!(
        out.contains("# parameters: ") && out.contains("# memory per GPU"),
        "{out}"
    );
    let back: Result<coil_recipes::Recipe, _> = coil_recipes::from_toml(&out, Path::new("show"));
    assert!(back.is_ok(), "{back:?}");

    let o = coil(&["recipe", "show", "demo", "trainer.max_stepz=1"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("trainer.max_steps"), "{err}");
    let o = coil(&["recipe", "show", "nope"]);
    assert!(text(&o).1.contains("mamba2_130m"));
}

#[test]
fn dryrun_to_toml_and_config() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("run.toml");
    let f = file.to_string_lossy().into_owned();
    let o = coil(&[
        "pretrain",
        "--recipe",
        "mamba2_130m",
        "--dryrun",
        "trainer.max_steps=3",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("max_steps = 3") && out.contains("# executor: direct"),
        "{out}"
    );
    let o = coil(&[
        "pretrain",
        "--recipe",
        "demo",
        "--to-toml",
        &f,
        "model.num_layers=4",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = coil(&["pretrain", "--config", &f, "--dryrun"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("pattern = \"M-M*\""), "{out}");
}

#[test]
fn direct_refuses_a_world_size_it_cannot_honour() {
    let o = coil(&["pretrain", "--recipe", "mamba2_130m", "trainer.max_steps=1"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("8 ranks") && err.contains("--executor local"),
        "{err}"
    );
}

/// The losses of a run's metrics.jsonl, by step.
fn logged_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run_dir.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
            (
                v["step"].as_u64().unwrap_or(0),
                v["loss"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// `coil pretrain --recipe demo` with `extra` then `common` arguments, run `name` under `dir`; asserts success and
/// returns (stdout, stderr).
fn pretrain_demo(dir: &Path, name: &str, extra: &[&str], common: &[&str]) -> (String, String) {
    let mut args = vec!["pretrain", "--recipe", "demo"];
    args.extend_from_slice(extra);
    args.extend_from_slice(common);
    let dir_arg = format!("run.dir={}", dir.display());
    let name_arg = format!("run.name={name}");
    args.push(&dir_arg);
    args.push(&name_arg);
    let o = coil(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{name}: {out}{err}");
    (out, err)
}

#[test]
fn local_executor_ranks_train_data_parallel_like_one_process() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let short = [
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.global_batch_size=6",
        "trainer.micro_batch_size=1",
        "trainer.seq_length=64",
        "run.sample_tokens=0",
    ];
    let run = |name: &str, extra: &[&str]| pretrain_demo(dir.path(), name, extra, &short);
    let (out, err) = run(
        "dp3",
        &[
            "--executor",
            "local",
            "parallel.num_gpus_per_node=3",
            "executor.master_port=0",
        ],
    );
    // every rank met the others on one id
    let ids: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let (prefix, rest) = l.split_once("] rendezvous done: ")?;
            Some((prefix.to_string(), rest.rsplit_once("id ")?.1.to_string()))
        })
        .collect();
    assert_eq!(ids.len(), 3, "{out}\n{err}");
    assert!(
        ids.iter().all(|(_, id)| id == &ids[0].1 && id.len() == 256),
        "{ids:?}"
    );
    for rank in 0..3 {
        assert!(
            ids.iter().any(|(p, _)| p == &format!("[rank {rank}")),
            "{ids:?}"
        );
    }
    assert!(err.contains("over 3 data-parallel ranks"), "{err}");
    assert!(err.contains("rank 2 done: step 3"), "{err}");
    // the same recipe in one process: the same losses (up to the order of the gradient sums)
    run("one", &[]);
    let dp = logged_losses(&dir.path().join("dp3"));
    let one = logged_losses(&dir.path().join("one"));
    assert_eq!(dp.len(), 3);
    assert_eq!(dp.len(), one.len());
    for ((step, a), (_, b)) in dp.iter().zip(&one) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "step {step}: {a} vs {b}");
    }
    assert!(dir
        .path()
        .join("dp3/checkpoints/step-3/model.safetensors")
        .is_file());
}

#[test]
fn local_executor_refuses_pipeline_splits() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = coil(&[
        "pretrain",
        "--recipe",
        "demo",
        "--executor",
        "local",
        "parallel.num_gpus_per_node=2",
        "parallel.pipeline_parallelism=2",
        "executor.master_port=0",
        &format!("run.dir={}", dir.path().display()),
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(
        err.contains("pipeline_parallelism 2") && err.contains("not implemented yet"),
        "{err}"
    );
}

#[test]
fn local_executor_ranks_train_tensor_parallel_like_one_process() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let common = [
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.global_batch_size=4",
        "trainer.micro_batch_size=1",
        "trainer.seq_length=64",
        "run.sample_tokens=0",
        // TP 4 splits the Mamba2 groups and the KV heads: the demo has one group and two KV heads.
        "model.mamba.n_groups=4",
        "model.attention.num_kv_heads=4",
        // NeMo pads the vocabulary to a multiple of 64 x TP (384 at TP 2, 512 at TP 4, 320 at TP 1): one model
        // for all.
        "model.vocab_size=512",
    ];
    let run = |name: &str, extra: &[&str]| pretrain_demo(dir.path(), name, extra, &common);
    let (out, err) = run(
        "tp2dp2",
        &[
            "--executor",
            "local",
            "parallel.num_gpus_per_node=4",
            "parallel.tensor_parallelism=2",
            "parallel.sequence_parallelism=true",
            "executor.master_port=0",
        ],
    );
    // Megatron's order: ranks 0 and 1 form a TP group, ranks 0 and 2 a DP group.
    assert!(
        out.contains(
            "rank 1: tensor-parallel rank 1 of 2 (ranks [0, 1]), data-parallel rank 0 of 2"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "rank 2: tensor-parallel rank 0 of 2 (ranks [2, 3]), data-parallel rank 1 of 2"
        ),
        "{out}"
    );
    assert!(
        err.contains("over 2 data-parallel x 2 tensor-parallel ranks (sequence parallel)"),
        "{err}"
    );
    // And 4 processes as one TP group, without sequence parallelism.
    let (_, err) = run(
        "tp4",
        &[
            "--executor",
            "local",
            "parallel.num_gpus_per_node=4",
            "parallel.tensor_parallelism=4",
            "executor.master_port=0",
        ],
    );
    assert!(
        err.contains("over 1 data-parallel x 4 tensor-parallel ranks,"),
        "{err}"
    );
    run("one", &[]);
    let one = logged_losses(&dir.path().join("one"));
    for name in ["tp2dp2", "tp4"] {
        let split = logged_losses(&dir.path().join(name));
        assert_eq!(split.len(), 3);
        assert_eq!(split.len(), one.len());
        for ((step, a), (_, b)) in split.iter().zip(&one) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "{name} step {step}: {a} vs {b}"
            );
        }
    }
    // The checkpoint is the whole model: it loads as one.
    let ck = dir.path().join("tp2dp2/checkpoints/step-3");
    let w = candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let one_w = candle_core::safetensors::load(
        dir.path().join("one/checkpoints/step-3/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.len(), one_w.len());
    for (name, t) in &one_w {
        assert_eq!(w[name].dims(), t.dims(), "{name}");
    }
}

#[test]
fn slurm_writes_a_complete_script() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run_dir = format!("run.dir={}", dir.path().display());
    let o = coil(&[
        "pretrain",
        "--recipe",
        "nemotronh_8b",
        "--executor",
        "slurm",
        &run_dir,
        "executor.partition=batch",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("coil.sbatch"), "{out}");
    let script =
        std::fs::read_to_string(dir.path().join("default/coil.sbatch")).unwrap_or_default();
    for want in [
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --partition=batch",
        "WORLD_SIZE=64",
        "MASTER_ADDR=",
        "MASTER_PORT=29500",
        "RANK=$SLURM_PROCID",
        "LOCAL_RANK=$SLURM_LOCALID",
        "srun ",
        "worker --plan",
    ] {
        assert!(script.contains(want), "missing {want:?} in\n{script}");
    }
    assert!(dir.path().join("default/plan.toml").is_file());
}

#[test]
fn tiny_pretrain_then_finetune() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run_dir = format!("run.dir={}", dir.path().display());
    let small = [
        "data.kind=mock",
        "trainer.max_steps=2",
        "trainer.seq_length=32",
        "trainer.global_batch_size=2",
        "trainer.micro_batch_size=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "run.sample_tokens=4",
    ];
    let mut args = vec!["pretrain", "--recipe", "demo", &run_dir];
    args.extend(small);
    let o = coil(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("checkpoint: "), "{err}");
    assert!(out.contains("--- sample"), "{out}");
    let ckpt = dir.path().join("demo/checkpoints/step-2");
    assert!(ckpt.join("model.safetensors").is_file());
    let recipe = std::fs::read_to_string(dir.path().join("demo/recipe.toml")).unwrap_or_default();
    assert!(recipe.contains("max_steps = 2"), "{recipe}");

    let resume = format!("resume_path={}", ckpt.display());
    let mut args = vec![
        "finetune",
        "--recipe",
        "demo",
        &run_dir,
        &resume,
        "run.name=ft",
    ];
    args.extend(small);
    let o = coil(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(dir.path().join("ft/checkpoints/step-2").is_dir());

    let o = coil(&[
        "finetune",
        "--recipe",
        "demo",
        &run_dir,
        "run.name=ft2",
        "data.kind=mock",
    ]);
    assert!(text(&o).1.contains("resume_path"), "{:?}", text(&o));
}

#[test]
fn dryrun_refuses_bad_values_naming_the_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run_dir = format!("run.dir={}", dir.path().display());
    let cases: [(&str, &[&str]); 12] = [
        ("optim.max_lr=-1", &["optim.max_lr", "-1"]),
        ("optim.max_lr=nan", &["optim.max_lr", "finite"]),
        ("optim.min_lr=inf", &["optim.min_lr", "finite"]),
        ("optim.adam_beta1=1", &["optim.adam_beta1", "[0, 1)"]),
        ("optim.adam_beta2=-0.5", &["optim.adam_beta2", "[0, 1)"]),
        ("optim.adam_eps=0", &["optim.adam_eps"]),
        ("optim.weight_decay=-0.1", &["optim.weight_decay"]),
        ("model.hidden_size=0", &["model.hidden_size", "at least 1"]),
        ("data.split=abc", &["data.split", "abc"]),
        ("run.device=tpu", &["run.device", "tpu"]),
        ("trainer.seq_length=0", &["trainer.seq_length"]),
        (
            "checkpoint.allow_changed=[run.name]",
            &["checkpoint.allow_changed", "run.name"],
        ),
    ];
    for (arg, wants) in cases {
        let o = coil(&["pretrain", "--recipe", "demo", "--dryrun", &run_dir, arg]);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{arg}: {out}");
        for want in wants {
            assert!(err.contains(want), "{arg}: {err}");
        }
        assert!(!err.contains("invalid type"), "{arg}: {err}");
    }
    // a recipe file holding a non-finite value is refused the same way
    let file = dir.path().join("nan.toml");
    let o = coil(&["recipe", "show", "demo"]);
    let toml = text(&o).0.replace("max_lr = 0.005", "max_lr = nan");
    assert!(toml.contains("max_lr = nan"), "{toml}");
    std::fs::write(&file, toml).unwrap_or_else(|e| panic!("{e}"));
    let o = coil(&["pretrain", "--config", &file.to_string_lossy(), "--dryrun"]);
    assert!(text(&o).1.contains("optim.max_lr"), "{:?}", text(&o));
    // nothing was created by the refused runs
    assert_eq!(
        std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0),
        1
    );
}

#[test]
fn naming_the_current_data_kind_keeps_its_settings() {
    let o = coil(&["recipe", "show", "demo", "data.kind=shakespeare"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("split = \"980,20,0\""), "{out}");
}
