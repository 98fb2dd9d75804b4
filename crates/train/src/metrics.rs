//! Run feedback: `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.
//!
//! The TensorBoard writer emits the TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) of
//! `Event` protos holding scalar summaries, encoded by hand: the only protobuf fields needed are a handful.

use crate::error::{io, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends one JSON object per line.
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
        })
    }
    /// Opens `path` for appending after dropping its entries past `step` (steps a resumed run takes again) and
    /// any line that is not a complete JSON object (cut short by a kill). The shortened file replaces the old one
    /// atomically.
    pub fn open_resumed(path: &Path, step: u64) -> Result<Self> {
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .collect();
            if kept.len() != text.lines().count() || (!text.is_empty() && !text.ends_with('\n')) {
                let tmp = path.with_extension(format!("jsonl.tmp-{}", std::process::id()));
                let mut body = kept.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                std::fs::write(&tmp, body).map_err(io(&tmp))?;
                std::fs::rename(&tmp, path).map_err(io(path))?;
            }
        }
        Self::open(path)
    }

    pub fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }
}

/// Writes `events.out.tfevents.*` files that TensorBoard reads.
pub struct TensorBoardWriter {
    path: PathBuf,
    file: File,
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u32, out: &mut Vec<u8>) {
    varint(((field << 3) | wire) as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// An `Event` with `wall_time`, `step` and either `file_version` or a summary of scalars.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut ev = Vec::new();
    key(1, 1, &mut ev);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut ev);
    varint(step as u64, &mut ev);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut ev);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut val = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut val);
            key(2, 5, &mut val);
            val.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &val, &mut summary);
        }
        bytes_field(5, &summary, &mut ev);
    }
    ev
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl TensorBoardWriter {
    /// Creates a new event file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "coil".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(io(&path))?;
        let mut w = TensorBoardWriter { path, file };
        w.record(&event(now(), 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&buf).map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }

    /// Scalars at `step`, e.g. `[("train/loss", 2.3), ("train/lr", 3e-4)]`.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f32)]) -> Result<()> {
        self.record(&event(now(), step as i64, None, scalars))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_metrics_drop_the_steps_taken_again_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let lines = [
            "{\"step\":1}",
            "{\"step\":2}",
            "{\"step\":3}",
            "{\"step\":4}",
        ];
        std::fs::write(&path, format!("{}\n{{\"step\":5,\"lo", lines.join("\n"))).unwrap();
        let mut w = JsonlWriter::open_resumed(&path, 2).unwrap();
        w.write(&serde_json::json!({"step": 3})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
        // a fresh start keeps nothing past step 0
        JsonlWriter::open_resumed(&path, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn crc_and_varint_known_values() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xAC, 0x02]);
    }

    #[test]
    fn event_file_frames_are_self_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TensorBoardWriter::create(dir.path()).unwrap();
        w.scalars(7, &[("train/loss", 1.5)]).unwrap();
        let data = std::fs::read(w.path()).unwrap();
        let mut off = 0;
        let mut records = 0;
        while off < data.len() {
            let len = u64::from_le_bytes(data[off..off + 8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()),
                masked_crc(&data[off..off + 8])
            );
            let payload = &data[off + 12..off + 12 + len];
            assert_eq!(
                u32::from_le_bytes(data[off + 12 + len..off + 16 + len].try_into().unwrap()),
                masked_crc(payload)
            );
            off += 16 + len;
            records += 1;
        }
        assert_eq!(records, 2);
        // the scalar's tag and value bytes are in the second record
        let s = String::from_utf8_lossy(&data);
        assert!(s.contains("train/loss") && s.contains("brain.Event:2"));
        assert!(data.windows(4).any(|w| w == 1.5f32.to_le_bytes()));
    }
}
