//! SQuAD-format SFT: template, EOS, prompt-only truncation, answer-only loss, NeMo's pad-to-16 collate,
//! and packing that reproduces every example exactly inside its `seq_idx` segment.

use coil_data::sft::{build_example, plan_packing};
use coil_data::{
    load_tokenizer, DataCursor, Loader, PackedSftDataset, SampleSource, SftConfig, SftDataset,
    Tokenizer,
};

fn squad_file(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let mut body = String::new();
    for i in 0..n {
        let ctx = "word ".repeat(3 + (i * 7) % 40);
        body.push_str(
            &serde_json::json!({
                "input": format!("Context: {ctx} Question: what is {i}? Answer:"),
                "output": format!("it is {}", "the answer ".repeat(1 + i % 3)),
            })
            .to_string(),
        );
        body.push('\n');
    }
    let p = dir.join("train.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn example_layout_truncation_and_loss_mask() {
    let tok = load_tokenizer("gpt2").unwrap();
    let cfg = SftConfig::new(64);
    let ex = build_example(
        "Context: sky. Question: colour? Answer:",
        "blue",
        tok.as_ref(),
        &cfg,
    )
    .unwrap();
    let prompt: Vec<i64> = tok
        .encode("Context: sky. Question: colour? Answer:")
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let answer: Vec<i64> = tok
        .encode(" blue")
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ex.answer_start, prompt.len());
    assert_eq!(
        ex.ids,
        [prompt.clone(), answer.clone(), vec![50256]].concat()
    );
    let s = ex.to_sample(true);
    // Loss exactly on the positions whose label is an answer token or EOS.
    let counted: Vec<i64> = s
        .labels
        .iter()
        .zip(&s.loss_mask)
        .filter(|(_, &m)| m == 1.0)
        .map(|(&l, _)| l)
        .collect();
    assert_eq!(counted, [answer.clone(), vec![50256]].concat());
    // Only the prompt is truncated.
    let long = "Context: ".to_string() + &"many words ".repeat(100);
    let short_cfg = SftConfig::new(16);
    let ex = build_example(&long, "blue", tok.as_ref(), &short_cfg).unwrap();
    assert_eq!(ex.ids.len(), 16);
    assert_eq!(
        &ex.ids[ex.answer_start..],
        [answer, vec![50256]].concat().as_slice()
    );
}

#[test]
fn collate_pads_to_multiple_of_16_with_eos() {
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let ds = SftDataset::from_jsonl(
        &squad_file(dir.path(), 6),
        tok.as_ref(),
        SftConfig::new(2048),
    )
    .unwrap();
    let b = ds.collate(&[0, 1, 2]).unwrap();
    let longest = (0..3).map(|i| ds.examples[i].ids.len() - 1).max().unwrap();
    assert_eq!(b.shape, [3, longest.div_ceil(16) * 16]);
    let t = b.shape[1];
    let n0 = ds.examples[0].ids.len() - 1;
    assert!(b.tokens[n0..t].iter().all(|&x| x == 50256));
    assert!(b.loss_mask[n0..t].iter().all(|&m| m == 0.0));
    // A padding loader gives the same batches.
    let mut loader = Loader::new(ds, 3, 0, 1, DataCursor::default())
        .unwrap()
        .with_padding(50256, 16, 2048);
    assert_eq!(loader.next_batch().unwrap().unwrap(), b);
}

#[test]
fn malformed_squad_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"input\": \"a\", \"output\": \"b\"}\n{\"input\": \"a\"}\n",
    )
    .unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let err = SftDataset::from_jsonl(&p, tok.as_ref(), SftConfig::new(64))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("output"),
        "{err}"
    );
}

#[test]
fn packed_rows_reproduce_each_example_in_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let ds = SftDataset::from_jsonl(
        &squad_file(dir.path(), 40),
        tok.as_ref(),
        SftConfig::new(128),
    )
    .unwrap();
    let singles: Vec<_> = (0..ds.len()).map(|i| ds.sample(i).unwrap()).collect();
    let packed = PackedSftDataset::new(ds, 128).unwrap();
    assert!(packed.len() < 40, "packing should merge examples");
    let mut seen = [false; 40];
    for r in 0..packed.len() {
        let row = packed.sample(r).unwrap();
        assert_eq!(row.len(), 128);
        let seq_idx = row.seq_idx.clone().unwrap();
        assert!(seq_idx.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        for (slot, &e) in packed.rows()[r].iter().enumerate() {
            let pos: Vec<usize> = (0..128).filter(|&p| seq_idx[p] == slot as i32).collect();
            let (a, b) = (pos[0], pos[pos.len() - 1] + 1);
            assert_eq!(&row.tokens[a..b], singles[e].tokens.as_slice());
            assert_eq!(&row.labels[a..b], singles[e].labels.as_slice());
            assert_eq!(&row.loss_mask[a..b], singles[e].loss_mask.as_slice());
            assert_eq!(&row.position_ids[a..b], singles[e].position_ids.as_slice());
            seen[e] = true;
        }
        let used: usize = packed.rows()[r].iter().map(|&e| singles[e].len()).sum();
        assert!(row.loss_mask[used..].iter().all(|&m| m == 0.0));
    }
    assert!(seen.iter().all(|&s| s));
    assert!(plan_packing(packed.examples(), 4).is_err());
    let _ = Tokenizer::vocab_size(tok.as_ref());
}

#[test]
fn answer_space_follows_nemo_space_sensitivity() {
    let fx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (spec, sensitive) in [
        ("gpt2".to_string(), true),
        (
            fx.join("tiny_spm_bpe.model").to_string_lossy().into_owned(),
            false,
        ),
        (
            fx.join("tiny_tiktoken_vocab.json")
                .to_string_lossy()
                .into_owned(),
            false,
        ),
    ] {
        let tok = load_tokenizer(&spec).unwrap();
        assert_eq!(tok.space_sensitive(), sensitive, "{spec}");
        let ex = build_example(
            " Q: why? Answer: ",
            "  blue ",
            tok.as_ref(),
            &SftConfig::new(256),
        )
        .unwrap();
        let enc =
            |t: &str| -> Vec<i64> { tok.encode(t).unwrap().into_iter().map(i64::from).collect() };
        let answer = if sensitive { enc(" blue") } else { enc("blue") };
        let eos = tok.eos_id().unwrap() as i64;
        assert_eq!(
            ex.ids,
            [enc("Q: why? Answer:"), answer, vec![eos]].concat(),
            "{spec}"
        );
    }
}

#[test]
fn nemo_sft_sample_order() {
    use coil_data::sample_mapping::{nemo_sft_train_samples, OnlineSampleMapping, Remapped};
    let fx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nemo_sample_mapping.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    for c in cases.as_array().unwrap() {
        let g = |k: &str| c[k].as_u64().unwrap() as usize;
        let m = OnlineSampleMapping::new(
            g("dataset_size"),
            g("num_samples"),
            g("block_size"),
            g("seed") as u32,
        )
        .unwrap();
        let got: Vec<u64> = (0..m.len()).map(|i| m.get(i).unwrap() as u64).collect();
        let want: Vec<u64> = c["order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, want, "{c}");
        assert!(m.get(m.len()).is_err());
    }
    assert_eq!(nemo_sft_train_samples(8, 100), 804);
    // Remapped SFT data serves examples in that order.
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let ds = SftDataset::from_jsonl(
        &squad_file(dir.path(), 7),
        tok.as_ref(),
        SftConfig::new(256),
    )
    .unwrap();
    let first = ds
        .sample(
            OnlineSampleMapping::nemo_sft(7, 30)
                .unwrap()
                .get(0)
                .unwrap(),
        )
        .unwrap();
    let r = Remapped {
        source: ds,
        mapping: OnlineSampleMapping::nemo_sft(7, 30).unwrap(),
    };
    assert_eq!(r.len(), 30);
    assert_eq!(r.sample(0).unwrap(), first);
}

#[test]
fn padding_a_packed_row_extends_seq_idx_with_its_own_segment() {
    let mut a = coil_data::Sample::from_window(&[1, 2, 3, 4]);
    a.seq_idx = Some(vec![0, 0, 1]);
    let mut b = coil_data::Sample::from_window(&[5, 6]);
    b.seq_idx = Some(vec![0]);
    let batch = coil_data::batch::pad_batch(&[a, b], 9, 4, 8).unwrap();
    assert_eq!(batch.shape, [2, 4]);
    assert_eq!(batch.seq_idx.unwrap(), vec![0, 0, 1, 2, 0, 1, 1, 1]);
}
