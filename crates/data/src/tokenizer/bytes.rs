//! The built-in byte tokenizer (`bytes`): ids 0-255 are the UTF-8 bytes of the text, 256 is end-of-document.
//! It needs no file and keeps the LM head tiny, which is what lets the `demo` recipe train in minutes on two CPU
//! cores. A model directory carries it as an HF `tokenizer.json` (byte-level BPE without merges) that encodes
//! exactly as this type does, so both `coil generate` and transformers' `AutoTokenizer` read it.

use super::{ModelDirFile, Tokenizer};
use crate::error::{DataError, Result};

/// See the module doc.
pub struct ByteTokenizer;

/// The end-of-document id of [`ByteTokenizer`].
pub const BYTE_EOD: u32 = 256;

/// The text of the end-of-document token in the exported `tokenizer.json`.
pub const BYTE_EOD_TOKEN: &str = "<|endoftext|>";

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        BYTE_EOD as usize + 1
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn eos_id(&self) -> Option<u32> {
        Some(BYTE_EOD)
    }
    fn pad_id(&self) -> Option<u32> {
        None
    }
    fn describe(&self) -> String {
        "bytes (built in)".into()
    }
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>> {
        Ok(vec![
            ModelDirFile::new("tokenizer.json", byte_level_tokenizer_json()?),
            ModelDirFile::new(
                "tokenizer_config.json",
                super::hf::tokenizer_config(None, Some(BYTE_EOD_TOKEN), None),
            ),
        ])
    }
}

/// GPT-2's byte-to-character table: byte-level BPE vocabularies spell byte `b` as this character.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    // The others take 256, 257, ... in byte order.
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

/// An HF `tokenizer.json` equal to [`ByteTokenizer`]: a byte-level pre-tokenizer (no regex split, no prefix
/// space), a BPE model whose vocabulary is the 256 byte characters with their byte values as ids and no merges,
/// and `<|endoftext|>` = 256 as a special token.
fn byte_level_tokenizer_json() -> Result<Vec<u8>> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let err =
        |e: tokenizers::Error| DataError::tok("bytes", format!("building tokenizer.json: {e}"));
    let vocab: tokenizers::models::bpe::Vocab = (0..=255u8)
        .map(|b| (byte_to_char(b).to_string(), u32::from(b)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .map_err(err)?;
    let byte_level = ByteLevel::new(false, true, false);
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    tok.add_special_tokens([tokenizers::AddedToken::from(BYTE_EOD_TOKEN, true)])
        .map_err(err)?;
    let text = tok.to_string(true).map_err(err)?;
    Ok(text.into_bytes())
}
