//! The request bodies of the OpenAI API and their checks. Each refusal is a 400 naming the field
//! (`param`): a body that is not JSON, a field of the wrong type, a value out of range, a prompt too long or
//! holding ids outside the vocabulary, a setting Coil does not implement (penalties, logit_bias, tools).

use crate::chat::Message;
use crate::error::ApiError;
use coil_data::Tokenizer;
use coil_infer::SamplingParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Parses a JSON body into `T`; type errors name the field's path (`max_tokens`, `messages.0.role`).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        let param = match (missing, path.as_str()) {
            (Some(f), ".") => f,
            (Some(f), p) => format!("{p}.{f}"),
            (None, p) => p.to_string(),
        };
        ApiError::invalid(param.clone(), format!("{param}: {msg}"))
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Value,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Extension (vLLM's): keep the k most likely tokens; 0 or -1 is off.
    pub top_k: Option<i64>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub best_of: Option<u64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub suffix: Option<String>,
    /// Extension: keep generating after the end-of-sequence token.
    pub ignore_eos: Option<bool>,
    /// Extension: return `prompt_token_ids` and `token_ids` in each choice.
    pub return_token_ids: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub tools: Option<Vec<Value>>,
    pub response_format: Option<Value>,
    /// Extension: end the rendered prompt with the template's assistant prefix (default true).
    pub add_generation_prompt: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub return_token_ids: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    pub name: Option<String>,
}

/// Limits of this server that requests are checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Width of the model's logits (ids at or above it are refused).
    pub vocab: usize,
    /// The tokenizer's vocabulary, when smaller (sampled ids are clamped below it).
    pub vocab_limit: Option<usize>,
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    pub max_n: usize,
}

/// Generation settings common to both endpoints, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stops: Vec<String>,
    pub max_tokens: usize,
    pub n: usize,
    pub ignore_eos: bool,
}

fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// OpenAI's semantics on Megatron's sampler: `temperature` 0 (or `top_k` 1) is greedy, `top_p` 1 is off.
pub fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    limits: &Limits,
) -> Result<SamplingParams, ApiError> {
    let t = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be in [0, 2], got {t}"),
        ));
    }
    let p = top_p.unwrap_or(1.0);
    if !(p > 0.0 && p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {p}"),
        ));
    }
    let k = match top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k < 0 => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 or 0 (off) or positive, got {k}"),
            ))
        }
        k => k as u64,
    };
    let vocab = limits.vocab_limit.unwrap_or(limits.vocab);
    if k > 1 && k >= vocab as u64 {
        return Err(ApiError::invalid(
            "top_k",
            format!("top_k must be smaller than the vocabulary ({vocab}), got {k}"),
        ));
    }
    if t == 0.0 || k == 1 {
        return Ok(SamplingParams::greedy());
    }
    let p = if p >= 1.0 { 0.0 } else { p as f32 };
    if k > 1 && p > 0.0 {
        return Err(ApiError::invalid(
            "top_k",
            "top_k together with top_p < 1 is not supported (Coil samples by Megatron's rules, which apply one of \
             them); leave top_p at 1 or drop top_k",
        ));
    }
    let params = SamplingParams {
        temperature: t as f32,
        top_k: k as usize,
        top_p: p,
    };
    params
        .validate(limits.vocab, limits.vocab_limit)
        .map_err(|e| ApiError::invalid("top_k", e.to_string()))?;
    Ok(params)
}

/// `stop`: a string or a list of up to 16 non-empty strings.
pub fn stops(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(format!("stop[{i}]"), format!("stop[{i}] must be a string"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    if list.len() > 16 {
        return Err(ApiError::invalid("stop", "at most 16 stop strings"));
    }
    if list.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(list)
}

fn unsupported_penalty(name: &str, v: Option<f64>) -> Result<(), ApiError> {
    match v {
        Some(x) if x != 0.0 => Err(ApiError::invalid(
            name,
            format!("{name} is not supported by this server (only 0)"),
        )),
        _ => Ok(()),
    }
}

fn unsupported_bias(v: Option<&serde_json::Map<String, Value>>) -> Result<(), ApiError> {
    match v {
        Some(m) if !m.is_empty() => Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported by this server",
        )),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn settings(
    limits: &Limits,
    max_tokens: Option<u64>,
    max_tokens_name: &str,
    default_max_tokens: usize,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    n: Option<u64>,
    stop: Option<&Value>,
    seed: Option<i64>,
    ignore_eos: Option<bool>,
) -> Result<Settings, ApiError> {
    let max_tokens = match max_tokens {
        None => default_max_tokens.min(limits.max_tokens),
        Some(m) if m > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(
                max_tokens_name,
                format!(
                    "{max_tokens_name} is {m}, more than this server's limit of {} (--max-tokens)",
                    limits.max_tokens
                ),
            ))
        }
        Some(m) => m as usize,
    };
    let n = match n.unwrap_or(1) {
        0 => return Err(ApiError::invalid("n", "n must be at least 1")),
        n if n > limits.max_n as u64 => {
            return Err(ApiError::invalid(
                "n",
                format!("n must be at most {}", limits.max_n),
            ))
        }
        n => n as usize,
    };
    Ok(Settings {
        sampling: sampling(temperature, top_p, top_k, limits)?,
        seed: seed.map_or_else(random_seed, |s| s as u64),
        stops: stops(stop)?,
        max_tokens,
        n,
        ignore_eos: ignore_eos.unwrap_or(false),
    })
}

/// A prompt as ids, with its text when it came as text.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub text: Option<String>,
}

fn check_prompt(ids: &[u32], param: &str, limits: &Limits) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("{param} is empty: a prompt needs at least one token"),
        ));
    }
    if ids.len() > limits.max_prompt_tokens {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} has {} tokens, more than this server's limit of {} (--max-prompt-tokens)",
                ids.len(),
                limits.max_prompt_tokens
            ),
        )
        .with_code("context_length_exceeded"));
    }
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= limits.vocab) {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param}: token id {t} is outside the model's vocabulary [0, {})",
                limits.vocab
            ),
        ));
    }
    Ok(())
}

fn encode(
    tok: &dyn Tokenizer,
    text: &str,
    bos: Option<u32>,
    param: &str,
    limits: &Limits,
) -> Result<Prompt, ApiError> {
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(
        tok.encode(text)
            .map_err(|e| ApiError::invalid(param, format!("{param}: tokenizing: {e}")))?,
    );
    check_prompt(&ids, param, limits)?;
    Ok(Prompt {
        ids,
        text: Some(text.to_string()),
    })
}

fn id_list(v: &[Value], param: &str, limits: &Limits) -> Result<Prompt, ApiError> {
    let ids = v
        .iter()
        .enumerate()
        .map(|(j, x)| match x.as_u64() {
            Some(id) if id < limits.vocab as u64 => Ok(id as u32),
            _ => Err(ApiError::invalid(
                param,
                format!(
                    "{param}[{j}]: {x} is not a token id of the model's vocabulary [0, {})",
                    limits.vocab
                ),
            )),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    check_prompt(&ids, param, limits)?;
    Ok(Prompt { ids, text: None })
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
pub fn prompts(
    v: &Value,
    tok: &dyn Tokenizer,
    bos: Option<u32>,
    limits: &Limits,
) -> Result<Vec<Prompt>, ApiError> {
    let shape = "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids";
    match v {
        Value::String(s) => Ok(vec![encode(tok, s, bos, "prompt", limits)?]),
        Value::Array(a) if a.is_empty() => {
            Err(ApiError::invalid("prompt", "prompt is an empty list"))
        }
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                encode(
                    tok,
                    s.as_str().unwrap_or_default(),
                    bos,
                    &format!("prompt[{i}]"),
                    limits,
                )
            })
            .collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            Ok(vec![id_list(a, "prompt", limits)?])
        }
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .enumerate()
            .map(|(i, l)| {
                id_list(
                    l.as_array().map_or(&[], |v| v),
                    &format!("prompt[{i}]"),
                    limits,
                )
            })
            .collect(),
        _ => Err(ApiError::invalid("prompt", shape)),
    }
}

/// A checked completion request.
pub struct Completion {
    pub prompts: Vec<Prompt>,
    pub settings: Settings,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub return_token_ids: bool,
}

impl CompletionRequest {
    pub fn check(
        &self,
        tok: &dyn Tokenizer,
        bos: Option<u32>,
        limits: &Limits,
    ) -> Result<Completion, ApiError> {
        unsupported_penalty("presence_penalty", self.presence_penalty)?;
        unsupported_penalty("frequency_penalty", self.frequency_penalty)?;
        unsupported_bias(self.logit_bias.as_ref())?;
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "suffix is not supported by this server",
            ));
        }
        if let Some(b) = self.best_of {
            if b != self.n.unwrap_or(1) {
                return Err(ApiError::invalid(
                    "best_of",
                    "best_of is not supported by this server (only equal to n)",
                ));
            }
        }
        let logprobs = match self.logprobs {
            Some(l) if l > 20 => {
                return Err(ApiError::invalid("logprobs", "logprobs must be at most 20"))
            }
            l => l.map(|l| l as usize),
        };
        let settings = settings(
            limits,
            self.max_tokens,
            "max_tokens",
            16,
            self.temperature,
            self.top_p,
            self.top_k,
            self.n,
            self.stop.as_ref(),
            self.seed,
            self.ignore_eos,
        )?;
        Ok(Completion {
            prompts: prompts(&self.prompt, tok, bos, limits)?,
            settings,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            logprobs,
            echo: self.echo.unwrap_or(false),
            return_token_ids: self.return_token_ids.unwrap_or(false),
        })
    }
}

/// A checked chat request (messages not yet rendered).
pub struct Chat {
    pub messages: Vec<Message>,
    pub add_generation_prompt: bool,
    pub settings: Settings,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(top_logprobs)` when `logprobs` is true.
    pub logprobs: Option<usize>,
    pub return_token_ids: bool,
}

fn content_text(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}]"),
                            format!(
                                "{param}[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                            ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::invalid(
            param,
            format!("{param} must be a string, null or a list of text parts"),
        )),
    }
}

impl ChatRequest {
    pub fn check(&self, limits: &Limits) -> Result<Chat, ApiError> {
        unsupported_penalty("presence_penalty", self.presence_penalty)?;
        unsupported_penalty("frequency_penalty", self.frequency_penalty)?;
        unsupported_bias(self.logit_bias.as_ref())?;
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(
                "tools",
                "tools are not supported by this server",
            ));
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::invalid(
                    "response_format",
                    "only response_format {\"type\": \"text\"} is supported",
                ));
            }
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Ok(Message {
                    role: m.role.clone(),
                    content: content_text(&m.content, &format!("messages[{i}].content"))?,
                    name: m.name.clone(),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(t)) if t > 20 => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs must be at most 20",
                ))
            }
            (false, Some(t)) if t > 0 => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ))
            }
            (true, t) => Some(t.unwrap_or(0) as usize),
            (false, _) => None,
        };
        let (max, name) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let settings = settings(
            limits,
            max,
            name,
            limits.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            self.n,
            self.stop.as_ref(),
            self.seed,
            self.ignore_eos,
        )?;
        Ok(Chat {
            messages,
            add_generation_prompt: self.add_generation_prompt.unwrap_or(true),
            settings,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            logprobs,
            return_token_ids: self.return_token_ids.unwrap_or(false),
        })
    }

    /// Encodes the rendered prompt text and checks it.
    pub fn encode(text: &str, tok: &dyn Tokenizer, limits: &Limits) -> Result<Prompt, ApiError> {
        encode(tok, text, None, "messages", limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        vocab: 256,
        vocab_limit: Some(256),
        max_prompt_tokens: 8,
        max_tokens: 32,
        max_n: 4,
    };

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let e = parse::<CompletionRequest>(br#"{"prompt": "x", "max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse::<CompletionRequest>(br#"{"max_tokens": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e =
            parse::<ChatRequest>(br#"{"messages": [{"role": 3, "content": "x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse::<ChatRequest>(br#"{"messages": [{"content": "x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse::<CompletionRequest>(b"{not json").unwrap_err();
        assert!(e.param.is_none() && e.message.contains("not valid JSON"));
        let e = parse::<CompletionRequest>(b"[1]").unwrap_err();
        assert!(e.message.contains("object"));
    }

    #[test]
    fn openai_sampling_semantics() {
        assert!(sampling(Some(0.0), None, None, &LIMITS)
            .unwrap()
            .is_greedy());
        assert!(sampling(Some(0.7), None, Some(1), &LIMITS)
            .unwrap()
            .is_greedy());
        let p = sampling(None, None, None, &LIMITS).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (1.0, 0, 0.0));
        let p = sampling(Some(0.5), Some(0.9), Some(-1), &LIMITS).unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.5, 0, 0.9));
        for (t, p, k, param) in [
            (Some(-1.0), None, None, "temperature"),
            (Some(2.5), None, None, "temperature"),
            (None, Some(0.0), None, "top_p"),
            (None, Some(1.5), None, "top_p"),
            (None, None, Some(-2), "top_k"),
            (None, None, Some(256), "top_k"),
            (None, Some(0.5), Some(5), "top_k"),
        ] {
            let e = sampling(t, p, k, &LIMITS).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{t:?} {p:?} {k:?}");
        }
    }

    #[test]
    fn prompts_of_every_shape_and_their_refusals() {
        let tok = coil_data::tokenizer::ByteTokenizer;
        let ids = |v: &str| {
            prompts(&serde_json::from_str(v).unwrap(), &tok, None, &LIMITS)
                .map(|p| p.into_iter().map(|p| p.ids).collect::<Vec<_>>())
        };
        assert_eq!(ids(r#""ab""#).unwrap(), vec![vec![97, 98]]);
        assert_eq!(ids(r#"["a", "b"]"#).unwrap(), vec![vec![97], vec![98]]);
        assert_eq!(ids("[1, 2]").unwrap(), vec![vec![1, 2]]);
        assert_eq!(ids("[[1], [2, 3]]").unwrap(), vec![vec![1], vec![2, 3]]);
        for (v, param) in [
            ("[1, 256]", "prompt"),
            ("[1, -1]", "prompt"),
            ("[[1], [2, 300]]", "prompt[1]"),
            (r#""""#, "prompt"),
            (r#""123456789""#, "prompt"),
            ("[]", "prompt"),
            (r#"[1, "a"]"#, "prompt"),
            ("{}", "prompt"),
            ("3", "prompt"),
        ] {
            assert_eq!(ids(v).unwrap_err().param.as_deref(), Some(param), "{v}");
        }
    }

    #[test]
    fn limits_and_unsupported_settings_are_refused_by_name() {
        let tok = coil_data::tokenizer::ByteTokenizer;
        for (body, param) in [
            (r#"{"prompt": "a", "max_tokens": 33}"#, "max_tokens"),
            (r#"{"prompt": "a", "n": 5}"#, "n"),
            (r#"{"prompt": "a", "n": 0}"#, "n"),
            (r#"{"prompt": "a", "stop": 3}"#, "stop"),
            (r#"{"prompt": "a", "stop": ["x", 1]}"#, "stop[1]"),
            (
                r#"{"prompt": "a", "presence_penalty": 0.5}"#,
                "presence_penalty",
            ),
            (r#"{"prompt": "a", "logit_bias": {"1": 2}}"#, "logit_bias"),
            (r#"{"prompt": "a", "logprobs": 21}"#, "logprobs"),
        ] {
            let r: CompletionRequest = parse(body.as_bytes()).unwrap();
            let e = r.check(&tok, None, &LIMITS).err().expect(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        for (body, param) in [
            (r#"{"messages": []}"#, "messages"),
            (
                r#"{"messages": [{"role": "user", "content": 3}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 99}"#,
                "max_completion_tokens",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{}]}"#,
                "tools",
            ),
        ] {
            let r: ChatRequest = parse(body.as_bytes()).unwrap();
            let e = r.check(&LIMITS).err().expect(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        let c = r.check(&LIMITS).unwrap();
        assert_eq!(c.messages[0].content, "a\nb");
        assert_eq!(c.settings.max_tokens, 32);
    }
}
