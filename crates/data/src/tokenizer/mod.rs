//! Tokenizers behind one trait: HF `tokenizer.json`, NeMo's tiktoken-style Nemotron-H vocabulary,
//! SentencePiece `.model`, GPT-2 BPE embedded in the binary and the built-in byte tokenizer, for runs that ship
//! no files. Also the vocabulary padding rule Megatron applies to the embedding table.
//!
//! Every tokenizer can say which files a model directory needs to get it back ([`Tokenizer::model_dir_files`]):
//! checkpoints carry them, so a trained model can be prompted with text. HF-style tokenizers (and `bytes`, as an
//! equivalent byte-level BPE) travel as `tokenizer.json` + `tokenizer_config.json`; the others as their own file
//! plus [`COIL_TOKENIZER_FILE`], a one-line JSON `{"tokenizer": SPEC}` naming how to load it.

mod bytes;
mod hf;
mod sentencepiece;
mod tiktoken;

use std::path::Path;

pub use bytes::{byte_to_char, ByteTokenizer, BYTE_EOD, BYTE_EOD_TOKEN};
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
    /// The files a model directory needs so that [`load_tokenizer`] on that directory returns an equivalent
    /// tokenizer; empty when there is nothing to encode text with (mock data).
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>>;
}

/// One file of a model directory: its name (no path) and contents.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDirFile {
    pub name: String,
    pub contents: Vec<u8>,
}

impl ModelDirFile {
    pub fn new(name: impl Into<String>, contents: Vec<u8>) -> Self {
        ModelDirFile {
            name: name.into(),
            contents,
        }
    }
}

/// In a model directory without `tokenizer.json`: `{"tokenizer": SPEC}`, where SPEC is `gpt2`, or
/// `tiktoken:FILE` / `spm:FILE` with FILE a file name in that directory.
pub const COIL_TOKENIZER_FILE: &str = "coil_tokenizer.json";

/// The marker file that makes [`load_tokenizer`] on a directory load `spec`.
pub(crate) fn coil_tokenizer_marker(spec: &str) -> ModelDirFile {
    let text = serde_json::json!({ "tokenizer": spec }).to_string() + "\n";
    ModelDirFile::new(COIL_TOKENIZER_FILE, text.into_bytes())
}

/// Load a tokenizer from a spec string:
/// - `gpt2` (or `embedded:gpt2`): GPT-2 BPE compiled into the binary; `bytes`: the built-in byte tokenizer;
/// - `hf:PATH`, `tiktoken:PATH`, `spm:PATH`: explicit kind;
/// - a `.model` file: SentencePiece;
/// - a directory (a model or checkpoint): its `tokenizer.json`, else its [`COIL_TOKENIZER_FILE`];
/// - a `.json` file: a JSON list is NeMo's tiktoken vocabulary, an object is HF `tokenizer.json`.
pub fn load_tokenizer(spec: &str) -> Result<Box<dyn Tokenizer>> {
    match spec {
        "gpt2" | "embedded:gpt2" => return Ok(Box::new(Gpt2Tokenizer::new()?)),
        "bytes" | "embedded:bytes" => return Ok(Box::new(ByteTokenizer)),
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
        return load_from_dir(path);
    }
    if !path.exists() {
        return Err(DataError::tok(
            spec,
            "no such file; give a tokenizer.json, a NeMo tiktoken vocab .json, a SentencePiece .model, a model \
             directory, `gpt2` or `bytes`",
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

/// The tokenizer of a model directory: `tokenizer.json`, else the spec in [`COIL_TOKENIZER_FILE`].
fn load_from_dir(dir: &Path) -> Result<Box<dyn Tokenizer>> {
    let hf = dir.join("tokenizer.json");
    if hf.is_file() {
        return Ok(Box::new(HfTokenizer::from_file(&hf)?));
    }
    let marker = dir.join(COIL_TOKENIZER_FILE);
    if !marker.is_file() {
        return Err(DataError::file(
            dir,
            format!("no tokenizer.json or {COIL_TOKENIZER_FILE} in this directory"),
        ));
    }
    let text = std::fs::read_to_string(&marker).map_err(|e| DataError::io(&marker, e))?;
    let spec = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("tokenizer")?.as_str().map(str::to_string))
        .ok_or_else(|| DataError::file(&marker, r#"expected {"tokenizer": "SPEC"}"#))?;
    let in_dir = |file: &str| -> Result<String> {
        let plain = !file.is_empty() && Path::new(file).file_name() == Some(file.as_ref());
        if !plain {
            return Err(DataError::file(
                &marker,
                format!("{file:?} must be a file name in this directory"),
            ));
        }
        Ok(dir.join(file).to_string_lossy().into_owned())
    };
    match spec.split_once(':') {
        None if spec == "gpt2" || spec == "bytes" => load_tokenizer(&spec),
        Some(("tiktoken", f)) => Ok(Box::new(NemoTiktokenTokenizer::from_file(Path::new(
            &in_dir(f)?,
        ))?)),
        Some(("spm", f)) => Ok(Box::new(SentencePieceTokenizer::from_file(Path::new(
            &in_dir(f)?,
        ))?)),
        _ => Err(DataError::file(
            &marker,
            format!("unknown tokenizer {spec:?}; expected gpt2, bytes, tiktoken:FILE or spm:FILE"),
        )),
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
