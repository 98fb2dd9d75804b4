//! Packed SFT batches (coil-data's `PackedSftDataset`, rows with `seq_idx`) in training: the masked loss of a
//! packed micro-batch and its gradients equal the sums over its examples run alone, and a short fine-tuning run
//! on packed rows trains.

use candle_core::{DType, Device, Tensor};
use coil_data::{Batch, PackedSftDataset, SampleSource, SftConfig, SftDataset, SftExample};
use coil_model::HybridLm;
use coil_testutil::{rel_l2, Lcg};
use coil_train::trainer::masked_loss;
use coil_train::{train, AdamWConfig, LrSchedule, Precision, Start, TrainRun, TrainerConfig};
use std::path::PathBuf;

const ROW: usize = 32;

/// The Nemotron-H fixture of coil-model (`M*M-`: Mamba, attention and MLP layers).
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/nemotron_h_tiny")
}

/// `n` SFT examples (prompt ++ answer ++ EOS 2) of 4 to 19 ids from a small alphabet, seeded.
fn examples(n: usize, seed: u64) -> SftDataset {
    let mut rng = Lcg(seed);
    let mut next = |m: u64| rng.below(m);
    let examples = (0..n)
        .map(|_| {
            let len = 4 + next(16) as usize;
            let mut ids: Vec<i64> = (0..len - 1).map(|_| 3 + next(12) as i64).collect();
            ids.push(2);
            let answer_start = 1 + next(len as u64 - 2) as usize;
            SftExample { ids, answer_start }
        })
        .collect();
    SftDataset {
        examples,
        config: SftConfig::new(ROW),
        eos: 2,
    }
}

#[test]
fn packed_micro_batch_loss_and_gradients_equal_the_sum_over_its_examples() {
    let data = examples(12, 1);
    let alone: Vec<SftExample> = data.examples.clone();
    let packed = PackedSftDataset::new(data, ROW).unwrap();
    assert!(packed.len() >= 2, "the examples fill several rows");
    let rows: Vec<usize> = (0..2).collect();
    let batch = Batch::stack(
        &rows
            .iter()
            .map(|&r| packed.sample(r).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(batch.seq_idx.is_some());

    let dev = Device::Cpu;
    let (model, vars) = HybridLm::from_dir(&fixture_dir(), &dev, DType::F32)
        .unwrap()
        .trainable()
        .unwrap();

    let (sum_packed, count_packed) = masked_loss(&model, &batch, &dev).unwrap();
    let mut sum_alone = Tensor::zeros((), DType::F32, &dev).unwrap();
    let mut count_alone = 0f64;
    for &r in &rows {
        for &e in &packed.rows()[r] {
            let one = Batch::stack(&[alone[e].to_sample(true)]).unwrap();
            let (s, c) = masked_loss(&model, &one, &dev).unwrap();
            sum_alone = (sum_alone + s).unwrap();
            count_alone += c;
        }
    }
    let (lp, la) = (
        sum_packed.to_scalar::<f32>().unwrap(),
        sum_alone.to_scalar::<f32>().unwrap(),
    );
    eprintln!("packed loss sum {lp} vs examples alone {la} ({count_packed} tokens)");
    assert!(lp.is_finite());
    assert_eq!(count_packed, count_alone);
    assert!((lp - la).abs() <= 1e-5 * la.abs(), "loss {lp} vs {la}");

    let (gp, ga) = (
        sum_packed.backward().unwrap(),
        sum_alone.backward().unwrap(),
    );
    let mut worst = (0f32, String::new());
    for (n, v) in &vars {
        let (p, a) = (
            gp.get(v.as_tensor()).unwrap(),
            ga.get(v.as_tensor()).unwrap(),
        );
        let e = rel_l2(p, a) as f32;
        if e > worst.0 {
            worst = (e, n.clone());
        }
    }
    eprintln!(
        "packed vs alone gradients: worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= 1e-5,
        "gradient of {} differs by {}",
        worst.1,
        worst.0
    );
}

#[test]
fn fine_tuning_on_packed_rows_trains() {
    let packed = PackedSftDataset::new(examples(120, 2), ROW).unwrap();
    let steps = (packed.len() / 2) as u64;
    assert!(steps >= 15, "enough rows for the run: {}", packed.len());
    let dir = tempfile::tempdir().unwrap();
    let run = TrainRun {
        run_dir: dir.path().join("packed"),
        model: coil_model::hf_config::read_config(&fixture_dir()).unwrap(),
        trainer: TrainerConfig {
            max_steps: steps,
            micro_batch_size: 1,
            global_batch_size: 2,
            val_check_interval: 0,
            limit_val_batches: 0,
            log_every_n_steps: 0,
            save_top_k: -1,
            save_last: false,
            precision: Precision::F32,
            seed: 7,
        },
        optim: AdamWConfig::default(),
        schedule: LrSchedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            constant_steps: 0,
            max_steps: steps,
        },
        start: Start::Pretrained(fixture_dir()),
        recipe_toml: "# packed SFT test\n".into(),
        tokenizer_files: Vec::new(),
        device: Device::Cpu,
        progress: false,
        padding: None,
    };
    let summary = train(&run, packed, None::<PackedSftDataset>).unwrap();
    let losses: Vec<f64> = summary.losses.iter().map(|l| l.1).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let tail = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "packed fine-tuning: loss {} -> {tail} over {steps} steps",
        losses[0]
    );
    assert!(tail < losses[0] - 0.5, "the loss should fall: {losses:?}");
}
