//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja and the
//! helpers Hugging Face templates rely on, so instruct models get the prompt format they were
//! trained on. Models without a template get their family's format (Gemma) or ChatML.

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// Gemma's turn format (its base GGUFs ship without a template).
const GEMMA: &str = "{{ bos_token }}{%- for message in messages %}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}{%- if role == 'system' %}{{- '<start_of_turn>user\n' + message['content'] + '\n\n' }}{%- else %}{%- if not (loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system') %}{{- '<start_of_turn>' + role + '\n' }}{%- endif %}{{- message['content'] | trim + '<end_of_turn>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `template` is the model's own; `None` picks a default for `arch`.
    pub fn new(
        template: Option<String>,
        arch: &str,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self> {
        let source = template.unwrap_or_else(|| {
            if arch.starts_with("gemma") {
                GEMMA.to_string()
            } else {
                CHATML.to_string()
            }
        });
        let mut env = Environment::new();
        // Hugging Face renders templates with these settings.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| EngineError::Template(e.to_string()))?,
        );
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            // Templates use this for "Today Date"; a fixed, well-formed date keeps output
            // reproducible.
            let _ = fmt;
            "26 Jul 2024".to_string()
        });
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Option::<()>::None,
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            EngineError::Template(msg)
        })
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_default() {
        let t = ChatTemplate::new(None, "qwen2", String::new(), "<|im_end|>".into()).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_default_folds_system_into_the_user_turn() {
        let t = ChatTemplate::new(None, "gemma3", "<bos>".into(), "<eos>".into()).unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi "),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = ChatTemplate::new(
            Some("{{ raise_exception('roles must alternate') }}".into()),
            "llama",
            String::new(),
            String::new(),
        )
        .unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            Some("{% for m in messages %}{{ m['content'].strip().upper() }}{% if m.role.startswith('u') %}!{% endif %}{% endfor %}".into()),
            "llama",
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", " hi ")], false)
                .unwrap(),
            "HI!"
        );
    }
}
