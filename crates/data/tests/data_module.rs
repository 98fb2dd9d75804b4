//! The recipe-facing entry point: a `[data]` config (here as JSON) becomes train/validation sources that
//! the loader batches, for every kind of data.

use coil_data::{build_data, load_tokenizer, DataConfig, DataCursor, Loader, RunShape};

fn shape() -> RunShape {
    RunShape {
        seq_length: 64,
        global_batch_size: 4,
        max_steps: 10,
        val_check_interval: 5,
        limit_val_batches: 2,
        limit_test_batches: 1,
    }
}

fn first_batch(cfg: &str) -> coil_data::Batch {
    let cfg: DataConfig = serde_json::from_str(cfg).unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let data = build_data(&cfg, tok.as_ref(), &shape()).unwrap();
    assert!(data.train.len() >= 40);
    let mut loader = Loader::new(data.train, 4, 0, 1, DataCursor::default()).unwrap();
    if let Some((pad, m, max)) = data.padding {
        loader = loader.with_padding(pad, m, max);
    }
    loader.next_batch().unwrap().unwrap()
}

#[test]
fn every_kind_builds_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let b = first_batch(r#"{"kind": "mock", "seed": 3}"#);
    assert_eq!(b.shape, [4, 64]);
    let shk = serde_json::json!({"kind": "shakespeare", "dir": dir.path()}).to_string();
    let b = first_batch(&shk);
    assert_eq!(b.shape, [4, 64]);
    assert!(b.tokens.iter().all(|&t| (0..50257).contains(&t)));
    // Built twice (second time from the cached corpus and indices): same batch.
    assert_eq!(first_batch(&shk), b);
    let squad = dir.path().join("train.jsonl");
    let lines: Vec<String> = (0..30)
        .map(|i| serde_json::json!({"input": format!("Context: x{i}. Question: y? Answer:"), "output": format!("z{i}")}).to_string())
        .collect();
    std::fs::write(&squad, lines.join("\n")).unwrap();
    let b = first_batch(&serde_json::json!({"kind": "squad", "train": squad}).to_string());
    assert_eq!(b.shape[1] % 16, 0);
    let b = first_batch(
        &serde_json::json!({"kind": "squad", "train": squad, "packed": true}).to_string(),
    );
    assert_eq!(b.shape, [4, 64]);
    assert!(b.seq_idx.is_some());
}

#[test]
fn unknown_fields_are_rejected() {
    let e = serde_json::from_str::<DataConfig>(r#"{"kind": "mock", "sed": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sed"), "{e}");
}
