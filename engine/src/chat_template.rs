//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja and the
//! helpers Hugging Face templates rely on, so instruct models get the prompt format they were
//! trained on. Models without a template get their family's format (Gemma) or ChatML.
//!
//! Tools: templates that know `tools` (Qwen 2.5, Llama 3.1, Mistral) get the definitions, the
//! assistant's `tool_calls` and `tool` results in Hugging Face's shapes. For templates that do
//! not, the definitions and calls are written as Hermes-style text (`<tool_call>{...}</tool_call>`,
//! `<tool_response>`) into the system and user turns, which the API's tool-call parser reads.

use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{EngineError, Result};

pub use exo_protocol::chat::{ChatMessage, ToolCall};

/// Hugging Face's message shape (`tool_calls[].function.{name, arguments}`, the arguments a
/// JSON value, not text).
fn to_template(msg: &ChatMessage) -> Value {
    let mut m = json!({ "role": msg.role, "content": msg.content });
    if !msg.tool_calls.is_empty() {
        m["tool_calls"] = msg
            .tool_calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments_value() },
                })
            })
            .collect();
    }
    if let Some(id) = &msg.tool_call_id {
        m["tool_call_id"] = json!(id);
    }
    if let Some(name) = &msg.name {
        m["name"] = json!(name);
    }
    m
}

/// How a model without tool support in its template is told about tools (Hermes' wording,
/// which Qwen and many fine-tunes were trained on).
const TOOLS_PREAMBLE: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const TOOLS_EPILOGUE: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

/// JSON as Python's `json.dumps` writes it (`, ` and `: `, non-ASCII kept), which is what
/// Hugging Face's `tojson` gives the templates the models were trained with.
pub fn python_json(value: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    value.serialize(&mut ser).expect("JSON values serialize");
    String::from_utf8(out).expect("JSON is UTF-8")
}

const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// Gemma's turn format (its base GGUFs ship without a template).
const GEMMA: &str = "{{ bos_token }}{%- for message in messages %}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}{%- if role == 'system' %}{{- '<start_of_turn>user\n' + message['content'] + '\n\n' }}{%- else %}{%- if not (loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system') %}{{- '<start_of_turn>' + role + '\n' }}{%- endif %}{{- message['content'] | trim + '<end_of_turn>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template renders `tools` itself.
    knows_tools: bool,
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
        let knows_tools = source.contains("tools");
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
        env.add_filter(
            "tojson",
            |v: minijinja::Value,
             kwargs: minijinja::value::Kwargs|
             -> std::result::Result<minijinja::Value, minijinja::Error> {
                // `indent` is accepted and ignored: the prompt has no use for pretty JSON.
                let _: Option<minijinja::Value> = kwargs.get("indent")?;
                let v: Value = serde_json::to_value(&v).map_err(|e| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string())
                })?;
                Ok(minijinja::Value::from_safe_string(python_json(&v)))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(Self {
            env,
            knows_tools,
            bos_token,
            eos_token,
        })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders with `tools`: OpenAI-style definitions (`{"type": "function", "function":
    /// {"name", "description", "parameters"}}`).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let uses_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        let (messages, tools): (Vec<Value>, Option<&[Value]>) = if self.knows_tools || !uses_tools {
            (
                messages.iter().map(to_template).collect(),
                (!tools.is_empty()).then_some(tools),
            )
        } else {
            (tools_as_text(messages, tools), None)
        };
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
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

/// Tool definitions, calls and results written as plain turns, for templates without tools:
/// definitions join the system turn, calls the assistant's text, results become user turns.
fn tools_as_text(messages: &[ChatMessage], tools: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if !tools.is_empty() {
        let mut system = String::new();
        if let Some(first) = messages.first().filter(|m| m.role == "system") {
            system.push_str(&first.content);
            system.push_str("\n\n");
        }
        system.push_str(TOOLS_PREAMBLE);
        for t in tools {
            system.push('\n');
            system.push_str(&python_json(t));
        }
        system.push_str(TOOLS_EPILOGUE);
        out.push(json!({ "role": "system", "content": system }));
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        let (role, text) = match m.role.as_str() {
            "tool" => (
                "user",
                format!("<tool_response>\n{}\n</tool_response>", m.content),
            ),
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    let call = json!({ "name": c.name, "arguments": c.arguments_value() });
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!(
                        "<tool_call>\n{}\n</tool_call>",
                        python_json(&call)
                    ));
                }
                ("assistant", text)
            }
            role => (role, m.content.clone()),
        };
        // Tool results in a row (and a user turn after them) share one turn, so templates
        // that insist on alternating roles accept the conversation.
        match out.last_mut() {
            Some(last) if last["role"] == role && role == "user" => {
                let joined = format!("{}\n{}", last["content"].as_str().unwrap_or(""), text);
                last["content"] = json!(joined);
            }
            _ => out.push(json!({ "role": role, "content": text })),
        }
    }
    out
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

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    fn tool_conversation() -> Vec<ChatMessage> {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}).to_string(),
        });
        let mut result = ChatMessage::new("tool", "{\"temp_c\": 21}");
        result.tool_call_id = Some("call_1".into());
        vec![ChatMessage::new("user", "Weather in Paris?"), call, result]
    }

    #[test]
    fn a_template_with_tools_gets_definitions_calls_and_results() {
        // The shape of Qwen 2.5's template, reduced.
        let src = "{%- if tools %}<tools>{%- for t in tools %}{{ t | tojson }}{%- endfor %}</tools>{%- endif %}\
            {%- for m in messages %}[{{ m.role }}]{{ m.content }}\
            {%- for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}){%- endfor %}{%- endfor %}";
        let t = ChatTemplate::new(Some(src.into()), "qwen2", String::new(), String::new()).unwrap();
        let out = t
            .render_with_tools(&tool_conversation(), &[weather_tool()], false)
            .unwrap();
        assert_eq!(
            out,
            "<tools>{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather now\", \
             \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}</tools>\
             [user]Weather in Paris?[assistant]get_weather({\"city\": \"Paris\"})[tool]{\"temp_c\": 21}"
        );
    }

    #[test]
    fn a_template_without_tools_gets_them_as_hermes_text() {
        let t = ChatTemplate::new(None, "gemma3", "<bos>".into(), "<eos>".into()).unwrap();
        let out = t
            .render_with_tools(&tool_conversation(), &[weather_tool()], true)
            .unwrap();
        assert!(
            out.starts_with("<bos><start_of_turn>user\n# Tools"),
            "{out}"
        );
        assert!(out.contains("\"name\": \"get_weather\""), "{out}");
        assert!(
            out.contains("<start_of_turn>model\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><end_of_turn>"),
            "{out}"
        );
        assert!(
            out.ends_with("<start_of_turn>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response><end_of_turn>\n<start_of_turn>model\n"),
            "{out}"
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
