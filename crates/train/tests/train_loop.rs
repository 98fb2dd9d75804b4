//! The loop end to end on a tiny model: the loss falls on real text, resume == uninterrupted, checkpoints
//! survive interrupted writes, metrics are written.

use candle_core::Device;
use coil_data::{Sample, SampleSource};
use coil_model::config::{
    AttentionConfig, Family, MambaConfig, MlpActivation, MlpConfig, SpecialTokens,
};
use coil_model::ModelConfig;
use coil_testutil::max_abs_diff;
use coil_train::{
    checkpoint, dist, dist::Collective, train, AdamWConfig, LrSchedule, Precision, Start, TrainRun,
    TrainerConfig,
};

/// Byte-level windows of the embedded Shakespeare text: sample i starts at i·stride.
struct Bytes {
    data: Vec<u8>,
    seq: usize,
    stride: usize,
    offset: usize,
    n: usize,
}

impl SampleSource for Bytes {
    fn len(&self) -> usize {
        self.n
    }
    fn sample(&self, idx: usize) -> coil_data::Result<Sample> {
        let start = self.offset + (idx * self.stride) % (self.data.len() - self.seq - 1);
        let w: Vec<i64> = self.data[start..start + self.seq + 1]
            .iter()
            .map(|&b| b as i64)
            .collect();
        Ok(Sample::from_window(&w))
    }
}

fn corpus(seq: usize, offset: usize, n: usize) -> Bytes {
    let text: String = coil_data::corpus::SHAKESPEARE[0]
        .1
        .chars()
        .take(200_000)
        .collect();
    Bytes {
        data: text.into_bytes(),
        seq,
        stride: 61,
        offset,
        n,
    }
}

pub fn tiny_config(pattern: &str) -> ModelConfig {
    ModelConfig {
        family: Family::NemotronH,
        vocab_size: 256,
        hidden_size: 64,
        pattern: pattern.into(),
        norm_eps: 1e-5,
        tie_word_embeddings: false,
        residual_in_fp32: false,
        init_std: 0.02,
        mamba: MambaConfig::megatron(8, 16, 2, 16, 16),
        attention: AttentionConfig {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
        },
        mlp: MlpConfig {
            intermediate_size: 128,
            activation: MlpActivation::Relu2,
            bias: false,
        },
        tokens: SpecialTokens::default(),
    }
}

fn run(dir: &std::path::Path, pattern: &str, max_steps: u64, val_every: u64, lr: f64) -> TrainRun {
    TrainRun {
        run_dir: dir.to_path_buf(),
        model: tiny_config(pattern),
        trainer: TrainerConfig {
            max_steps,
            micro_batch_size: 4,
            global_batch_size: 8,
            val_check_interval: val_every,
            limit_val_batches: 2,
            log_every_n_steps: 5,
            save_top_k: -1,
            save_last: true,
            precision: Precision::F32,
            seed: 1234,
        },
        optim: AdamWConfig::default(),
        schedule: LrSchedule {
            max_lr: lr,
            min_lr: lr / 10.0,
            warmup_steps: 5,
            constant_steps: 0,
            max_steps,
        },
        start: Start::Random,
        recipe_toml: "# test\n".into(),
        tokenizer_files: Vec::new(),
        device: Device::Cpu,
        progress: false,
        padding: None,
    }
}

#[test]
fn loss_falls_on_real_text() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), "M*M-", 150, 50, 3e-3);
    let s = train(&r, corpus(64, 0, 150 * 8), Some(corpus(64, 150_000, 64))).unwrap();
    let first = s.losses[0].1;
    let last: f64 = s.losses[s.losses.len() - 10..]
        .iter()
        .map(|l| l.1)
        .sum::<f64>()
        / 10.0;
    assert!(first > 5.0, "starts near ln 256: {first}");
    assert!(
        last < 3.2,
        "byte-level loss should fall well below 3.2 after 150 steps: {first} -> {last}"
    );
    assert_eq!(s.val_losses.len(), 3);
    // metrics.jsonl: one object per logged step with the documented keys
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let objs: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 30);
    for k in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(objs[0].get(k).is_some(), "{k}");
    }
    assert!(objs.iter().filter(|o| o.get("val_loss").is_some()).count() == 3);
    assert!(std::fs::read_dir(dir.path().join("tb")).unwrap().count() == 1);
    let png = std::fs::read(dir.path().join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // the last checkpoint is an HF-layout model coil can load
    let ck = s.last_checkpoint.unwrap();
    let m = coil_model::HybridLm::from_dir(&ck, &Device::Cpu, candle_core::DType::F32).unwrap();
    assert_eq!(m.config, tiny_config("M*M-"));
}

#[test]
fn resume_gives_the_identical_loss_sequence() {
    let full_dir = tempfile::tempdir().unwrap();
    let full = train(
        &run(full_dir.path(), "*-", 8, 3, 1e-3),
        corpus(32, 0, 64),
        None::<Bytes>,
    )
    .unwrap();
    assert_eq!(full.losses.len(), 8);
    // A run that stopped after step 3: its only checkpoint is step 3's.
    let resumed_dir = tempfile::tempdir().unwrap();
    let src = full_dir.path().join("checkpoints/step-3");
    let dst = resumed_dir.path().join("checkpoints/step-3");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    // An interrupted write of step 6 left a temporary directory behind: it must be ignored and removed.
    let stale = resumed_dir.path().join("checkpoints/step-6.tmp-999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"half written").unwrap();
    let resumed = train(
        &run(resumed_dir.path(), "*-", 8, 3, 1e-3),
        corpus(32, 0, 64),
        None::<Bytes>,
    )
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    assert!(!stale.exists());
    assert_eq!(
        resumed.losses,
        full.losses[3..].to_vec(),
        "steps 4..8 after resume equal the uninterrupted run"
    );
}

/// Data parallelism: ranks that each take their slice of every global batch and sum gradients train the same
/// model as one process taking the whole batch (up to the order of the gradient sums), and every rank ends
/// with the same weights; rank 0 alone writes the run.
#[test]
fn data_parallel_ranks_train_what_one_process_trains() {
    let steps = 6;
    let one_dir = tempfile::tempdir().unwrap();
    let mut one_run = run(one_dir.path(), "M*M-", steps, 3, 2e-3);
    one_run.trainer.micro_batch_size = 2; // 4 micro-batches per step of 8
    let one = train(&one_run, corpus(32, 0, 200), Some(corpus(32, 150_000, 8))).unwrap();
    let one_ck = checkpoint::list_checkpoints(one_dir.path()).unwrap();
    let weights = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let want = weights(&one_ck.last().unwrap().1);

    // The distributed optimizer (the default) at 2 and 4 ranks; the replicated one at 2.
    for (world, distributed) in [(2, true), (4, true), (2, false)] {
        let dp_dir = tempfile::tempdir().unwrap();
        let mut dp_run = run(dp_dir.path(), "M*M-", steps, 3, 2e-3);
        dp_run.trainer.micro_batch_size = 2;
        dp_run.optim.distributed = distributed;
        let summary = train_split(&dp_run, 1, world, false);
        for ((step, a), (_, b)) in summary.losses.iter().zip(&one.losses) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "world {world} step {step}: {a} vs {b}"
            );
        }
        assert_eq!(summary.val_losses.len(), 2, "rank 0 validates");
        let dp_ck = checkpoint::list_checkpoints(dp_dir.path()).unwrap();
        assert_eq!(dp_ck.len(), one_ck.len());
        let got = weights(&dp_ck.last().unwrap().1);
        for (name, w) in &want {
            let d = max_abs_diff(w, &got[name]);
            assert!(d < 1e-5, "world {world}: {name} differs by {d}");
        }
    }
}

#[test]
fn retention_keeps_best_and_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "*-", 6, 1, 1e-3);
    r.trainer.save_top_k = 2;
    train(&r, corpus(32, 0, 64), Some(corpus(32, 150_000, 16))).unwrap();
    let kept: Vec<u64> = checkpoint::list_checkpoints(dir.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(kept.len() <= 3 && kept.contains(&6), "{kept:?}");
}

#[test]
fn data_running_out_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = train(
        &run(dir.path(), "*-", 10, 5, 1e-3),
        corpus(32, 0, 20),
        None::<Bytes>,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ran out at step 3"), "{e}");
}

#[test]
fn bf16_mixed_tracks_f32() {
    let (d32, d16) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s32 = train(
        &run(d32.path(), "M*-", 6, 100, 3e-3),
        corpus(32, 0, 48),
        None::<Bytes>,
    )
    .unwrap();
    let mut r16 = run(d16.path(), "M*-", 6, 100, 3e-3);
    r16.trainer.precision = Precision::Bf16Mixed;
    let s16 = train(&r16, corpus(32, 0, 48), None::<Bytes>).unwrap();
    for ((step, a), (_, b)) in s32.losses.iter().zip(&s16.losses) {
        assert!(
            (a - b).abs() < 0.05 * a,
            "step {step}: f32 {a} vs bf16-mixed {b}"
        );
    }
    assert_ne!(
        s32.losses, s16.losses,
        "bf16 compute must actually differ from f32"
    );
    // masters stay f32: the checkpoint holds f32 weights
    let ck = checkpoint::load(&s16.last_checkpoint.unwrap(), &Device::Cpu).unwrap();
    assert!(ck
        .weights
        .values()
        .all(|t| t.dtype() == candle_core::DType::F32));
}

#[test]
fn non_finite_loss_stops_the_run_naming_the_step() {
    // Pretrained weights whose LM head is finite but huge: the logits overflow and the first loss is not finite.
    let src = tempfile::tempdir().unwrap();
    let s = train(
        &run(src.path(), "M-", 1, 100, 1e-3),
        corpus(32, 0, 8),
        None::<Bytes>,
    )
    .unwrap();
    let ck = s.last_checkpoint.unwrap();
    let mut w = candle_core::safetensors::load(ck.join("model.safetensors"), &Device::Cpu).unwrap();
    let head = w["lm_head.weight"].clone();
    let huge = (head.zeros_like().unwrap() + f64::from(f32::MAX / 2.0)).unwrap();
    w.insert("lm_head.weight".into(), huge);
    candle_core::safetensors::save(&w, ck.join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = run(dir.path(), "M-", 3, 100, 1e-3);
    r.start = Start::Pretrained(ck.clone());
    let e = train(&r, corpus(32, 0, 24), None::<Bytes>)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step 1")
            && e.contains("training loss")
            && e.contains("no checkpoint was saved"),
        "{e}"
    );
    assert!(checkpoint::list_checkpoints(dir.path()).unwrap().is_empty());
    // A NaN weight is refused before training, naming the tensor.
    let nan = (head.zeros_like().unwrap() + f64::NAN).unwrap();
    w.insert("lm_head.weight".into(), nan);
    candle_core::safetensors::save(&w, ck.join("model.safetensors")).unwrap();
    let e = train(&r, corpus(32, 0, 24), None::<Bytes>)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("non-finite"),
        "{e}"
    );
}

/// The same run on the GPU tracks the CPU run step by step (f32: to rounding; bf16-mixed: loosely), and its
/// checkpoint loads on the CPU. Run by hand on a GPU machine:
/// `cargo test --release --features cuda -p coil-train --test train_loop -- --ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_run_tracks_the_cpu_run() {
    let gpu = Device::new_cuda(0).expect("a CUDA GPU");
    for (precision, tol) in [(Precision::F32, 1e-3), (Precision::Bf16Mixed, 0.05)] {
        let (dc, dg) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut rc = run(dc.path(), "M*M-", 20, 100, 3e-3);
        rc.trainer.precision = precision;
        let sc = train(&rc, corpus(64, 0, 20 * 8), None::<Bytes>).unwrap();
        let mut rg = run(dg.path(), "M*M-", 20, 100, 3e-3);
        rg.trainer.precision = precision;
        rg.device = gpu.clone();
        let sg = train(&rg, corpus(64, 0, 20 * 8), None::<Bytes>).unwrap();
        assert_eq!(sc.losses.len(), sg.losses.len());
        for ((step, a), (_, b)) in sc.losses.iter().zip(&sg.losses) {
            eprintln!("{precision:?} step {step}: cpu {a:.5} cuda {b:.5}");
            assert!(
                (a - b).abs() <= tol * a,
                "{precision:?} step {step}: cpu {a} vs cuda {b}"
            );
        }
        let last = sg.losses.last().unwrap().1;
        assert!(
            last < sg.losses[0].1 * 0.8,
            "{precision:?}: loss did not fall on cuda"
        );
        let ck = checkpoint::load(&sg.last_checkpoint.unwrap(), &Device::Cpu).unwrap();
        assert!(ck
            .weights
            .values()
            .all(|t| t.dtype() == candle_core::DType::F32));
    }
}

/// Trains `r` on `tp` tensor-parallel ranks × `dp` data-parallel ranks (threads over loopback TCP, TP innermost)
/// and returns world rank 0's summary after checking every rank logged the same losses.
fn train_split(r: &TrainRun, tp: usize, dp: usize, sp: bool) -> coil_train::TrainSummary {
    use coil_model::parallel::TensorParallel;
    let groups = dist::loopback_layout(tp * dp, tp).unwrap();
    let summaries: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|(tp_comm, mut dp_comm)| {
                s.spawn(move || {
                    let val = (dp_comm.rank() == 0).then(|| corpus(32, 150_000, 8));
                    let tp = TensorParallel::new(Box::new(tp_comm), sp);
                    coil_train::train_parallel(r, corpus(32, 0, 200), val, &mut dp_comm, Some(tp))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, s) in summaries.iter().enumerate() {
        assert_eq!(
            s.losses, summaries[0].losses,
            "rank {rank} logs rank 0's losses"
        );
        assert_eq!(
            s.last_checkpoint.is_some(),
            rank == 0,
            "rank {rank} saves iff rank 0"
        );
    }
    summaries.into_iter().next().unwrap()
}

fn assert_close_losses(got: &[(u64, f64)], want: &[(u64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for ((step, a), (s2, b)) in got.iter().zip(want) {
        assert_eq!(step, s2);
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "{what} step {step}: {a} vs {b}"
        );
    }
}

/// A hybrid TP 4 divides: 8 heads in 4 groups, 4 attention heads over 4 KV heads.
fn tp_run(dir: &std::path::Path, steps: u64) -> TrainRun {
    let mut r = run(dir, "M*M-", steps, 10, 2e-3);
    r.trainer.micro_batch_size = 2; // 4 micro-batches per step of 8 in one process, 2 per rank at DP 2
    r.model.mamba.n_groups = 4;
    r.model.attention.num_kv_heads = 4;
    r.model.mamba.proj_bias = true;
    r.model.mlp.bias = true;
    r.model.vocab_size = 258; // not a multiple of the TP size: the slices are padded
    r
}

#[test]
fn tensor_parallel_ranks_train_what_one_process_trains() {
    let steps = 20;
    let one_dir = tempfile::tempdir().unwrap();
    let one_run = tp_run(one_dir.path(), steps);
    let one = train(&one_run, corpus(32, 0, 200), Some(corpus(32, 150_000, 8))).unwrap();
    let weights = |dir: &std::path::Path| {
        let ck = checkpoint::list_checkpoints(dir).unwrap();
        candle_core::safetensors::load(ck.last().unwrap().1.join("model.safetensors"), &Device::Cpu)
            .unwrap()
    };
    let want = weights(one_dir.path());
    for (tp, dp, sp) in [
        (2, 1, false),
        (4, 1, false),
        (2, 1, true),
        (4, 1, true),
        (2, 2, false),
    ] {
        let what = format!("tp {tp} dp {dp} sp {sp}");
        let dir = tempfile::tempdir().unwrap();
        let r = tp_run(dir.path(), steps);
        let got = train_split(&r, tp, dp, sp);
        assert_close_losses(&got.losses, &one.losses, &what);
        assert_close_losses(
            &got.val_losses,
            &one.val_losses,
            &format!("{what} validation"),
        );
        // The checkpoint holds the full model, as one process saves it.
        let w = weights(dir.path());
        assert_eq!(w.len(), want.len());
        for (name, t) in &want {
            let d = max_abs_diff(t, &w[name]);
            assert!(d < 1e-4, "{what}: {name} differs by {d}");
        }
    }
}

#[test]
fn checkpoints_resume_at_another_tensor_parallel_size() {
    let steps = 8;
    let full_dir = tempfile::tempdir().unwrap();
    let full = train(
        &tp_run(full_dir.path(), steps),
        corpus(32, 0, 200),
        None::<Bytes>,
    )
    .unwrap();
    // Saved at TP 2, resumed in one process; saved in one process, resumed at TP 2; saved at TP 2 x DP 2 with
    // the optimizer state split over DP, resumed in one process.
    for (first, second) in [((2, 1), (1, 1)), ((1, 1), (2, 1)), ((2, 2), (1, 1))] {
        let dir = tempfile::tempdir().unwrap();
        // The schedule is the full run's; the first leg stops halfway.
        let mut r = tp_run(dir.path(), steps);
        r.trainer.max_steps = steps / 2;
        r.trainer.val_check_interval = 0;
        let go = |r: &TrainRun, (tp, dp): (usize, usize)| match tp * dp {
            1 => train(r, corpus(32, 0, 200), None::<Bytes>).unwrap(),
            _ => train_split(r, tp, dp, false),
        };
        let a = go(&r, first);
        r.trainer.max_steps = steps;
        let b = go(&r, second);
        assert_eq!(b.resumed_from, Some(steps / 2));
        let joined: Vec<(u64, f64)> = a.losses.iter().chain(&b.losses).cloned().collect();
        assert_close_losses(
            &joined,
            &full.losses,
            &format!("(tp, dp) {first:?} then {second:?}"),
        );
    }
}

#[test]
fn bf16_mixed_tensor_parallel_tracks_one_process() {
    let steps = 6;
    let one_dir = tempfile::tempdir().unwrap();
    let mut one_run = tp_run(one_dir.path(), steps);
    one_run.trainer.precision = Precision::Bf16Mixed;
    let one = train(&one_run, corpus(32, 0, 200), None::<Bytes>).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = tp_run(dir.path(), steps);
    r.trainer.precision = Precision::Bf16Mixed;
    let got = train_split(&r, 2, 1, true);
    // bf16 partial sums are rounded before the sum over ranks, so the split run is close, not equal.
    for ((step, a), (_, b)) in got.losses.iter().zip(&one.losses) {
        assert!((a - b).abs() < 1e-2 * b, "step {step}: {a} vs {b}");
    }
    let ck = checkpoint::load(&got.last_checkpoint.unwrap(), &Device::Cpu).unwrap();
    assert!(ck
        .weights
        .values()
        .all(|t| t.dtype() == candle_core::DType::F32));
}

#[test]
fn a_checkpoint_padded_for_another_tp_size_names_the_vocabulary_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tp_run(dir.path(), 2);
    r.trainer.val_check_interval = 0;
    train(&r, corpus(32, 0, 200), None::<Bytes>).unwrap();
    r.trainer.max_steps = 3;
    r.model.vocab_size = 320; // as if the recipe padded for another TP size
    let e = train(&r, corpus(32, 0, 200), None::<Bytes>)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("only the vocabulary differs (258 rows there, 320 here")
            && e.contains("set model.vocab_size=258"),
        "{e}"
    );
}
