//! Tokenizers behind one trait: HF `tokenizer.json`, NeMo's tiktoken-style Nemotron-H vocabulary,
//! SentencePiece `.model`, and GPT-2 BPE embedded in the binary for runs that ship no files. Also the
//! vocabulary padding rule Megatron applies to the embedding table.

mod hf;
mod sentencepiece;
mod tiktoken;

use std::path::Path;

pub use hf::HfTokenizer;
pub use sentencepiece::SentencePieceTokenizer;
pub use tiktoken::{Gpt2Tokenizer, NemoTiktokenTokenizer, NEMO_TIKTOKEN_PATTERN};

use crate::error::{DataError, Result};

/// Text <-> token ids. Implementations are cheap to share across threads.
pub trait Tokenizer: Send + Sync {
    /// Ids for `text`, without BOS/EOS.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text for `ids`; special tokens are skipped, invalid UTF-8 is replaced.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Number of ids the tokenizer can produce (before padding for the embedding table).
    fn vocab_size(&self) -> usize;
    /// Beginning-of-sequence id.
    fn bos_id(&self) -> Option<u32>;
    /// End-of-sequence id (Megatron's `eod` for `--append-eod`).
    fn eos_id(&self) -> Option<u32>;
    /// Padding id, when the vocabulary has one.
    fn pad_id(&self) -> Option<u32>;
    /// NeMo's `space_sensitive`: whether `encode("x y") != encode("x") ++ encode("y")` (byte-level BPE:
    /// yes; SentencePiece: no). SFT templates keep the space before a field only when this is true.
    fn space_sensitive(&self) -> bool {
        match (self.encode("x y"), self.encode("x"), self.encode("y")) {
            (Ok(xy), Ok(x), Ok(y)) => xy != [x, y].concat(),
            _ => true,
        }
    }
    /// A short human-readable description ("gpt2 (embedded)", "hf:/path/tokenizer.json", ...).
    fn describe(&self) -> String;
}

/// Load a tokenizer from a spec string:
/// - `gpt2` (or `embedded:gpt2`): GPT-2 BPE compiled into the binary;
/// - `hf:PATH`, `tiktoken:PATH`, `spm:PATH`: explicit kind;
/// - a `.model` file: SentencePiece; a directory: its `tokenizer.json`;
/// - a `.json` file: a JSON list is NeMo's tiktoken vocabulary, an object is HF `tokenizer.json`.
pub fn load_tokenizer(spec: &str) -> Result<Box<dyn Tokenizer>> {
    match spec {
        "gpt2" | "embedded:gpt2" => return Ok(Box::new(Gpt2Tokenizer::new()?)),
        _ => {}
    }
    if let Some(p) = spec.strip_prefix("hf:") {
        return Ok(Box::new(HfTokenizer::from_file(Path::new(p))?));
    }
    if let Some(p) = spec.strip_prefix("tiktoken:") {
        return Ok(Box::new(NemoTiktokenTokenizer::from_file(Path::new(p))?));
    }
    if let Some(p) = spec.strip_prefix("spm:") {
        return Ok(Box::new(SentencePieceTokenizer::from_file(Path::new(p))?));
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(Box::new(HfTokenizer::from_file(
            &path.join("tokenizer.json"),
        )?));
    }
    if !path.exists() {
        return Err(DataError::tok(
            spec,
            "no such file; give a tokenizer.json, a NeMo tiktoken vocab .json, a SentencePiece .model, or `gpt2`",
        ));
    }
    if spec.ends_with(".model") {
        return Ok(Box::new(SentencePieceTokenizer::from_file(path)?));
    }
    let head = read_head(path)?;
    if head.trim_start().starts_with('[') {
        Ok(Box::new(NemoTiktokenTokenizer::from_file(path)?))
    } else {
        Ok(Box::new(HfTokenizer::from_file(path)?))
    }
}

fn read_head(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Megatron/NeMo vocabulary padding: `ceil(V / (divisible_by * tp)) * (divisible_by * tp)`.
/// GPT-NeoX's 50277 pads to 50288 with the Mamba2 configs' divisor 16 at TP=1.
pub fn padded_vocab_size(
    vocab_size: usize,
    make_vocab_size_divisible_by: usize,
    tensor_parallel: usize,
) -> usize {
    let m = (make_vocab_size_divisible_by * tensor_parallel).max(1);
    vocab_size.div_ceil(m) * m
}
