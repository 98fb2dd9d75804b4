//! `coil preprocess` and `coil data ...`: Megatron corpora from the command line. The library work lives
//! in `coil-data`; this module parses flags and prints.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use coil_data::{load_tokenizer, preprocess_jsonl_with_bar, IndexedDataset, PreprocessConfig};

/// Tokenize a JSONL corpus into a Megatron `.bin/.idx` pair.
#[derive(Args, Debug)]
pub struct PreprocessArgs {
    /// Input JSONL file, one document per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSON field holding the text (a string, or a list of strings = one sequence each).
    #[arg(long, default_value = "text")]
    pub json_key: String,
    /// Tokenizer: `gpt2` (embedded), a tokenizer.json, a NeMo tiktoken vocab .json, or a SentencePiece .model.
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: String,
    /// Output path prefix: writes exactly PREFIX.bin and PREFIX.idx.
    #[arg(long)]
    pub output_prefix: PathBuf,
    /// Append the tokenizer's end-of-document token to every document.
    #[arg(long)]
    pub append_eod: bool,
    /// Tokenizer threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Describe a Megatron indexed dataset.
    Inspect {
        /// Path prefix of the dataset (PREFIX.bin / PREFIX.idx).
        prefix: PathBuf,
        /// Print exactly one JSON object: dtype, num_sequences, num_documents, num_tokens,
        /// sequence_lengths, document_indices (and sequences with --dump-tokens).
        #[arg(long)]
        json: bool,
        /// Also print the token ids of the first N sequences.
        #[arg(long, value_name = "N")]
        dump_tokens: Option<usize>,
    },
    /// Write the embedded Shakespeare demo corpus as a Megatron dataset (or as JSONL with --jsonl).
    Shakespeare {
        /// Output prefix of the tokenized dataset (PREFIX.bin / PREFIX.idx).
        #[arg(long, required_unless_present = "jsonl")]
        output_prefix: Option<PathBuf>,
        /// Tokenizer (see `coil preprocess --help`).
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
        /// Write the documents as JSONL ({"text": ...} per line) to this file instead.
        #[arg(long)]
        jsonl: Option<PathBuf>,
    },
}

pub fn run_preprocess(args: PreprocessArgs) -> anyhow::Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = PreprocessConfig {
        input: args.input,
        json_key: args.json_key,
        output_prefix: args.output_prefix,
        append_eod: args.append_eod,
        workers,
        dtype: None,
    };
    let stats = preprocess_jsonl_with_bar(&config, tokenizer.as_ref())?;
    eprintln!(
        "wrote {p}.bin and {p}.idx: {} documents, {} tokens in {:.2}s ({:.0} tokens/s, tokenizer {})",
        stats.documents,
        stats.tokens,
        stats.seconds,
        stats.tokens_per_second(),
        tokenizer.describe(),
        p = config.output_prefix.display(),
    );
    Ok(())
}

pub fn run_data(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect {
            prefix,
            json,
            dump_tokens,
        } => {
            let mut out = std::io::stdout().lock();
            match inspect(&mut out, &prefix, json, dump_tokens) {
                // A closed pipe (`coil data inspect ... | head`) is not an error.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
                {
                    Ok(())
                }
                other => other,
            }
        }
        DataCommand::Shakespeare {
            output_prefix,
            tokenizer,
            jsonl,
        } => shakespeare(output_prefix, &tokenizer, jsonl),
    }
}

fn shakespeare(
    output_prefix: Option<PathBuf>,
    tokenizer: &str,
    jsonl: Option<PathBuf>,
) -> anyhow::Result<()> {
    let docs = coil_data::corpus::shakespeare_documents(2000);
    if let Some(path) = jsonl {
        let mut body = String::new();
        for d in &docs {
            body.push_str(&serde_json::json!({ "text": d }).to_string());
            body.push('\n');
        }
        coil_data::atomic::write_file(&path, body.as_bytes())?;
        eprintln!("wrote {} documents to {}", docs.len(), path.display());
        return Ok(());
    }
    let prefix = output_prefix.context("--output-prefix is required without --jsonl")?;
    let tok = load_tokenizer(tokenizer)?;
    let prefix = coil_data::corpus::prepare_shakespeare(&prefix, tok.as_ref())?;
    let ds = IndexedDataset::open(&prefix)?;
    eprintln!(
        "{}: {} documents, {} tokens ({}, {})",
        prefix.display(),
        ds.num_documents(),
        ds.num_tokens(),
        ds.dtype().name(),
        tok.describe()
    );
    Ok(())
}

fn inspect(
    out: &mut impl Write,
    prefix: &std::path::Path,
    json: bool,
    dump_tokens: Option<usize>,
) -> anyhow::Result<()> {
    let ds = IndexedDataset::open(prefix)?;
    let sequences = match dump_tokens {
        Some(n) => Some(
            (0..n.min(ds.len()))
                .map(|i| ds.get(i))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading tokens of {}", prefix.display()))?,
        ),
        None => None,
    };
    if json {
        let mut obj = serde_json::json!({
            "dtype": ds.dtype().name(),
            "num_sequences": ds.len(),
            "num_documents": ds.num_documents(),
            "num_tokens": ds.num_tokens(),
            "sequence_lengths": ds.sequence_lengths(),
            "document_indices": ds.document_indices(),
        });
        if let Some(seqs) = sequences {
            obj["sequences"] = serde_json::json!(seqs);
        }
        writeln!(out, "{obj}")?;
        return Ok(());
    }
    let lengths = ds.sequence_lengths();
    let (min, max) = (
        lengths.iter().min().copied().unwrap_or(0),
        lengths.iter().max().copied().unwrap_or(0),
    );
    writeln!(out, "{}", ds.prefix().display())?;
    writeln!(out, "  dtype          {}", ds.dtype().name())?;
    writeln!(out, "  sequences      {}", ds.len())?;
    writeln!(out, "  documents      {}", ds.num_documents())?;
    writeln!(out, "  tokens         {}", ds.num_tokens())?;
    writeln!(
        out,
        "  lengths        min {min}, max {max}, mean {:.1}",
        ds.num_tokens() as f64 / ds.len().max(1) as f64
    )?;
    if let Some(seqs) = sequences {
        for (i, s) in seqs.iter().enumerate() {
            writeln!(out, "  [{i}] {s:?}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coil_data::{DType, IndexedDatasetWriter};

    #[test]
    fn inspect_json_is_one_object_with_the_contract_keys() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("tiny");
        let mut w = IndexedDatasetWriter::create(&prefix, DType::U16).unwrap();
        w.add_document(&[5, 6, 7, 8, 9], &[2, 3]).unwrap();
        w.add_item(&[1]).unwrap();
        w.end_document();
        w.finalize().unwrap();
        let mut out = Vec::new();
        inspect(&mut out, &prefix, true, Some(2)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "document_indices",
                "dtype",
                "num_documents",
                "num_sequences",
                "num_tokens",
                "sequence_lengths",
                "sequences"
            ]
        );
        assert_eq!(v["dtype"], "uint16");
        assert_eq!(v["num_sequences"], 3);
        assert_eq!(v["num_documents"], 2);
        assert_eq!(v["num_tokens"], 6);
        assert_eq!(v["sequence_lengths"], serde_json::json!([2, 3, 1]));
        assert_eq!(v["document_indices"], serde_json::json!([0, 2, 3]));
        assert_eq!(v["sequences"], serde_json::json!([[5, 6], [7, 8, 9]]));
        let mut out = Vec::new();
        inspect(&mut out, &prefix, true, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("sequences").is_none());
    }
}
