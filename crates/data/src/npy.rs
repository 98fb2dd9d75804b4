//! Minimal `.npy` (format 1.0) files for the cached GPT indices, readable by `numpy.load`: little-endian
//! `<i4`, `<i8` and `<u4` arrays of one or two dimensions, C order.

use std::path::Path;

use crate::atomic::write_file;
use crate::error::{DataError, Result};

/// Save `data` with `shape` as dtype `descr` (one of `<i4`, `<i8`, `<u4`); values must fit.
pub fn save(path: &Path, descr: &str, shape: &[usize], data: &[i64]) -> Result<()> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let width = descr_width(path, descr)?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * width);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend((header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in data {
        match descr {
            "<i4" => out.extend((v as i32).to_le_bytes()),
            "<u4" => out.extend((v as u32).to_le_bytes()),
            _ => out.extend(v.to_le_bytes()),
        }
    }
    write_file(path, &out)
}

fn descr_width(path: &Path, descr: &str) -> Result<usize> {
    match descr {
        "<i4" | "<u4" => Ok(4),
        "<i8" => Ok(8),
        other => Err(DataError::file(
            path,
            format!("unsupported npy dtype {other}"),
        )),
    }
}

/// Load an array saved by [`save`] (or numpy with the same dtypes), returning `(shape, values)`.
pub fn load(path: &Path) -> Result<(Vec<usize>, Vec<i64>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |d: &str| DataError::file(path, format!("not a supported .npy file: {d}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let descr = ["<i4", "<i8", "<u4"]
        .into_iter()
        .find(|d| header.contains(&format!("'descr': '{d}'")))
        .ok_or_else(|| bad("dtype"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("fortran order"));
    }
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("shape"))?;
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("shape")))
        .collect::<Result<_>>()?;
    let count: usize = shape.iter().product();
    let width = descr_width(path, descr)?;
    let body = &bytes[10 + hlen..];
    if body.len() != count * width {
        return Err(bad("data length does not match shape"));
    }
    let data = body
        .chunks_exact(width)
        .map(|c| match descr {
            "<i4" => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            "<u4" => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            _ => i64::from_le_bytes(c.try_into().unwrap_or_default()),
        })
        .collect();
    Ok((shape, data))
}
