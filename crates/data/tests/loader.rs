//! Loader determinism and resume: the same seed gives the same batches, a cursor saved mid-run and
//! restored (through JSON) continues with exactly the batches of an uninterrupted run; data-parallel ranks
//! split each global batch; mock data has a real seed.

use std::path::PathBuf;

use coil_data::{
    build_pretraining_datasets, pretrain_sample_counts, Batch, DataCursor, GptConfig, Loader,
    MockDataset, SampleSource, Split,
};

fn gpt_train(cache: &std::path::Path, seed: u32) -> coil_data::PretrainDataset {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let paths = vec![
        "30".into(),
        fx.join("gpt_a").to_string_lossy().into_owned(),
        "70".into(),
        fx.join("gpt_b").to_string_lossy().into_owned(),
    ];
    let mut cfg = GptConfig::new(16);
    cfg.seed = seed;
    cfg.cache_dir = Some(cache.to_path_buf());
    let [train, _, _] =
        build_pretraining_datasets(&paths, "900,50,50", [Some(80), Some(8), Some(8)], &cfg)
            .unwrap();
    train.unwrap()
}

fn drain<S: SampleSource>(l: &mut Loader<S>, n: usize) -> Vec<Batch> {
    (0..n).map(|_| l.next_batch().unwrap().unwrap()).collect()
}

#[test]
fn resume_from_cursor_sees_the_same_batches() {
    let cache = tempfile::tempdir().unwrap();
    let mut full = Loader::new(
        gpt_train(cache.path(), 1234),
        4,
        0,
        1,
        DataCursor::default(),
    )
    .unwrap();
    let all = drain(&mut full, 10);
    let mut first = Loader::new(
        gpt_train(cache.path(), 1234),
        4,
        0,
        1,
        DataCursor::default(),
    )
    .unwrap();
    let head = drain(&mut first, 4);
    let saved = serde_json::to_string(&first.cursor()).unwrap();
    drop(first);
    let cursor: DataCursor = serde_json::from_str(&saved).unwrap();
    assert_eq!(cursor.consumed_samples, 16);
    let mut resumed = Loader::new(gpt_train(cache.path(), 1234), 4, 0, 1, cursor).unwrap();
    let tail = drain(&mut resumed, 6);
    assert_eq!([head, tail].concat(), all);
    // A different seed gives different data; the end of the data is None, not a panic.
    let mut other =
        Loader::new(gpt_train(cache.path(), 99), 4, 0, 1, DataCursor::default()).unwrap();
    assert_ne!(drain(&mut other, 1)[0], all[0]);
    let mut l = Loader::new(
        gpt_train(cache.path(), 1234),
        4,
        0,
        1,
        DataCursor {
            consumed_samples: 80,
        },
    )
    .unwrap();
    assert!(l.next_batch().unwrap().is_none());
}

#[test]
fn data_parallel_ranks_split_each_global_batch() {
    let cache = tempfile::tempdir().unwrap();
    let mut single = Loader::new(
        gpt_train(cache.path(), 1234),
        4,
        0,
        1,
        DataCursor::default(),
    )
    .unwrap();
    let whole = single.next_batch().unwrap().unwrap();
    let mut r0 = Loader::new(
        gpt_train(cache.path(), 1234),
        2,
        0,
        2,
        DataCursor::default(),
    )
    .unwrap();
    let mut r1 = Loader::new(
        gpt_train(cache.path(), 1234),
        2,
        1,
        2,
        DataCursor::default(),
    )
    .unwrap();
    let (a, b) = (
        r0.next_batch().unwrap().unwrap(),
        r1.next_batch().unwrap().unwrap(),
    );
    assert_eq!([a.tokens, b.tokens].concat(), whole.tokens);
    assert_eq!(r0.cursor(), r1.cursor());
}

#[test]
fn blend_proportions_follow_weights() {
    let cache = tempfile::tempdir().unwrap();
    let coil_data::PretrainDataset::Blended(b) = gpt_train(cache.path(), 1234) else {
        panic!("expected a blend")
    };
    let n = b.dataset_index().len();
    let from_b = b.dataset_index().iter().filter(|&&d| d == 1).count();
    assert_eq!(n, 24 + 56); // ceil(80*0.3) + ceil(80*0.7)
    assert!((from_b as f64 / n as f64 - 0.7).abs() < 0.02);
    // Every prefix stays within one sample of its target share.
    let mut count = [0i64; 2];
    for (i, &d) in b.dataset_index().iter().enumerate() {
        count[d as usize] += 1;
        assert!((count[1] as f64 - 0.7 * (i + 1) as f64).abs() <= 1.0);
    }
}

#[test]
fn nemo_sample_counts() {
    // NeMo: train max_steps*gbs, val (max_steps//val_check_interval + 1)*limit_val_batches*gbs, test limit_test*gbs.
    assert_eq!(pretrain_sample_counts(100, 8, 100, 32, 50), [800, 512, 400]);
}

#[test]
fn mock_data_is_seeded_and_split_aware() {
    let a = MockDataset::new(1000, 32, 100, 7, Split::Train).unwrap();
    let b = MockDataset::new(1000, 32, 100, 8, Split::Train).unwrap();
    let v = MockDataset::new(1000, 32, 100, 7, Split::Valid).unwrap();
    let s = a.sample(3).unwrap();
    assert_eq!(s, a.sample(3).unwrap());
    assert_ne!(s, b.sample(3).unwrap());
    assert_ne!(s, v.sample(3).unwrap());
    assert_eq!(s.tokens.len(), 32);
    assert_eq!(&s.tokens[1..], &s.labels[..31]);
    assert!(s.loss_mask.iter().all(|&m| m == 1.0));
    assert!(s.tokens.iter().all(|&t| (0..1000).contains(&t)));
    let mut l = Loader::new(a, 8, 0, 1, DataCursor::default()).unwrap();
    assert_eq!(l.next_batch().unwrap().unwrap().shape, [8, 32]);
}
