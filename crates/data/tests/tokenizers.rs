//! Every tokenizer kind against ids produced by its reference library (HF `tokenizers`, OpenAI `tiktoken`
//! with NeMo's split pattern, Google `sentencepiece`); fixtures come from tools/make_fixtures.py.

use std::path::PathBuf;

use coil_data::tokenizer::NemoTiktokenTokenizer;
use coil_data::{load_tokenizer, padded_vocab_size};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn check_cases(spec: &str, cases: &Value) {
    let tok = load_tokenizer(spec).unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{spec}: {text:?}");
    }
}

#[test]
fn hf_tokenizer_json_matches_hf_tokenizers() {
    let exp = expected("tiny_bpe_expected.json");
    let spec = fixture("tiny_bpe_tokenizer.json")
        .to_string_lossy()
        .into_owned();
    check_cases(&spec, &exp["cases"]);
    let tok = load_tokenizer(&spec).unwrap();
    assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.eos_id(), Some(0));
    assert_eq!(tok.pad_id(), Some(1));
    assert!(tok.space_sensitive());
    let text = "To be, or not to be";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn nemo_tiktoken_matches_tiktoken_with_nemo_pattern() {
    let exp = expected("tiny_tiktoken_expected.json");
    let spec = fixture("tiny_tiktoken_vocab.json")
        .to_string_lossy()
        .into_owned();
    check_cases(&spec, &exp["cases"]);
    let tok = load_tokenizer(&spec).unwrap();
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(1), Some(2), Some(4))
    );
    assert_eq!(
        tok.vocab_size() as u64,
        1000 + exp["num_ranks"].as_u64().unwrap()
    );
    let text = "Unicode: café, 日本語";
    let ids = tok.encode(text).unwrap();
    assert!(ids.iter().all(|&i| i >= 1000));
    let mut with_specials = vec![1];
    with_specials.extend(&ids);
    with_specials.push(2);
    assert_eq!(tok.decode(&with_specials).unwrap(), text);
    assert_eq!(NemoTiktokenTokenizer::special_token(4), "<pad>");
    assert_eq!(NemoTiktokenTokenizer::special_token(7), "<SPECIAL_7>");
}

#[test]
fn sentencepiece_bpe_and_unigram_match_sentencepiece() {
    let exp = expected("tiny_spm_expected.json");
    for kind in ["bpe", "unigram", "bpe_nfkc"] {
        let spec = fixture(&format!("tiny_spm_{kind}.model"))
            .to_string_lossy()
            .into_owned();
        check_cases(&spec, &exp[kind]["cases"]);
        let tok = load_tokenizer(&spec).unwrap();
        assert_eq!(
            tok.vocab_size() as u64,
            exp[kind]["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(tok.bos_id().map(u64::from), exp[kind]["bos"].as_u64());
        assert_eq!(tok.eos_id().map(u64::from), exp[kind]["eos"].as_u64());
        assert!(!tok.space_sensitive());
        let text = "To be, or not to be: that is the question.";
        assert_eq!(
            tok.decode(&tok.encode(text).unwrap()).unwrap(),
            text,
            "{kind}"
        );
    }
}

#[test]
fn embedded_gpt2_needs_no_files() {
    let tok = load_tokenizer("gpt2").unwrap();
    // GPT-2's well-known ids: "Hello" 15496, " world" 995.
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.eos_id(), Some(50256));
    assert!(tok.space_sensitive());
    assert_eq!(tok.decode(&[15496, 995, 50256]).unwrap(), "Hello world");
    assert!(tok.decode(&[60000]).is_err());
}

#[test]
fn bad_tokenizer_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.model");
    std::fs::write(&junk, b"\xff\xff\xff").unwrap();
    let e = load_tokenizer(junk.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("junk.model") && e.contains("SentencePiece"),
        "{e}"
    );
    let badjson = dir.path().join("vocab.json");
    std::fs::write(&badjson, b"[{\"rank\": 0}]").unwrap();
    let e = load_tokenizer(badjson.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab.json"), "{e}");
    let e = load_tokenizer("/no/such/tokenizer.json")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no such file"), "{e}");
}

#[test]
fn vocab_padding_matches_nemo() {
    assert_eq!(padded_vocab_size(50277, 16, 1), 50288); // NeMo SSMConfig divides by 16
    assert_eq!(padded_vocab_size(50277, 128, 1), 50304);
    assert_eq!(padded_vocab_size(131072, 128, 8), 131072);
    assert_eq!(padded_vocab_size(256000, 128, 8), 256000);
    assert_eq!(padded_vocab_size(50257, 128, 2), 50432);
}

/// Writes `tok`'s model-directory files into a fresh directory and loads the tokenizer back from it.
fn through_model_dir(spec: &str) -> (tempfile::TempDir, Box<dyn coil_data::Tokenizer>) {
    let tok = load_tokenizer(spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in tok.model_dir_files().unwrap() {
        std::fs::write(dir.path().join(&f.name), &f.contents).unwrap();
    }
    let back =
        load_tokenizer(&dir.path().to_string_lossy()).unwrap_or_else(|e| panic!("{spec}: {e}"));
    (dir, back)
}

const SAMPLES: [&str; 4] = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "  leading spaces\n\tand tabs  ",
    "ünïcödé → 東京 🙂",
    "",
];

#[test]
fn every_tokenizer_travels_with_a_model_directory() {
    let specs = [
        "bytes".to_string(),
        "gpt2".to_string(),
        fixture("tiny_bpe_tokenizer.json")
            .to_string_lossy()
            .into_owned(),
        fixture("tiny_tiktoken_vocab.json")
            .to_string_lossy()
            .into_owned(),
        fixture("tiny_spm_bpe.model").to_string_lossy().into_owned(),
    ];
    for spec in &specs {
        let tok = load_tokenizer(spec).unwrap();
        let (_dir, back) = through_model_dir(spec);
        for text in SAMPLES {
            let ids = tok.encode(text).unwrap();
            assert_eq!(back.encode(text).unwrap(), ids, "{spec}: {text:?}");
            assert_eq!(
                back.decode(&ids).unwrap(),
                tok.decode(&ids).unwrap(),
                "{spec}"
            );
        }
        assert_eq!(back.vocab_size(), tok.vocab_size(), "{spec}");
        assert_eq!(back.eos_id(), tok.eos_id(), "{spec}");
    }
}

#[test]
fn the_byte_tokenizer_is_an_hf_tokenizer_json_in_a_model_directory() {
    let (dir, back) = through_model_dir("bytes");
    assert!(dir.path().join("tokenizer.json").is_file());
    assert!(dir.path().join("tokenizer_config.json").is_file());
    assert!(back.describe().starts_with("hf:"), "{}", back.describe());
    // every byte value is its own id, and the end-of-document token is 256
    let all: String = (0u8..128).map(char::from).collect();
    assert_eq!(back.encode(&all).unwrap(), (0u32..128).collect::<Vec<_>>());
    assert_eq!(back.encode("é").unwrap(), vec![0xC3, 0xA9]);
    assert_eq!(back.vocab_size(), 257);
    assert_eq!(back.eos_id(), Some(256));
    assert_eq!(back.decode(&[72, 105, 256]).unwrap(), "Hi");
}

#[test]
fn a_model_directory_without_a_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_tokenizer(&dir.path().to_string_lossy())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no tokenizer.json or coil_tokenizer.json"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("coil_tokenizer.json"),
        r#"{"tokenizer": "spm:../outside.model"}"#,
    )
    .unwrap();
    let e = load_tokenizer(&dir.path().to_string_lossy())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("must be a file name in this directory"), "{e}");
}
