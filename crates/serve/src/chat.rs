//! Chat templates: the model's `chat_template` from `tokenizer_config.json` (a Jinja template, as HF
//! transformers' `apply_chat_template` renders it, with `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token` and `raise_exception`), rendered by minijinja with Python's string methods.
//!
//! When the model directory has none, [`FALLBACK_TEMPLATE`] is used: one `role: content` line per message and
//! `assistant:` as the generation prompt.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;
use std::path::Path;

/// The template used when `tokenizer_config.json` has no `chat_template`.
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (for `coil serve`'s startup line).
    pub source: String,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// A special token of `tokenizer_config.json`: a string, or an object with `content`.
fn special_token(cfg: &serde_json::Value, key: &str) -> String {
    match cfg.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

impl ChatTemplate {
    /// A template from its source.
    pub fn new(
        source_text: &str,
        source: impl Into<String>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source_text.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    pub fn fallback() -> Self {
        Self::new(FALLBACK_TEMPLATE, "fallback (role: content lines)", "", "")
            .expect("the fallback template parses")
    }

    /// The model directory's template (`tokenizer_config.json`: `chat_template` as a string, or a list of named
    /// templates where `default` is used), else the fallback.
    pub fn from_model_dir(dir: &Path) -> Result<Self, String> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(Self::fallback());
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(Self::fallback()),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "{}: chat_template is a list without a template named `default`",
                        path.display()
                    )
                })?,
            Some(_) => {
                return Err(format!(
                    "{}: chat_template must be a string or a list of {{name, template}}",
                    path.display()
                ))
            }
        };
        Self::new(
            &template,
            format!("{} (chat_template)", path.display()),
            &special_token(&cfg, "bos_token"),
            &special_token(&cfg, "eos_token"),
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The prompt text for `messages`; a template error (e.g. its `raise_exception`) comes back as the message.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => e.detail().unwrap_or("template error").to_string(),
            _ => format!("rendering the chat template: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }

    #[test]
    fn fallback_renders_role_lines_and_the_generation_prompt() {
        let t = ChatTemplate::fallback();
        let m = [msg("system", "Be brief."), msg("user", "Hi")];
        assert_eq!(
            t.render(&m, true).unwrap(),
            "system: Be brief.\nuser: Hi\nassistant:"
        );
        assert_eq!(
            t.render(&m, false).unwrap(),
            "system: Be brief.\nuser: Hi\n"
        );
    }

    #[test]
    fn hf_style_template_with_python_methods_and_raise_exception() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}<|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let dir = std::env::temp_dir().join(format!("coil-chat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = serde_json::json!({
            "chat_template": src,
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "lstrip": false},
        });
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let t = ChatTemplate::from_model_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hello ")], true).unwrap(),
            "<s><|user|>hello</s><|assistant|>"
        );
        assert_eq!(
            t.render(&[msg("tool", "x")], true).unwrap_err(),
            "bad role tool"
        );
        assert!(ChatTemplate::new("{% for %}", "x", "", "").is_err());
    }
}
