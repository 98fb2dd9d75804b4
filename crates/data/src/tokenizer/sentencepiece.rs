//! SentencePiece `.model` files in pure Rust (the `sentencepiece` crate needs a C++ build): a small
//! protobuf reader for `ModelProto`, SentencePiece's normalizer (the precompiled character map via the
//! `tokenizers` crate, extra-whitespace removal, dummy prefix, `▁` escaping), and both encoders: BPE
//! (highest-score merge first, leftmost on ties) and unigram (Viterbi), with byte fallback.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use tokenizers::normalizers::Precompiled;
use tokenizers::{NormalizedString, Normalizer};

use super::{coil_tokenizer_marker, ModelDirFile, Tokenizer};
use crate::error::{DataError, Result};

const SPACE: char = '\u{2581}';
const UNK_PENALTY: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelType {
    Unigram,
    Bpe,
}

/// A SentencePiece model (BPE or unigram; WORD/CHAR models are rejected with an error).
pub struct SentencePieceTokenizer {
    source: String,
    /// The serialized model as read (what a model directory gets).
    model: Vec<u8>,
    kind: ModelType,
    pieces: Vec<(String, f32, PieceType)>,
    lookup: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    max_piece_bytes: usize,
    min_score: f32,
    byte_fallback: bool,
    unk: u32,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    charsmap: Option<Precompiled>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
}

struct Proto<'a> {
    b: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Proto<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn next(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.pos >= self.b.len() {
            return Some(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.pos += 8;
                Field::Varint(0)
            }
            2 => {
                let n = self.varint()? as usize;
                let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
                self.pos += n;
                Field::Bytes(s)
            }
            5 => {
                let s = self.b.get(self.pos..self.pos + 4)?;
                self.pos += 4;
                Field::Fixed32(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            }
            _ => return None,
        };
        if self.pos > self.b.len() {
            return None;
        }
        Some(Some((key >> 3, field)))
    }
    /// All fields of a message, or `None` if it is malformed.
    fn fields(b: &'a [u8]) -> Option<Vec<(u64, Field<'a>)>> {
        let mut p = Proto { b, pos: 0 };
        let mut out = Vec::new();
        while let Some(f) = p.next()? {
            out.push(f);
        }
        Some(out)
    }
}

impl SentencePieceTokenizer {
    /// Load a `.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parse a serialized `ModelProto`.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let bad = |what: &str| DataError::tok(source, format!("not a SentencePiece model: {what}"));
        let top = Proto::fields(bytes).ok_or_else(|| bad("malformed protobuf"))?;
        let mut pieces = Vec::new();
        let mut kind = 1u64;
        let (mut byte_fallback, mut unk, mut bos, mut eos, mut pad) =
            (false, 0i64, 1i64, 2i64, -1i64);
        let (mut charsmap, mut add_dummy_prefix, mut remove_extra) = (None, true, true);
        for (num, field) in top {
            match (num, field) {
                (1, Field::Bytes(m)) => {
                    let (mut piece, mut score, mut ty) = (String::new(), 0.0f32, 1u64);
                    for (n, f) in Proto::fields(m).ok_or_else(|| bad("malformed piece"))? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => piece = String::from_utf8_lossy(s).into_owned(),
                            (2, Field::Fixed32(x)) => score = f32::from_bits(x),
                            (3, Field::Varint(t)) => ty = t,
                            _ => {}
                        }
                    }
                    let ty = match ty {
                        1 => PieceType::Normal,
                        2 => PieceType::Unknown,
                        3 => PieceType::Control,
                        4 => PieceType::UserDefined,
                        5 => PieceType::Unused,
                        6 => PieceType::Byte,
                        t => return Err(bad(&format!("piece type {t}"))),
                    };
                    pieces.push((piece, score, ty));
                }
                (2, Field::Bytes(m)) => {
                    for (n, f) in Proto::fields(m).ok_or_else(|| bad("malformed trainer spec"))? {
                        if let Field::Varint(v) = f {
                            match n {
                                3 => kind = v,
                                35 => byte_fallback = v != 0,
                                40 => unk = v as i64 as i32 as i64,
                                41 => bos = v as i64 as i32 as i64,
                                42 => eos = v as i64 as i32 as i64,
                                43 => pad = v as i64 as i32 as i64,
                                _ => {}
                            }
                        }
                    }
                }
                (3, Field::Bytes(m)) => {
                    for (n, f) in
                        Proto::fields(m).ok_or_else(|| bad("malformed normalizer spec"))?
                    {
                        match (n, f) {
                            (2, Field::Bytes(map)) if !map.is_empty() => {
                                charsmap = Some(
                                    Precompiled::from(map)
                                        .map_err(|e| bad(&format!("precompiled charsmap: {e}")))?,
                                )
                            }
                            (3, Field::Varint(v)) => add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => remove_extra = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let kind = match kind {
            1 => ModelType::Unigram,
            2 => ModelType::Bpe,
            k => {
                return Err(bad(&format!(
                    "model type {k} (only unigram and BPE are supported)"
                )))
            }
        };
        if pieces.is_empty() {
            return Err(bad("no pieces"));
        }
        let id = |v: i64| (v >= 0 && (v as usize) < pieces.len()).then_some(v as u32);
        let mut lookup = HashMap::new();
        let mut byte_ids = [None; 256];
        let mut max_piece_bytes = 1;
        let mut min_score = f32::MAX;
        for (i, (p, score, ty)) in pieces.iter().enumerate() {
            match ty {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => {
                    lookup.insert(p.clone(), i as u32);
                    max_piece_bytes = max_piece_bytes.max(p.len());
                    if *ty == PieceType::Normal {
                        min_score = min_score.min(*score);
                    }
                }
                PieceType::Byte => {
                    if let Some(b) = p.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                        if let Ok(b) = u8::from_str_radix(b, 16) {
                            byte_ids[b as usize] = Some(i as u32);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            source: source.to_string(),
            model: bytes.to_vec(),
            kind,
            unk: id(unk).ok_or_else(|| bad("unk id out of range"))?,
            bos: id(bos),
            eos: id(eos),
            pad: id(pad),
            pieces,
            lookup,
            byte_ids,
            max_piece_bytes,
            min_score: if min_score == f32::MAX {
                0.0
            } else {
                min_score
            },
            byte_fallback,
            charsmap,
            add_dummy_prefix,
            remove_extra_whitespaces: remove_extra,
        })
    }

    fn normalize(&self, text: &str) -> Result<String> {
        let mut s = text.to_string();
        if let Some(map) = &self.charsmap {
            let mut ns = NormalizedString::from(text);
            map.normalize(&mut ns)
                .map_err(|e| DataError::tok(&self.source, e.to_string()))?;
            s = ns.get().to_string();
        }
        if self.remove_extra_whitespaces {
            s = s
                .split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
        if self.add_dummy_prefix && !s.is_empty() {
            s.insert(0, ' ');
        }
        Ok(s.replace(' ', &SPACE.to_string()))
    }

    fn push_piece(&self, piece: &str, id: Option<u32>, out: &mut Vec<u32>) {
        match id {
            Some(id) => out.push(id),
            None if self.byte_fallback => out.extend(
                piece
                    .bytes()
                    .map(|b| self.byte_ids[b as usize].unwrap_or(self.unk)),
            ),
            None => out.push(self.unk),
        }
    }

    fn encode_bpe(&self, text: &str, out: &mut Vec<u32>) {
        // Symbols are byte ranges of `text`, linked as a list; the heap holds candidate merges.
        let mut syms: Vec<(usize, usize)> = text
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        let n = syms.len();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Cand>, syms: &[(usize, usize)], l: usize, r: usize| {
            let piece = &text[syms[l].0..syms[r].1];
            if let Some(&id) = self.lookup.get(piece) {
                heap.push(Cand {
                    score: self.pieces[id as usize].1,
                    left: l,
                    right: r,
                    len: piece.len(),
                });
            }
        };
        for i in 1..n {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(c) = heap.pop() {
            if !alive[c.left] || !alive[c.right] || next[c.left] != c.right {
                continue;
            }
            if syms[c.right].1 - syms[c.left].0 != c.len {
                continue;
            }
            syms[c.left].1 = syms[c.right].1;
            alive[c.right] = false;
            next[c.left] = next[c.right];
            if next[c.left] < n {
                prev[next[c.left]] = c.left as isize;
            }
            if prev[c.left] >= 0 {
                push(&mut heap, &syms, prev[c.left] as usize, c.left);
            }
            if next[c.left] < n {
                push(&mut heap, &syms, c.left, next[c.left]);
            }
        }
        let mut i = if n > 0 { 0 } else { n };
        while i < n {
            let piece = &text[syms[i].0..syms[i].1];
            self.push_piece(piece, self.lookup.get(piece).copied(), out);
            i = next[i];
        }
    }

    fn encode_unigram(&self, text: &str, out: &mut Vec<u32>) {
        let len = text.len();
        // best[e] = (score, begin, piece id or None for unknown) of the best path ending at byte e.
        let mut best: Vec<Option<(f32, usize, Option<u32>)>> = vec![None; len + 1];
        best[0] = Some((0.0, 0, None));
        let max_score = self.pieces.iter().map(|p| p.1).fold(f32::MIN, f32::max);
        for (b, ch) in text.char_indices() {
            let Some((base, _, _)) = best[b] else {
                continue;
            };
            let mut single = false;
            let mut e = b + ch.len_utf8();
            while e <= len && e - b <= self.max_piece_bytes {
                if text.is_char_boundary(e) {
                    if let Some(&id) = self.lookup.get(&text[b..e]) {
                        let (_, score, ty) = &self.pieces[id as usize];
                        if *ty != PieceType::Unused {
                            let s = if *ty == PieceType::UserDefined {
                                (e - b) as f32 * max_score - 0.1
                            } else {
                                *score
                            };
                            single |= e == b + ch.len_utf8();
                            let cand = base + s;
                            if best[e].is_none_or(|(old, _, _)| cand > old) {
                                best[e] = Some((cand, b, Some(id)));
                            }
                        }
                    }
                }
                e += 1;
            }
            if !single {
                let e = b + ch.len_utf8();
                let cand = base + self.min_score - UNK_PENALTY;
                if best[e].is_none_or(|(old, _, _)| cand > old) {
                    best[e] = Some((cand, b, None));
                }
            }
        }
        let mut path = Vec::new();
        let mut e = len;
        while e > 0 {
            let Some((_, b, id)) = best[e] else { break };
            path.push((b, e, id));
            e = b;
        }
        for (b, e, id) in path.into_iter().rev() {
            self.push_piece(&text[b..e], id, out);
        }
    }
}

struct Cand {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl Tokenizer for SentencePieceTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let norm = self.normalize(text)?;
        let mut out = Vec::new();
        match self.kind {
            ModelType::Bpe => self.encode_bpe(&norm, &mut out),
            ModelType::Unigram => self.encode_unigram(&norm, &mut out),
        }
        Ok(out)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let (piece, _, ty) = self.pieces.get(id as usize).ok_or_else(|| {
                DataError::tok(
                    &self.source,
                    format!("id {id} is outside the vocabulary of {}", self.pieces.len()),
                )
            })?;
            match ty {
                PieceType::Byte => {
                    if let Some(b) = (0..256).find(|&b| self.byte_ids[b] == Some(id)) {
                        bytes.push(b as u8);
                    }
                }
                PieceType::Control | PieceType::Unknown => {}
                _ => bytes.extend(piece.replace(SPACE, " ").bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match (self.add_dummy_prefix, text.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_string(),
            _ => text,
        })
    }
    fn vocab_size(&self) -> usize {
        self.pieces.len()
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
        format!("spm:{}", self.source)
    }
    fn model_dir_files(&self) -> Result<Vec<ModelDirFile>> {
        Ok(vec![
            ModelDirFile::new("tokenizer.model", self.model.clone()),
            coil_tokenizer_marker("spm:tokenizer.model"),
        ])
    }
}
