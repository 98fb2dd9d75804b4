//! JSON value types shared by the config formats: floats that may be infinite, `[lo, hi]` limits, token ids,
//! and the one pre-pass for files that spell infinity as a bare `Infinity` (not JSON, but common on the hub).

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;

/// A float as transformers 5 writes it: a JSON number, or `{"__float__": "Infinity" | "-Infinity" | "NaN"}` for
/// the values JSON cannot spell. Reading also accepts the lower-case `inf` spellings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JsonF64(pub f64);

impl Serialize for JsonF64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let name = match self.0 {
            x if x.is_finite() => return s.serialize_f64(x),
            x if x.is_nan() => "NaN",
            x if x > 0.0 => "Infinity",
            _ => "-Infinity",
        };
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("__float__", name)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for JsonF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonF64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a number or {"__float__": "Infinity"}"#)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonF64, E> {
                Ok(JsonF64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonF64, E> {
                Ok(JsonF64(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonF64, E> {
                Ok(JsonF64(v as f64))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonF64, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "__float__" {
                        return Err(de::Error::custom(format!(
                            r#"unexpected key {key:?} in a float object; expected {{"__float__": "Infinity"}}"#
                        )));
                    }
                    let name: String = map.next_value()?;
                    out = Some(match name.as_str() {
                        "Infinity" | "inf" => f64::INFINITY,
                        "-Infinity" | "-inf" => f64::NEG_INFINITY,
                        "NaN" | "nan" => f64::NAN,
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown float {other:?}; expected \"Infinity\", \"-Infinity\" or \"NaN\""
                            )))
                        }
                    });
                }
                out.map(JsonF64).ok_or_else(|| {
                    de::Error::custom(r#"empty float object; expected {"__float__": ...}"#)
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[lo, hi]` dt clamp (`time_step_limit`, `dt_limit`); `hi = ∞` when unbounded.
pub type Limit = [JsonF64; 2];

/// `(lo, hi)` of a limit with an infinite `hi` as `None`, checking both ends are numbers.
pub fn limit_bounds(name: &str, [lo, hi]: Limit) -> Result<(f64, Option<f64>), String> {
    if lo.0.is_nan() || hi.0.is_nan() {
        return Err(format!("field `{name}`: a limit is NaN"));
    }
    Ok((lo.0, hi.0.is_finite().then_some(hi.0)))
}

/// The limit `[lo, hi]` with `None` written as infinity.
pub fn limit(lo: f64, hi: Option<f64>) -> Limit {
    [JsonF64(lo), JsonF64(hi.unwrap_or(f64::INFINITY))]
}

/// A token id field: an integer, or `None` for null and for what Coil does not use (hub configs sometimes list
/// several EOS ids).
pub fn token_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v.as_u64().and_then(|x| u32::try_from(x).ok()))
}

/// Parses config text: plain JSON, or (only when that fails) JSON with bare `Infinity`/`-Infinity`/`NaN` tokens
/// outside strings, rewritten to the `{"__float__": ...}` form first.
pub fn parse_json(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => serde_json::from_str(&spell_out_bare_floats(text))
            .map_err(|_| format!("malformed JSON: {first}")),
    }
}

/// Rewrites bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) to `{"__float__": "..."}`.
fn spell_out_bare_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_str {
            if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t))
            {
                out.push_str(&format!("{{\"__float__\": \"{tok}\"}}"));
                rest = &rest[tok.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        }
    }
    out
}

/// Deserializes one format's struct from a JSON value; a failure names the field (`ssm_cfg.layer`).
pub fn from_value<T: de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("field `{path}`: {}", e.inner())
        }
    })
}

/// `Some(first)` of the present spellings of one field (current name first, then legacy names).
pub fn first<T: Clone>(spellings: &[&Option<T>]) -> Option<T> {
    spellings.iter().find_map(|s| (*s).clone())
}
