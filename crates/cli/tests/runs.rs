//! Runs that cannot lose or corrupt work: one process per run directory, `resume_path` for pretraining, a
//! diverged step never saved, resume refused when the trajectory settings changed, failed runs leave no debris.
//! Tiny runs (the demo model on mock data, a few steps of 2 x 32 tokens) keep this fast.

mod common;
use common::text;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `coil pretrain --recipe demo` on mock data into `<dir>/<name>`, with `extra` overrides last.
fn demo_cmd(dir: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coil"));
    c.args(["pretrain", "--recipe", "demo"])
        .arg(format!("run.dir={}", dir.display()))
        .arg(format!("run.name={name}"))
        .args([
            "data.kind=mock",
            "run.sample_tokens=0",
            "trainer.seq_length=32",
            "trainer.global_batch_size=2",
            "trainer.micro_batch_size=2",
            "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            "checkpoint.save_top_k=-1",
        ])
        .args(extra)
        .current_dir(dir);
    c
}

fn demo(dir: &Path, name: &str, extra: &[&str]) -> Output {
    demo_cmd(dir, name, extra)
        .output()
        .unwrap_or_else(|e| panic!("running coil: {e}"))
}

fn weights(ckpt: &Path) -> HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(ckpt.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()))
}

fn checkpoints(run: &Path) -> Vec<(u64, PathBuf)> {
    coil_train::checkpoint::list_checkpoints(run).unwrap_or_else(|e| panic!("{e}"))
}

/// The logged steps of a run, in file order.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
                ["step"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn a_second_run_on_a_locked_run_dir_is_refused_and_the_first_finishes_intact() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = tmp.path().join("shared");
    // long enough to still be running after the second attempt, even on a loaded machine
    let long = ["trainer.max_steps=60", "trainer.val_check_interval=10"];
    let mut first = demo_cmd(tmp.path(), "shared", &long)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Wait until the first run holds the lock (its pid is in the lock file).
    let lock = run.join("coil.lock");
    let want = format!("pid {}", first.id());
    let t0 = Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != want {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first run never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = demo(tmp.path(), "shared", &long);
    let still_running = first.try_wait().ok().flatten().is_none();
    let (_, err) = text(&second);
    assert!(!second.status.success(), "the second run trained: {err}");
    assert!(
        err.contains(&run.display().to_string()) && err.contains(&want),
        "{err}"
    );
    assert!(
        still_running,
        "the first run finished before the second was tried; make it longer"
    );
    let out = first.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the first run's result is whole: every step logged once, in order, and its final checkpoint loads
    assert_eq!(logged_steps(&run), (1..=60).collect::<Vec<_>>());
    let (last, dir) = checkpoints(&run)
        .pop()
        .unwrap_or_else(|| panic!("no checkpoint"));
    assert_eq!(last, 60);
    coil_train::checkpoint::load(&dir, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    // the lock went with the process: the same command now resumes (and finds the run finished)
    let again = demo(tmp.path(), "shared", &long);
    assert!(again.status.success(), "{}", text(&again).1);
}

#[test]
fn pretrain_starts_from_resume_path_and_refuses_a_missing_one() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = demo(tmp.path(), "source", &["trainer.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let source = tmp.path().join("source/checkpoints/step-2");
    // One step at learning rate 0 keeps the weights it starts from: they must be the source's.
    let from = format!("resume_path={}", source.display());
    let o = demo(
        tmp.path(),
        "continued",
        &[
            &from,
            "trainer.max_steps=1",
            "optim.max_lr=0",
            "optim.min_lr=0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let (a, b) = (
        weights(&source),
        weights(&tmp.path().join("continued/checkpoints/step-1")),
    );
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let diff = (t - &b[name])
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::NAN);
        assert_eq!(diff, 0.0, "{name}");
    }
    // a path that does not exist is an error naming it, for both commands and in a dry run
    for cmd in ["pretrain", "finetune"] {
        for dry in [false, true] {
            let mut args: Vec<String> = vec![cmd.into(), "--recipe".into(), "demo".into()];
            if dry {
                args.push("--dryrun".into());
            }
            let o = Command::new(env!("CARGO_BIN_EXE_coil"))
                .args(&args)
                .args([
                    format!("run.dir={}", tmp.path().display()),
                    "run.name=missing".into(),
                    "data.kind=mock".into(),
                    "resume_path=/no/such/ckpt".into(),
                ])
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let (_, err) = text(&o);
            assert!(!o.status.success(), "{cmd} dry={dry}: {err}");
            assert!(
                err.contains("/no/such/ckpt") && err.contains("resume_path"),
                "{err}"
            );
        }
    }
    assert!(!tmp.path().join("missing").exists());
}

#[test]
fn a_diverged_step_is_never_saved_and_reruns_name_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = tmp.path().join("nan");
    let o = demo(tmp.path(), "nan", &["trainer.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o).1);
    // an absurd learning rate from step 3 on (allowed explicitly: it is a change of the trajectory)
    let blow_up = [
        "trainer.max_steps=6",
        "optim.max_lr=1e6",
        "checkpoint.allow_changed=[optim.max_lr,trainer.max_steps]",
    ];
    for attempt in 0..2 {
        let o = demo(tmp.path(), "nan", &blow_up);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "attempt {attempt}: {err}");
        let list = checkpoints(&run);
        let (good, dir) = list
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("no checkpoint"));
        assert!(
            err.contains("diverged")
                && err.contains("last good checkpoint")
                && err.contains(&dir.display().to_string()),
            "attempt {attempt}: {err}"
        );
        assert!(err.contains(&format!("resuming from step {good}")), "{err}");
        // everything saved is finite and loads
        for (_, d) in &list {
            coil_train::checkpoint::load(d, &candle_core::Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(good < 6);
    }
    // a checkpoint holding a non-finite weight is refused on resume, naming the tensor
    let (_, newest) = checkpoints(&run)
        .pop()
        .unwrap_or_else(|| panic!("no checkpoint"));
    let mut w = weights(&newest);
    let name = "backbone.norm_f.weight";
    let n = w[name].dims1().unwrap_or(0);
    let nan = candle_core::Tensor::from_vec(vec![f32::NAN; n], n, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    w.insert(name.into(), nan);
    candle_core::safetensors::save(&w, newest.join("model.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = demo(tmp.path(), "nan", &blow_up);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains(name) && err.contains("non-finite"), "{err}");
}

#[test]
fn resuming_with_another_max_steps_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = tmp.path().join("grow");
    let o = demo(tmp.path(), "grow", &["trainer.max_steps=2"]);
    assert!(o.status.success(), "{}", text(&o).1);
    for dry in [false, true] {
        let mut extra = vec!["trainer.max_steps=4", "trainer.seed=7"];
        if dry {
            extra.push("--dryrun");
        }
        let o = demo(tmp.path(), "grow", &extra);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("trainer.max_steps: 2 (checkpoint) -> 4 (now)")
                && err.contains("trainer.seed: 1234 (checkpoint) -> 7 (now)")
                && err.contains("checkpoint.allow_changed=[trainer.max_steps,trainer.seed]"),
            "{err}"
        );
    }
    assert_eq!(checkpoints(&run).len(), 2);
    let o = demo(
        tmp.path(),
        "grow",
        &[
            "trainer.max_steps=4",
            "checkpoint.allow_changed=[trainer.max_steps]",
        ],
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("changed setting") && err.contains("trainer.max_steps 2 -> 4"),
        "{err}"
    );
    assert_eq!(checkpoints(&run).last().map(|c| c.0), Some(4));
    assert_eq!(logged_steps(&run), vec![1, 2, 3, 4]);
}

#[test]
fn a_run_that_fails_before_anything_of_value_leaves_no_run_dir() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // a fine-tune from weights of another shape fails once the run has started (after its recipe.toml)
    let other = common::fixture("nemotron_h_tiny");
    let o = Command::new(env!("CARGO_BIN_EXE_coil"))
        .args([
            "finetune",
            "--recipe",
            "demo",
            "data.kind=mock",
            "run.name=broken",
        ])
        .arg(format!("run.dir={}", tmp.path().display()))
        .arg(format!("resume_path={}", other.display()))
        .current_dir(tmp.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("shape differs"), "{err}");
    assert!(!tmp.path().join("broken").exists());
    // a run directory that already held something is left as it was
    let o = demo(tmp.path(), "kept", &["trainer.max_steps=1"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = demo(
        tmp.path(),
        "kept",
        &[
            "trainer.max_steps=1",
            "data.kind=pretrain",
            "data.paths=[/no/such/corpus]",
            "checkpoint.allow_changed=[data]",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(checkpoints(&tmp.path().join("kept")).len(), 1);
}

#[test]
fn token_ids_outside_the_vocabulary_name_the_data_file() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // GPT-2 ids (up to 50k) for the byte-level demo model (vocabulary 320)
    let prefix = tmp.path().join("gpt2_docs");
    let jsonl = tmp.path().join("docs.jsonl");
    let line = serde_json::json!({"text": "Wherefore art thou Romeo? Deny thy father and refuse thy name."});
    std::fs::write(&jsonl, format!("{line}\n").repeat(64)).unwrap_or_else(|e| panic!("{e}"));
    let o = Command::new(env!("CARGO_BIN_EXE_coil"))
        .args(["preprocess", "--input"])
        .arg(&jsonl)
        .arg("--output-prefix")
        .arg(&prefix)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{}", text(&o).1);
    let paths = format!("data.paths=[{}]", prefix.display());
    let o = demo(
        tmp.path(),
        "ids",
        &["data.kind=pretrain", &paths, "trainer.max_steps=1"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}.bin", prefix.display()))
            && err.contains("outside the model's vocabulary [0, 320)")
            && !err.contains("model config"),
        "{err}"
    );
}
