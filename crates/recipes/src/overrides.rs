//! Dotted `key=value` overrides (`trainer.max_steps=200`, `data.paths=[a,b]`, `model.num_layers=4`) and the
//! recipe's TOML form.
//!
//! An override walks the recipe's JSON tree: every segment must name an existing key (else the error lists the
//! valid keys at that level), and the value is read as a TOML value and checked against the type of the value
//! it replaces (integer, float, bool, string, list). Bare words are strings, `[a, b]` of bare words is a list of
//! strings. After all overrides the tree is deserialized back into [`Recipe`] with `deny_unknown_fields`.
//!
//! Special keys:
//! - `model.num_layers=N` takes the first N layers of the pattern, or repeats the pattern from its start to
//!   reach N (so `M-M*` with N=6 becomes `M-M*M-`);
//! - `data.kind=K` switches the data variant and resets its other keys to that variant's defaults (naming the
//!   current kind changes nothing);
//! - NeMo spellings map onto Coil's: `data.global_batch_size`, `data.micro_batch_size`, `data.seq_length`
//!   (trainer.*), `trainer.devices`, `trainer.num_nodes` (parallel.*), `resume_path`, `dir`, `name`.
//!
//! `model.vocab_size` follows the tokenizer (`tokenizer.vocab_size` padded to `make_vocab_size_divisible_by` x
//! TP) unless it is overridden itself.

use crate::error::{RecipeError, Result};
use crate::recipe::Recipe;
use coil_model::config::pad_vocab;
use serde_json::{Map, Value};

/// NeMo-style spellings accepted as aliases.
const ALIASES: [(&str, &str); 10] = [
    ("data.global_batch_size", "trainer.global_batch_size"),
    ("data.micro_batch_size", "trainer.micro_batch_size"),
    ("data.seq_length", "trainer.seq_length"),
    ("trainer.devices", "parallel.num_gpus_per_node"),
    ("trainer.num_nodes", "parallel.num_nodes"),
    ("resume_path", "checkpoint.resume_path"),
    ("resume.restore_config.path", "checkpoint.resume_path"),
    ("dir", "run.dir"),
    ("name", "run.name"),
    ("optim.config.lr", "optim.max_lr"),
];

/// Splits `key=value` (the first `=`).
pub fn parse_assignment(arg: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            let k = k.trim();
            let k = ALIASES
                .iter()
                .find(|(alias, _)| *alias == k)
                .map_or(k, |(_, real)| *real);
            Ok((k.to_string(), v.trim().to_string()))
        }
        _ => Err(RecipeError::Syntax { arg: arg.into() }),
    }
}

/// `recipe` with `args` applied in order (`data.kind` first).
pub fn apply_overrides(recipe: &Recipe, args: &[String]) -> Result<Recipe> {
    let mut pairs = args
        .iter()
        .map(|a| parse_assignment(a))
        .collect::<Result<Vec<_>>>()?;
    pairs.sort_by_key(|(k, _)| k != "data.kind");
    let mut tree = serde_json::to_value(recipe).map_err(|e| RecipeError::Invalid(e.to_string()))?;
    let mut vocab_set = false;
    let mut vocab_inputs_changed = false;
    for (key, raw) in &pairs {
        match key.as_str() {
            "model.num_layers" => set_num_layers(&mut tree, raw)?,
            // The current kind keeps its settings; another kind starts from its defaults.
            "data.kind" => {
                let kind = unquote(raw);
                if tree["data"]["kind"].as_str() != Some(kind.as_str()) {
                    tree["data"] = data_defaults(&kind);
                }
            }
            _ => set_key(&mut tree, key, raw)?,
        }
        vocab_set |= key == "model.vocab_size";
        vocab_inputs_changed |= matches!(
            key.as_str(),
            "tokenizer.vocab_size"
                | "tokenizer.make_vocab_size_divisible_by"
                | "parallel.tensor_parallelism"
        );
    }
    let mut out: Recipe = serde_json::from_value(tree)
        .map_err(|e| RecipeError::Invalid(format!("{e} (after applying {})", args.join(" "))))?;
    if vocab_inputs_changed && !vocab_set {
        out.model.vocab_size = pad_vocab(
            out.tokenizer.vocab_size,
            out.tokenizer.make_vocab_size_divisible_by,
            out.parallel.tensor_parallelism,
        );
    }
    Ok(out)
}

/// Keys whose value may be unset (`key=` with nothing after `=` unsets them).
const OPTIONAL: [&str; 11] = [
    "checkpoint.resume_path",
    "tokenizer.path",
    "data.index_mapping_dir",
    "data.validation",
    "data.train_paths",
    "data.validation_paths",
    "data.test_paths",
    "model.mamba.dt_clamp_max",
    "model.tokens.bos",
    "model.tokens.eos",
    "model.tokens.pad",
];

/// Integer keys that may be negative.
const SIGNED: [&str; 1] = ["checkpoint.save_top_k"];

/// The `[data]` table of variant `kind` with its defaults (required paths get placeholders to override).
fn data_defaults(kind: &str) -> Value {
    let tries = [
        serde_json::json!({ "kind": kind }),
        serde_json::json!({ "kind": kind, "dir": "runs/data" }),
        serde_json::json!({ "kind": kind, "train": "squad/training.jsonl" }),
    ];
    tries
        .into_iter()
        .find_map(|v| {
            serde_json::from_value::<coil_data::DataConfig>(v)
                .ok()
                .and_then(|d| serde_json::to_value(d).ok())
        })
        // An unknown kind stays as given; deserialization names the valid ones.
        .unwrap_or_else(|| serde_json::json!({ "kind": kind }))
}

fn set_num_layers(tree: &mut Value, raw: &str) -> Result<()> {
    let n: usize = raw
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| RecipeError::Value {
            key: "model.num_layers".into(),
            message: format!("expected a positive integer, got {raw:?}"),
        })?;
    let pattern = tree["model"]["pattern"].as_str().unwrap_or("M").to_string();
    let new: String = pattern.chars().cycle().take(n).collect();
    tree["model"]["pattern"] = Value::String(new);
    Ok(())
}

fn valid_keys(prefix: &str, obj: &Map<String, Value>) -> String {
    let mut keys: Vec<String> = obj
        .keys()
        .map(|k| {
            if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            }
        })
        .collect();
    if prefix == "model" {
        keys.push("model.num_layers".into());
    }
    keys.join(", ")
}

fn set_key(tree: &mut Value, key: &str, raw: &str) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let prefix = parts[..i].join(".");
        let Value::Object(obj) = node else {
            return Err(RecipeError::UnknownKey {
                key: key.into(),
                valid: format!("{prefix} is a value, not a table"),
            });
        };
        if !obj.contains_key(*part) {
            return Err(RecipeError::UnknownKey {
                key: key.into(),
                valid: valid_keys(&prefix, obj),
            });
        }
        let last = i + 1 == parts.len();
        let child = obj
            .get_mut(*part)
            .ok_or_else(|| RecipeError::Invalid(key.into()))?;
        if last {
            *child = coerce(key, raw, child)?;
            return Ok(());
        }
        node = child;
    }
    Ok(())
}

fn unquote(raw: &str) -> String {
    parse_toml(raw)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| raw.to_string())
}

/// `raw` as a TOML value, if it is one.
fn parse_toml(raw: &str) -> Option<toml::Value> {
    let doc: toml::Table = format!("v = {raw}").parse().ok()?;
    doc.get("v").cloned()
}

/// `[a, b c, 'd']` of bare words as strings.
fn bare_list(raw: &str) -> Option<Vec<String>> {
    let inner = raw.strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    Some(inner.split(',').map(|s| unquote(s.trim())).collect())
}

/// The JSON value for `raw`, checked against the type of `old`.
fn coerce(key: &str, raw: &str, old: &Value) -> Result<Value> {
    let bad = |what: &str| RecipeError::Value {
        key: key.into(),
        message: format!("expected {what}, got {raw:?}"),
    };
    if raw.is_empty() && OPTIONAL.contains(&key) {
        return Ok(Value::Null);
    }
    let parsed = parse_toml(raw);
    let json = |t: &toml::Value| serde_json::to_value(t).map_err(|_| bad("a plain value"));
    match old {
        Value::String(_) => Ok(Value::String(match &parsed {
            Some(toml::Value::String(s)) => s.clone(),
            _ => raw.to_string(),
        })),
        Value::Bool(_) => match parsed {
            Some(toml::Value::Boolean(b)) => Ok(Value::Bool(b)),
            _ => Err(bad("true or false")),
        },
        Value::Number(n) if n.is_f64() => match parsed {
            Some(toml::Value::Float(f)) if !f.is_finite() => Err(bad("a finite number")),
            Some(toml::Value::Float(f)) => Ok(serde_json::json!(f)),
            Some(toml::Value::Integer(i)) => Ok(serde_json::json!(i as f64)),
            _ => Err(bad("a number")),
        },
        Value::Number(n) => match parsed {
            Some(toml::Value::Integer(i))
                if i >= 0 || SIGNED.contains(&key) || n.as_i64().is_some_and(|o| o < 0) =>
            {
                Ok(serde_json::json!(i))
            }
            Some(toml::Value::Integer(_)) => Err(bad("a non-negative integer")),
            _ => Err(bad("an integer")),
        },
        Value::Array(items) => {
            let strings = items.iter().all(Value::is_string);
            match parsed {
                Some(toml::Value::Array(a)) if strings => Ok(Value::Array(
                    a.iter()
                        .map(|v| match v {
                            toml::Value::String(s) => Value::String(s.clone()),
                            other => Value::String(other.to_string()),
                        })
                        .collect(),
                )),
                Some(v @ toml::Value::Array(_)) => json(&v),
                _ => match bare_list(raw) {
                    Some(list) if strings => Ok(serde_json::json!(list)),
                    _ => Err(bad("a list such as [a, b]")),
                },
            }
        }
        Value::Null => {
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            match parsed {
                Some(v @ toml::Value::Array(_)) => json(&v),
                Some(toml::Value::String(s)) => Ok(Value::String(s)),
                Some(v) => json(&v),
                None => match bare_list(raw) {
                    Some(list) => Ok(serde_json::json!(list)),
                    None => Ok(Value::String(raw.to_string())),
                },
            }
        }
        Value::Object(obj) => Err(RecipeError::Value {
            key: key.into(),
            message: format!("is a table; set one of its keys: {}", valid_keys(key, obj)),
        }),
    }
}

/// The recipe as TOML: every value, in struct order; unset optional keys appear as comments.
pub fn to_toml(recipe: &Recipe) -> Result<String> {
    let text = toml::to_string(recipe).map_err(|e| RecipeError::Invalid(e.to_string()))?;
    let tree = serde_json::to_value(recipe).map_err(|e| RecipeError::Invalid(e.to_string()))?;
    let mut unset: Vec<(String, String)> = Vec::new();
    collect_nulls("", &tree, &mut unset);
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            for (_, key) in unset.iter().filter(|(s, _)| s == section) {
                out.push_str(&format!("# {key} = (unset)\n"));
            }
        }
    }
    Ok(out)
}

fn collect_nulls(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    if let Value::Object(obj) = v {
        for (k, child) in obj {
            match child {
                Value::Null => out.push((prefix.to_string(), k.clone())),
                Value::Object(_) => {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    collect_nulls(&p, child, out);
                }
                _ => {}
            }
        }
    }
}

/// Parses a recipe file (the TOML that `coil recipe show` prints or `--to-toml` writes). A non-finite number
/// (`nan`, `inf`) is refused here, naming its key: no setting takes one.
pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Recipe> {
    let file_error = |message: String| RecipeError::File {
        path: path.to_path_buf(),
        message,
    };
    let recipe: Recipe =
        toml::from_str(text).map_err(|e| file_error(format!("not a valid recipe: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| file_error(format!("not a valid recipe: {e}")))?;
    match non_finite_key("", &toml::Value::Table(table)) {
        Some(key) => Err(file_error(format!("{key}: expected a finite number"))),
        None => Ok(recipe),
    }
}

/// The dotted key of the first non-finite float in a TOML tree.
fn non_finite_key(prefix: &str, v: &toml::Value) -> Option<String> {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(prefix.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| non_finite_key(&join(k), v)),
        toml::Value::Array(a) => a.iter().find_map(|v| non_finite_key(prefix, v)),
        _ => None,
    }
}
