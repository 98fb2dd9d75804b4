//! Byte-level BPE with tiktoken's rank-merge algorithm: NeMo's `TiktokenTokenizer` for Nemotron-H (JSON
//! ranks, 1000 special ids first, id = rank + 1000) and GPT-2 (`r50k_base`) embedded in the binary.

use std::path::Path;

use base64::Engine;
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

use super::{coil_tokenizer_marker, ModelDirFile, Tokenizer};
use crate::error::{DataError, Result};

/// The split regex of NeMo's `tiktoken_tokenizer.py` (`PATTERN_TIKTOKEN`).
pub const NEMO_TIKTOKEN_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const NUM_SPECIAL: usize = 1000;
const NAMED_SPECIALS: [&str; 7] = ["<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>"];
const DEFAULT_VOCAB: usize = 131072;

/// NeMo's Nemotron-H tokenizer: `<unk>,<s>,</s>,<mask>,<pad>,<cls>,<sep>,<SPECIAL_7>..<SPECIAL_999>`
/// take ids 0..1000, BPE rank r is id r + 1000 (bos 1, eos 2, pad 4). Special tokens in text are not
/// parsed, as in NeMo.
pub struct NemoTiktokenTokenizer {
    bpe: CoreBPE,
    decoder: Vec<Vec<u8>>,
    source: String,
    /// The vocabulary file as read (what a model directory gets).
    file: Vec<u8>,
}

/// The name of the vocabulary file in a model directory.
const VOCAB_FILE: &str = "nemo_tiktoken_vocab.json";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RankEntry {
    rank: usize,
    token_bytes: String,
    #[allow(dead_code)]
    token_str: String,
}

impl NemoTiktokenTokenizer {
    /// Load a vocabulary JSON (`[{rank, token_bytes, token_str}, ...]`), keeping at most 131072 - 1000 ranks.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let file = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let entries: Vec<RankEntry> = serde_json::from_slice(&file)
            .map_err(|e| DataError::tok(&source, format!("not a NeMo tiktoken vocabulary: {e}")))?;
        let keep = entries.len().min(DEFAULT_VOCAB - NUM_SPECIAL);
        let mut encoder = FxHashMap::default();
        let mut decoder = Vec::with_capacity(keep);
        for (i, e) in entries.into_iter().take(keep).enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&e.token_bytes)
                .map_err(|err| DataError::tok(&source, format!("entry {i}: bad base64: {err}")))?;
            if e.rank != i || (i < 256 && bytes != [i as u8]) {
                return Err(DataError::tok(
                    &source,
                    format!("entry {i}: rank {} / bytes out of order", e.rank),
                ));
            }
            if encoder.insert(bytes.clone(), i as u32).is_some() {
                return Err(DataError::tok(
                    &source,
                    format!("entry {i}: duplicate token bytes"),
                ));
            }
            decoder.push(bytes);
        }
        if keep < 256 {
            return Err(DataError::tok(
                &source,
                "vocabulary must start with the 256 single bytes",
            ));
        }
        let bpe = CoreBPE::new(encoder, FxHashMap::default(), NEMO_TIKTOKEN_PATTERN)
            .map_err(|e| DataError::tok(&source, e.to_string()))?;
        Ok(Self {
            bpe,
            decoder,
            source,
            file,
        })
    }

    /// The name of special id `id < 1000`.
    pub fn special_token(id: u32) -> String {
        match NAMED_SPECIALS.get(id as usize) {
            Some(s) => s.to_string(),
            None => format!("<SPECIAL_{id}>"),
        }
    }
}

impl Tokenizer for NemoTiktokenTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .bpe
            .encode_ordinary(text)
            .into_iter()
            .map(|r| r + NUM_SPECIAL as u32)
            .collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            if (id as usize) < NUM_SPECIAL {
                continue;
            }
            let tok = self.decoder.get(id as usize - NUM_SPECIAL).ok_or_else(|| {
                DataError::tok(
                    &self.source,
                    format!("id {id} is outside the vocabulary of {}", self.vocab_size()),
                )
            })?;
            bytes.extend_from_slice(tok);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        NUM_SPECIAL + self.decoder.len()
    }
    fn bos_id(&self) -> Option<u32> {
        Some(1)
    }
    fn eos_id(&self) -> Option<u32> {
        Some(2)
    }
    fn pad_id(&self) -> Option<u32> {
        Some(4)
    }
    /// NeMo's `TiktokenTokenizer` has no `space_sensitive` attribute and the SFT dataset reads it with a
    /// default of false, so the space before `{output}` is dropped for Nemotron-H. Kept for fidelity.
    fn space_sensitive(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!("tiktoken:{}", self.source)
    }
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>> {
        Ok(vec![
            ModelDirFile::new(VOCAB_FILE, self.file.clone()),
            coil_tokenizer_marker(&format!("tiktoken:{VOCAB_FILE}")),
        ])
    }
}

/// GPT-2's BPE (`r50k_base`, 50257 ids, `<|endoftext|>` = 50256), shipped inside the binary.
pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
}

/// GPT-2's end-of-text id.
pub const GPT2_EOT: u32 = 50256;

impl Gpt2Tokenizer {
    /// The embedded tokenizer (first use parses the embedded ranks, ~50 ms).
    pub fn new() -> Result<Self> {
        Ok(Self {
            bpe: tiktoken_rs::r50k_base_singleton(),
        })
    }
}

impl Tokenizer for Gpt2Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.bpe.encode_ordinary(text))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i > GPT2_EOT) {
            return Err(DataError::tok(
                "gpt2",
                format!("id {bad} is outside GPT-2's 50257 ids"),
            ));
        }
        let kept: Vec<u32> = ids.iter().copied().filter(|&i| i != GPT2_EOT).collect();
        let bytes: Vec<u8> = self.bpe._decode_native_and_split(kept).flatten().collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        GPT2_EOT as usize + 1
    }
    fn bos_id(&self) -> Option<u32> {
        Some(GPT2_EOT)
    }
    fn eos_id(&self) -> Option<u32> {
        Some(GPT2_EOT)
    }
    fn pad_id(&self) -> Option<u32> {
        None
    }
    fn describe(&self) -> String {
        "gpt2 (embedded r50k_base)".into()
    }
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>> {
        Ok(vec![coil_tokenizer_marker("gpt2")])
    }
}
