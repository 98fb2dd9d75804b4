//! HF `tokenizer.json` through the `tokenizers` crate (pure-Rust fancy-regex backend, no C build).

use std::path::Path;

use super::Tokenizer;
use crate::error::{DataError, Result};

/// A Hugging Face fast tokenizer (GPT-NeoX-20B for the Mamba2 models, Nemotron-H's HF tokenizer, ...).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
}

impl HfTokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| DataError::tok(&source, e.to_string()))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos = find(&[
            "<|endoftext|>",
            "</s>",
            "<eos>",
            "<|end_of_text|>",
            "<|im_end|>",
        ]);
        let bos = find(&["<s>", "<bos>", "<|begin_of_text|>"]).or(eos);
        let pad = find(&["<pad>", "<|padding|>", "[PAD]", "<|pad|>"]);
        Ok(Self {
            inner,
            source,
            bos,
            eos,
            pad,
        })
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::tok(&self.source, e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| DataError::tok(&self.source, e.to_string()))
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    fn describe(&self) -> String {
        format!("hf:{}", self.source)
    }
}
