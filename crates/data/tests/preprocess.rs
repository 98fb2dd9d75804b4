//! `preprocess_jsonl`: output equals writing the same token ids by hand, is independent of the worker
//! count, handles list-valued fields and empty documents like Megatron, and names file and line on errors.

use std::path::Path;

use coil_data::{
    load_tokenizer, preprocess_jsonl, DType, DataError, IndexedDataset, IndexedDatasetWriter,
    PreprocessConfig, Tokenizer,
};

fn run(
    input: &Path,
    prefix: &Path,
    workers: usize,
    append_eod: bool,
    tok: &dyn Tokenizer,
) -> Result<coil_data::PreprocessProgress, DataError> {
    let cfg = PreprocessConfig {
        input: input.to_path_buf(),
        json_key: "text".into(),
        output_prefix: prefix.to_path_buf(),
        append_eod,
        workers,
        dtype: None,
    };
    let mut calls = 0;
    let out = preprocess_jsonl(&cfg, tok, &mut |_| calls += 1);
    if out.is_ok() {
        assert!(calls > 0);
    }
    out
}

#[test]
fn matches_hand_written_dataset_and_is_worker_independent() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    let docs: Vec<String> = coil_data::corpus::shakespeare_documents(2000)
        .into_iter()
        .take(300)
        .collect();
    let mut text = String::new();
    for d in &docs {
        text.push_str(&serde_json::json!({"text": d, "id": 1}).to_string());
        text.push('\n');
    }
    text.push_str("{\"text\": \"\"}\n\n{\"text\": [\"first sentence.\", \"second one.\"]}\n");
    std::fs::write(&input, text).unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let one = dir.path().join("one");
    let stats = run(&input, &one, 1, true, tok.as_ref()).unwrap();
    let two = dir.path().join("two");
    run(&input, &two, 2, true, tok.as_ref()).unwrap();
    for ext in ["bin", "idx"] {
        assert_eq!(
            std::fs::read(one.with_extension(ext)).unwrap(),
            std::fs::read(two.with_extension(ext)).unwrap()
        );
    }
    // The same ids written by hand give the same bytes.
    let hand = dir.path().join("hand");
    let mut w = IndexedDatasetWriter::create(&hand, DType::U16).unwrap();
    for d in &docs {
        let mut ids: Vec<i64> = tok.encode(d).unwrap().into_iter().map(i64::from).collect();
        ids.push(50256);
        w.add_item(&ids).unwrap();
        w.end_document();
    }
    w.end_document(); // the empty document: no sequence, no EOD (Megatron skips empty sequences)
    let a: Vec<i64> = tok
        .encode("first sentence.")
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let mut b: Vec<i64> = tok
        .encode("second one.")
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    b.push(50256);
    w.add_item(&a).unwrap();
    w.add_item(&b).unwrap();
    w.end_document();
    w.finalize().unwrap();
    for ext in ["bin", "idx"] {
        assert_eq!(
            std::fs::read(one.with_extension(ext)).unwrap(),
            std::fs::read(hand.with_extension(ext)).unwrap()
        );
    }
    let ds = IndexedDataset::open(&one).unwrap();
    assert_eq!(ds.num_documents(), docs.len() + 2);
    assert_eq!(stats.documents as usize, docs.len() + 2);
    assert_eq!(stats.tokens, ds.num_tokens());
}

#[test]
fn malformed_lines_name_file_and_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    for (body, want) in [
        (
            "{\"text\": \"ok\"}\n{\"text\": \"broken\"\n",
            "docs.jsonl:2: malformed JSON",
        ),
        (
            "{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n",
            "docs.jsonl:3: no \"text\" field",
        ),
        ("{\"text\": 5}\n", "docs.jsonl:1: \"text\" is not a string"),
    ] {
        let input = dir.path().join("docs.jsonl");
        std::fs::write(&input, body).unwrap();
        let out = dir.path().join("out");
        let err = run(&input, &out, 2, false, tok.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!out.with_extension("bin").exists() && !out.with_extension("idx").exists());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn a_prefix_without_a_file_name_and_an_empty_corpus_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer("gpt2").unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\n").unwrap();
    // `pp/` would write hidden `pp/.bin` and `pp/.idx`
    let slash = format!("{}/pp/", dir.path().display());
    let slash = Path::new(&slash);
    let e = run(&input, slash, 1, false, tok.as_ref())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a file name"), "{e}");
    assert!(!dir.path().join("pp/.bin").exists() && !dir.path().join("pp/.idx").exists());
    // no documents, or documents without text: an error, and nothing written
    for body in ["", "\n\n", "{\"text\": \"\"}\n"] {
        std::fs::write(&input, body).unwrap();
        let prefix = dir.path().join("empty");
        let e = run(&input, &prefix, 1, false, tok.as_ref())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tokens") && e.contains("docs.jsonl"),
            "{body:?}: {e}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("empty"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
