//! Reading checkpoint tensors: HF safetensors (single file or sharded with an index), mamba_ssm
//! `pytorch_model.bin`, or tensors already in memory. All memory-mapped where the format allows.
//!
//! Names are HF checkpoint names; the few other spellings (mamba_ssm's `backbone.embedding`, the `model.`
//! prefix HF uses in memory) are resolved by [`aliases`], the one table of name differences.

use crate::error::{ModelError, Result};
use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Somewhere tensors can be read from by name.
pub trait WeightSource {
    /// Shape of tensor `name`, or `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads tensor `name` (present, per `shape`).
    fn read(&self, name: &str, device: &Device) -> Result<Tensor>;
    /// Reads the `ranges` of axis `dim` of tensor `name`, concatenated (a tensor-parallel rank's slice). This
    /// default reads the whole tensor; memory-mapped safetensors read only the slice's bytes.
    fn read_part(
        &self,
        name: &str,
        dim: usize,
        ranges: &[Range<usize>],
        device: &Device,
    ) -> Result<Tensor> {
        let full = self.read(name, device)?;
        let parts = ranges
            .iter()
            .map(|r| full.narrow(dim, r.start, r.len()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, dim)?)
    }
    /// The file (or description) tensor `name` would come from, for messages.
    fn location(&self, name: &str) -> String;
}

/// Other spellings of an HF checkpoint name, tried in order after the name itself.
pub fn aliases(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rest) = name.strip_prefix("backbone.embeddings.") {
        out.push(format!("backbone.embedding.{rest}")); // mamba_ssm
    }
    if let Some(rest) = name.strip_prefix("backbone.") {
        out.push(format!("model.{rest}")); // HF in-memory prefix
    }
    out
}

/// Safetensors files, one or many (`model.safetensors.index.json`), memory-mapped.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
}

impl SafetensorsFiles {
    /// The file that holds tensor `name`, and its mapping.
    fn holding(&self, name: &str) -> Result<&(PathBuf, MmapedSafetensors)> {
        let i = *self
            .routing
            .get(name)
            .ok_or_else(|| ModelError::Invalid(format!("no tensor {name}")))?;
        Ok(&self.files[i])
    }

    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut routing = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            // SAFETY: the file is mapped read-only; Coil never writes to a file it has mapped, and a concurrent
            // external truncation is outside what any mmap-based loader can guard against.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| ModelError::Tensor {
                context: format!("{}: not a valid safetensors file", p.display()),
                error: e,
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((p.clone(), st));
        }
        Ok(SafetensorsFiles { files, routing })
    }

    /// The shards listed in an HF `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|error| ModelError::Io {
            path: index.into(),
            error,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(index, format!("malformed JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::config(index, "missing object `weight_map`"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        for (name, file) in map {
            let f = file.as_str().ok_or_else(|| {
                ModelError::config(index, format!("weight_map[{name:?}] is not a file name"))
            })?;
            let p = dir.join(f);
            if !shards.contains(&p) {
                shards.push(p);
            }
        }
        for p in &shards {
            if !p.is_file() {
                return Err(ModelError::config(
                    index,
                    format!("shard {} listed in weight_map does not exist", p.display()),
                ));
            }
        }
        Self::open(&shards)
    }
}

impl WeightSource for SafetensorsFiles {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (_, st) = &self.files[*self.routing.get(name)?];
        st.get(name).ok().map(|v| v.shape().to_vec())
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (path, st) = self.holding(name)?;
        st.load(name, device).map_err(|e| ModelError::Tensor {
            context: format!("{}: reading `{name}`", path.display()),
            error: e,
        })
    }
    fn read_part(
        &self,
        name: &str,
        dim: usize,
        ranges: &[Range<usize>],
        device: &Device,
    ) -> Result<Tensor> {
        let (path, st) = self.holding(name)?;
        let ctx = |e: candle_core::Error| ModelError::Tensor {
            context: format!("{}: reading part of `{name}`", path.display()),
            error: e,
        };
        let view = st.get(name).map_err(ctx)?;
        let dtype = DType::try_from(view.dtype()).map_err(ctx)?;
        let shape = view.shape().to_vec();
        let data = view.data();
        let el = dtype.size_in_bytes();
        // Bytes of one index of `dim` within one index of the axes before it, and how many such blocks.
        let inner: usize = shape.iter().skip(dim + 1).product::<usize>() * el;
        let outer: usize = shape.iter().take(dim).product();
        let along = shape.get(dim).copied().unwrap_or(0);
        if ranges.iter().any(|r| r.end > along) || data.len() != outer * along * inner {
            return Err(ModelError::Invalid(format!(
                "{}: `{name}` of shape {shape:?} has no part {ranges:?} along axis {dim}",
                path.display()
            )));
        }
        let kept: usize = ranges.iter().map(|r| r.len()).sum();
        let mut bytes = Vec::with_capacity(outer * kept * inner);
        for o in 0..outer {
            let block = &data[o * along * inner..(o + 1) * along * inner];
            for r in ranges {
                bytes.extend_from_slice(&block[r.start * inner..r.end * inner]);
            }
        }
        let mut out_shape = shape;
        out_shape[dim] = kept;
        Tensor::from_raw_buffer(&bytes, dtype, &out_shape, device).map_err(ctx)
    }
    fn location(&self, name: &str) -> String {
        match self.routing.get(name) {
            Some(&i) => self.files[i].0.display().to_string(),
            None if self.files.len() == 1 => self.files[0].0.display().to_string(),
            None => format!(
                "{} shards in {}",
                self.files.len(),
                self.files
                    .first()
                    .and_then(|f| f.0.parent())
                    .unwrap_or(Path::new("."))
                    .display()
            ),
        }
    }
}

/// A PyTorch `pytorch_model.bin` state dict (the state-spaces Mamba2 releases).
pub struct PthFile {
    path: PathBuf,
    pth: PthTensors,
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let pth = PthTensors::new(path, None).map_err(|e| ModelError::Tensor {
            context: format!("{}: not a readable PyTorch checkpoint", path.display()),
            error: e,
        })?;
        Ok(PthFile {
            path: path.into(),
            pth,
        })
    }
}

impl WeightSource for PthFile {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.pth
            .tensor_infos()
            .get(name)
            .map(|i| i.layout.shape().dims().to_vec())
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let ctx = || format!("{}: reading `{name}`", self.path.display());
        let t = self.pth.get(name).map_err(|e| ModelError::Tensor {
            context: ctx(),
            error: e,
        })?;
        let t = t.ok_or_else(|| ModelError::Invalid(ctx()))?;
        Ok(t.to_device(device)?)
    }
    fn location(&self, _name: &str) -> String {
        self.path.display().to_string()
    }
}

impl WeightSource for BTreeMap<String, Tensor> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).map(|t| t.dims().to_vec())
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self
            .get(name)
            .ok_or_else(|| ModelError::Invalid(format!("no tensor {name}")))?;
        Ok(t.to_device(device)?)
    }
    fn location(&self, _name: &str) -> String {
        "in-memory parameters".into()
    }
}

/// Finds the weights in a model directory: `model.safetensors.index.json`, `model.safetensors`, or
/// `pytorch_model.bin`.
pub fn open_dir(dir: &Path) -> Result<Box<dyn WeightSource>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok(Box::new(SafetensorsFiles::open_index(&index)?));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(Box::new(SafetensorsFiles::open(&[single])?));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(Box::new(PthFile::open(&bin)?));
    }
    Err(ModelError::config(dir, "no weights found: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"))
}

/// Reads named tensors with shape checks, converting to one device and dtype.
pub struct Loader<'a> {
    pub src: &'a dyn WeightSource,
    pub device: Device,
    pub dtype: DType,
}

impl Loader<'_> {
    /// Tensor `name` (or an alias) with exactly `shape` and only finite values; errors name the tensor, the file
    /// and both shapes.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let actual = self.find(name, shape)?;
        let t = self.src.read(&actual, &self.device)?;
        // Checked as stored: a value that overflows only in a narrower load dtype is not the file's fault.
        if !crate::lm::all_finite(&t)? {
            return Err(ModelError::NonFinite {
                name: actual.clone(),
                file: self.src.location(&actual),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }

    /// The name tensor `name` has in the source (itself or an alias), once its shape is checked to be `shape`;
    /// reads nothing.
    pub fn find(&self, name: &str, shape: &[usize]) -> Result<String> {
        let found = std::iter::once(name.to_string())
            .chain(aliases(name))
            .find_map(|n| self.src.shape(&n).map(|s| (n, s)));
        let Some((actual, got)) = found else {
            return Err(ModelError::MissingTensor {
                name: name.into(),
                file: self.src.location(name),
                expected: shape.to_vec(),
            });
        };
        if got != shape {
            return Err(ModelError::ShapeMismatch {
                name: actual.clone(),
                file: self.src.location(&actual),
                got,
                expected: shape.to_vec(),
            });
        }
        Ok(actual)
    }
}
