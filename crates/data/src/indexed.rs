//! Megatron indexed datasets (`PREFIX.bin` + `PREFIX.idx`, "MMIDIDX" version 1): a memory-mapped reader
//! that validates every header field and pointer before handing out tokens, and a writer whose output is
//! byte-identical to megatron-core's `IndexedDatasetBuilder` for the same tokens.
//!
//! `.idx` layout (little-endian): 9-byte magic `MMIDIDX\0\0`, u64 version (1), u8 dtype code, u64 sequence
//! count N, u64 document-index length D, then i32 lengths[N], i64 byte pointers[N], i64 document
//! indices[D] (`[0, ..., N]`), and for multimodal sets only, i8 modes[N]. `.bin` is the raw tokens.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::atomic::AtomicFile;
use crate::error::{DataError, Result};

/// The 9 magic bytes that open every `.idx` file.
pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// The only index version Megatron writes.
pub const VERSION: u64 = 1;
const HEADER_LEN: u64 = 9 + 8 + 1 + 8 + 8;

/// Element type of the `.bin` file, with Megatron's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    U8 = 1,
    I8 = 2,
    I16 = 3,
    I32 = 4,
    I64 = 5,
    F64 = 6,
    F32 = 7,
    U16 = 8,
}

impl DType {
    /// The dtype for a code byte, if valid.
    pub fn from_code(code: u8) -> Option<DType> {
        Some(match code {
            1 => DType::U8,
            2 => DType::I8,
            3 => DType::I16,
            4 => DType::I32,
            5 => DType::I64,
            6 => DType::F64,
            7 => DType::F32,
            8 => DType::U16,
            _ => return None,
        })
    }
    /// Megatron's code byte.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }
    /// numpy's name for it ("uint16", ...), as `coil data inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::U16 => "uint16",
        }
    }
    /// The dtype Megatron's preprocessing picks for a vocabulary: uint16 below 65500 ids, else int32.
    pub fn optimal_for_vocab(vocab_size: usize) -> DType {
        if vocab_size < 65500 {
            DType::U16
        } else {
            DType::I32
        }
    }
    fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

/// `PREFIX` with any `.bin`/`.idx` extension removed, plus the two file paths.
pub fn dataset_paths(prefix: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let s = prefix.to_string_lossy();
    let base = s
        .strip_suffix(".idx")
        .or_else(|| s.strip_suffix(".bin"))
        .unwrap_or(&s)
        .to_string();
    (
        PathBuf::from(&base),
        PathBuf::from(format!("{base}.bin")),
        PathBuf::from(format!("{base}.idx")),
    )
}

/// A read-only, memory-mapped Megatron dataset. The index arrays are decoded and validated on open; the
/// token bytes stay in the page cache behind the `.bin` map.
pub struct IndexedDataset {
    prefix: PathBuf,
    bin_path: PathBuf,
    dtype: DType,
    sequence_lengths: Vec<i32>,
    sequence_pointers: Vec<i64>,
    document_indices: Vec<i64>,
    sequence_modes: Option<Vec<i8>>,
    bin: Option<Mmap>,
}

impl std::fmt::Debug for IndexedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedDataset")
            .field("prefix", &self.prefix)
            .field("dtype", &self.dtype)
            .field("num_sequences", &self.sequence_lengths.len())
            .field("num_documents", &self.num_documents())
            .finish()
    }
}

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let len = self.bytes.len() as u64;
        let end = self.pos.checked_add(n).filter(|&e| e <= len);
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos as usize..end as usize];
                self.pos = end;
                Ok(out)
            }
            None => Err(DataError::Truncated {
                path: self.path.to_path_buf(),
                what,
                start: self.pos,
                end: self.pos.saturating_add(n),
                len,
            }),
        }
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn array<const W: usize, T>(
        &mut self,
        count: u64,
        what: &'static str,
        f: fn([u8; W]) -> T,
    ) -> Result<Vec<T>> {
        let n = count.checked_mul(W as u64).ok_or_else(|| {
            DataError::corrupt(self.path, format!("{what}: count {count} overflows"))
        })?;
        let b = self.take(n, what)?;
        Ok(b.chunks_exact(W)
            .map(|c| {
                let mut a = [0u8; W];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
}

fn map_file(path: &Path) -> Result<Option<Mmap>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only; like Megatron we assume nobody truncates the file while it is open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    Ok(Some(map))
}

impl IndexedDataset {
    /// Open `PREFIX.idx` and `PREFIX.bin` (a trailing `.bin`/`.idx` on `prefix` is accepted).
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self> {
        let (prefix, bin_path, idx_path) = dataset_paths(prefix.as_ref());
        let idx_map = map_file(&idx_path)?;
        let idx: &[u8] = idx_map.as_deref().unwrap_or(&[]);
        let mut c = Cursor {
            path: &idx_path,
            bytes: idx,
            pos: 0,
        };
        let magic = c.take(9, "magic").map_err(|_| DataError::BadMagic {
            path: idx_path.clone(),
            found: idx[..idx.len().min(9)].to_vec(),
        })?;
        if magic != MAGIC {
            return Err(DataError::BadMagic {
                path: idx_path.clone(),
                found: magic.to_vec(),
            });
        }
        let version = c.u64("version")?;
        if version != VERSION {
            return Err(DataError::BadVersion {
                path: idx_path.clone(),
                version,
            });
        }
        let code = c.take(1, "dtype code")?[0];
        let dtype = DType::from_code(code).ok_or(DataError::UnknownDtype {
            path: idx_path.clone(),
            code,
        })?;
        let n = c.u64("sequence count")?;
        let d = c.u64("document count")?;
        let sequence_lengths = c.array(n, "sequence lengths", i32::from_le_bytes)?;
        let sequence_pointers = c.array(n, "sequence pointers", i64::from_le_bytes)?;
        let document_indices = c.array(d, "document indices", i64::from_le_bytes)?;
        let rest = idx.len() as u64 - c.pos;
        let sequence_modes = if rest == 0 {
            None
        } else if rest == n {
            Some(c.array(n, "sequence modes", |b: [u8; 1]| b[0] as i8)?)
        } else {
            return Err(DataError::corrupt(
                &idx_path,
                format!("{rest} unexpected bytes after the document indices (expected 0 or {n})"),
            ));
        };
        let bin = map_file(&bin_path)?;
        let ds = IndexedDataset {
            prefix,
            bin_path,
            dtype,
            sequence_lengths,
            sequence_pointers,
            document_indices,
            sequence_modes,
            bin,
        };
        ds.validate(&idx_path)?;
        Ok(ds)
    }

    fn validate(&self, idx_path: &Path) -> Result<()> {
        let bin_len = self.bin.as_ref().map_or(0, |m| m.len() as u64);
        let size = self.dtype.size() as u64;
        for (i, (&len, &ptr)) in self
            .sequence_lengths
            .iter()
            .zip(&self.sequence_pointers)
            .enumerate()
        {
            if len < 0 || ptr < 0 {
                return Err(DataError::corrupt(
                    idx_path,
                    format!("sequence {i} has negative length {len} or pointer {ptr}"),
                ));
            }
            let end = ptr as u64 + len as u64 * size;
            if end > bin_len {
                return Err(DataError::PointerPastEnd {
                    path: self.bin_path.clone(),
                    index: i,
                    start: ptr as u64,
                    end,
                    len: bin_len,
                });
            }
        }
        let n = self.sequence_lengths.len() as i64;
        let di = &self.document_indices;
        if di.first().is_some_and(|&x| x != 0) || di.windows(2).any(|w| w[1] < w[0]) {
            return Err(DataError::corrupt(
                idx_path,
                "document indices must start at 0 and never decrease",
            ));
        }
        if di.last().is_some_and(|&x| x != n) {
            return Err(DataError::corrupt(
                idx_path,
                format!(
                    "last document index is {} but there are {n} sequences",
                    di.last().copied().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// The path prefix (without extension).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of sequences (Megatron's `len(dataset)`; GPTDataset calls these "documents").
    pub fn len(&self) -> usize {
        self.sequence_lengths.len()
    }
    /// True when there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.sequence_lengths.is_empty()
    }
    /// Number of documents (document index length minus one).
    pub fn num_documents(&self) -> usize {
        self.document_indices.len().saturating_sub(1)
    }
    /// Total tokens over all sequences.
    pub fn num_tokens(&self) -> u64 {
        self.sequence_lengths.iter().map(|&l| l as u64).sum()
    }
    /// Token count of each sequence.
    pub fn sequence_lengths(&self) -> &[i32] {
        &self.sequence_lengths
    }
    /// Byte offset of each sequence in `.bin`.
    pub fn sequence_pointers(&self) -> &[i64] {
        &self.sequence_pointers
    }
    /// `[0, ..., N]`: the sequence index where each document ends.
    pub fn document_indices(&self) -> &[i64] {
        &self.document_indices
    }
    /// Multimodal sequence modes, when present.
    pub fn sequence_modes(&self) -> Option<&[i8]> {
        self.sequence_modes.as_deref()
    }

    /// Raw bytes of tokens `offset..offset+length` of sequence `i` (`length = None`: to the end).
    pub fn raw(&self, i: usize, offset: usize, length: Option<usize>) -> Result<&[u8]> {
        let seq_len = *self.sequence_lengths.get(i).ok_or(DataError::OutOfRange {
            index: i,
            len: self.len(),
        })? as usize;
        let length = length.unwrap_or(seq_len.saturating_sub(offset));
        if offset + length > seq_len {
            return Err(DataError::Config(format!(
                "{}: tokens {offset}..{} requested from sequence {i} of length {seq_len}",
                self.prefix.display(),
                offset + length
            )));
        }
        let size = self.dtype.size();
        let start = self.sequence_pointers[i] as usize + offset * size;
        let bytes: &[u8] = self.bin.as_deref().unwrap_or(&[]);
        Ok(&bytes[start..start + length * size])
    }

    /// Append tokens `offset..offset+length` of sequence `i` to `out` as i64 (floats are truncated).
    pub fn read_into(
        &self,
        i: usize,
        offset: usize,
        length: Option<usize>,
        out: &mut Vec<i64>,
    ) -> Result<()> {
        let raw = self.raw(i, offset, length)?;
        decode_into(self.dtype, raw, out);
        Ok(())
    }

    /// Tokens of sequence `i` as i64.
    pub fn get(&self, i: usize) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        self.read_into(i, 0, None, &mut out)?;
        Ok(out)
    }

    /// Values of sequence `i` as f64 (for float datasets).
    pub fn get_f64(&self, i: usize) -> Result<Vec<f64>> {
        let raw = self.raw(i, 0, None)?;
        Ok(match self.dtype {
            DType::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
            _ => self.get(i)?.into_iter().map(|x| x as f64).collect(),
        })
    }
}

fn decode_into(dtype: DType, raw: &[u8], out: &mut Vec<i64>) {
    out.reserve(raw.len() / dtype.size());
    match dtype {
        DType::U8 => out.extend(raw.iter().map(|&b| b as i64)),
        DType::I8 => out.extend(raw.iter().map(|&b| b as i8 as i64)),
        DType::U16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64),
        ),
        DType::I16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64),
        ),
        DType::I32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
        ),
        DType::I64 => out.extend(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())),
        ),
        DType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
        ),
        DType::F64 => out.extend(
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as i64),
        ),
    }
}

/// Writes `PREFIX.bin`/`PREFIX.idx` exactly as megatron-core's `IndexedDatasetBuilder` does. Both files
/// appear only on [`IndexedDatasetWriter::finalize`]; dropping the writer early leaves nothing behind.
pub struct IndexedDatasetWriter {
    bin: AtomicFile,
    idx_path: PathBuf,
    dtype: DType,
    sequence_lengths: Vec<i32>,
    document_indices: Vec<i64>,
    buf: Vec<u8>,
}

impl IndexedDatasetWriter {
    /// Start a dataset at `prefix` with element type `dtype`.
    /// The prefix must end in a file name (`out/corpus`, not `out/`, which would write hidden `out/.bin`).
    pub fn create(prefix: impl AsRef<Path>, dtype: DType) -> Result<Self> {
        let prefix = prefix.as_ref();
        let (base, bin_path, idx_path) = dataset_paths(prefix);
        let text = base.to_string_lossy();
        let named = !text.is_empty()
            && !text.ends_with(['/', std::path::MAIN_SEPARATOR])
            && matches!(
                base.components().next_back(),
                Some(std::path::Component::Normal(_))
            );
        if !named {
            return Err(DataError::file(
                prefix,
                "the output prefix needs a file name after its directory, e.g. out/corpus (which writes \
                 out/corpus.bin and out/corpus.idx)",
            ));
        }
        Ok(Self {
            bin: AtomicFile::create(&bin_path)?,
            idx_path,
            dtype,
            sequence_lengths: Vec::new(),
            document_indices: vec![0],
            buf: Vec::new(),
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Append one sequence of integer tokens. Fails if a value does not fit the dtype.
    pub fn add_item(&mut self, tokens: &[i64]) -> Result<()> {
        self.buf.clear();
        let d = self.dtype;
        for &t in tokens {
            let ok = match d {
                DType::U8 => u8::try_from(t).map(|v| self.buf.push(v)).is_ok(),
                DType::I8 => i8::try_from(t)
                    .map(|v| self.buf.extend(v.to_le_bytes()))
                    .is_ok(),
                DType::U16 => u16::try_from(t)
                    .map(|v| self.buf.extend(v.to_le_bytes()))
                    .is_ok(),
                DType::I16 => i16::try_from(t)
                    .map(|v| self.buf.extend(v.to_le_bytes()))
                    .is_ok(),
                DType::I32 => i32::try_from(t)
                    .map(|v| self.buf.extend(v.to_le_bytes()))
                    .is_ok(),
                DType::I64 => {
                    self.buf.extend(t.to_le_bytes());
                    true
                }
                DType::F32 => {
                    self.buf.extend((t as f32).to_le_bytes());
                    true
                }
                DType::F64 => {
                    self.buf.extend((t as f64).to_le_bytes());
                    true
                }
            };
            if !ok {
                return Err(DataError::Config(format!(
                    "token {t} does not fit the {} dataset {} (a vocabulary of 65500+ ids needs int32)",
                    d.name(),
                    self.idx_path.display()
                )));
            }
        }
        self.push_raw(tokens.len())
    }

    /// Append one sequence of floating-point values (float datasets only).
    pub fn add_item_f64(&mut self, values: &[f64]) -> Result<()> {
        if !self.dtype.is_float() {
            return self.add_item(&values.iter().map(|&v| v as i64).collect::<Vec<_>>());
        }
        self.buf.clear();
        for &v in values {
            match self.dtype {
                DType::F32 => self.buf.extend((v as f32).to_le_bytes()),
                _ => self.buf.extend(v.to_le_bytes()),
            }
        }
        self.push_raw(values.len())
    }

    fn push_raw(&mut self, count: usize) -> Result<()> {
        let len = i32::try_from(count).map_err(|_| {
            DataError::Config(format!("a sequence of {count} tokens exceeds i32 lengths"))
        })?;
        self.bin.write_all(&self.buf)?;
        self.sequence_lengths.push(len);
        Ok(())
    }

    /// Close the current document (after one or more `add_item`s).
    pub fn end_document(&mut self) {
        self.document_indices
            .push(self.sequence_lengths.len() as i64);
    }

    /// Append a whole document given as flat tokens and per-sequence lengths.
    pub fn add_document(&mut self, tokens: &[i64], lengths: &[usize]) -> Result<()> {
        let total: usize = lengths.iter().sum();
        if total != tokens.len() {
            return Err(DataError::Config(format!(
                "add_document: lengths sum to {total} but {} tokens were given",
                tokens.len()
            )));
        }
        let mut at = 0;
        for &l in lengths {
            self.add_item(&tokens[at..at + l])?;
            at += l;
        }
        self.end_document();
        Ok(())
    }

    /// Number of sequences written so far.
    pub fn num_sequences(&self) -> usize {
        self.sequence_lengths.len()
    }

    /// Write the `.idx` and move both files into place.
    pub fn finalize(self) -> Result<()> {
        let n = self.sequence_lengths.len();
        let mut idx =
            Vec::with_capacity(HEADER_LEN as usize + n * 12 + self.document_indices.len() * 8);
        idx.extend_from_slice(MAGIC);
        idx.extend(VERSION.to_le_bytes());
        idx.push(self.dtype.code());
        idx.extend((n as u64).to_le_bytes());
        idx.extend((self.document_indices.len() as u64).to_le_bytes());
        for &l in &self.sequence_lengths {
            idx.extend(l.to_le_bytes());
        }
        let size = self.dtype.size() as i64;
        let mut ptr = 0i64;
        for &l in &self.sequence_lengths {
            idx.extend(ptr.to_le_bytes());
            ptr += l as i64 * size;
        }
        for &d in &self.document_indices {
            idx.extend(d.to_le_bytes());
        }
        let mut idx_file = AtomicFile::create(&self.idx_path)?;
        idx_file.write_all(&idx)?;
        self.bin.commit()?;
        idx_file.commit()
    }
}
