//! HF `tokenizer.json` through the `tokenizers` crate (pure-Rust fancy-regex backend, no C build).

use std::path::Path;

use super::{ModelDirFile, Tokenizer};
use crate::error::{DataError, Result};

/// A Hugging Face fast tokenizer (GPT-NeoX-20B for the Mamba2 models, Nemotron-H's HF tokenizer, ...).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    /// The `tokenizer.json` as read, and the `tokenizer_config.json` beside it if there was one: what a model
    /// directory gets.
    json: Vec<u8>,
    config: Option<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
}

impl HfTokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let json = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| DataError::tok(&source, e.to_string()))?;
        let beside = path.with_file_name("tokenizer_config.json");
        let config = match beside.is_file() {
            true => Some(std::fs::read(&beside).map_err(|e| DataError::io(&beside, e))?),
            false => None,
        };
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
            json,
            config,
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
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>> {
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let config = self.config.clone().unwrap_or_else(|| {
            tokenizer_config(
                name(self.bos).as_deref(),
                name(self.eos).as_deref(),
                name(self.pad).as_deref(),
            )
        });
        Ok(vec![
            ModelDirFile::new("tokenizer.json", self.json.clone()),
            ModelDirFile::new("tokenizer_config.json", config),
        ])
    }
}

/// A minimal `tokenizer_config.json` for a `tokenizer.json` that came without one: transformers' generic fast
/// tokenizer class and the special tokens, with no clean-up of spaces on decoding (Coil decodes as written).
pub(crate) fn tokenizer_config(bos: Option<&str>, eos: Option<&str>, pad: Option<&str>) -> Vec<u8> {
    let mut c = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    for (key, token) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
        if let Some(t) = token {
            c[key] = t.into();
        }
    }
    let mut text = serde_json::to_string_pretty(&c).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}
