//! Reading tool calls out of a model's text, as it streams. Formats:
//! - Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, any number, after
//!   optional text;
//! - Mistral: `[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]`;
//! - Llama 3: the whole answer is `{"name": …, "parameters": {…}}` (optionally after
//!   `<|python_tag|>`), as is the constrained output of a forced call.
//!
//! Text that may still turn into a call is held back while streaming; the rest is content.

use serde_json::Value;

use crate::core::chat::{Tool, ToolCall, ToolMode};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";
const MARKERS: [&str; 3] = [HERMES_OPEN, MISTRAL, PYTHON_TAG];

pub struct ToolParser {
    mode: ToolMode,
    names: Vec<String>,
    text: String,
    /// Bytes of `text` handed out as content.
    sent: usize,
    /// A call has (possibly) begun at `sent`: nothing more is content until the end.
    holding: bool,
}

/// The end of a turn: its calls, and the content not handed out yet (text held back as a
/// possible call that was none).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content_unsent: String,
    pub calls: Vec<ToolCall>,
}

impl ToolParser {
    pub fn new(mode: ToolMode, tools: &[Tool]) -> Self {
        ToolParser {
            mode,
            names: tools.iter().map(|t| t.name.clone()).collect(),
            text: String::new(),
            sent: 0,
            holding: mode == ToolMode::Forced,
        }
    }

    /// Adds generated text; returns the part that is content for sure.
    pub fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.mode == ToolMode::Off {
            self.sent = self.text.len();
            return delta.to_owned();
        }
        if self.holding {
            return String::new();
        }
        let rest = &self.text[self.sent..];
        // Llama 3 style: an answer that opens with `{` may be a call.
        if self.sent == 0 {
            let trimmed = rest.trim_start();
            if trimmed.is_empty() {
                return String::new();
            }
            if trimmed.starts_with('{') {
                self.holding = true;
                return String::new();
            }
        }
        let found = MARKERS.iter().filter_map(|m| rest.find(m)).min();
        let upto = match found {
            Some(at) => {
                self.holding = true;
                at
            }
            // Keep back a tail that could be the start of a marker.
            None => rest.len() - partial_marker_len(rest),
        };
        let out = rest[..upto].to_owned();
        self.sent += upto;
        out
    }

    /// The whole turn, once generation ended. Unparseable calls are left as content.
    pub fn finish(self) -> Parsed {
        let held = &self.text[self.sent..];
        let calls = match self.mode {
            ToolMode::Off => None,
            _ => parse_calls(held, &self.names).filter(|c| !c.is_empty()),
        };
        match calls {
            Some(calls) => Parsed {
                content_unsent: String::new(),
                calls,
            },
            None => Parsed {
                content_unsent: held.to_owned(),
                calls: Vec::new(),
            },
        }
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of a marker.
fn partial_marker_len(s: &str) -> usize {
    MARKERS
        .iter()
        .flat_map(|m| (1..m.len()).filter(move |&n| s.ends_with(&m[..n])))
        .max()
        .unwrap_or(0)
}

fn parse_calls(held: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let held = held.trim();
    if let Some(rest) = held.strip_prefix(MISTRAL) {
        return match serde_json::from_str::<Value>(rest.trim()).ok()? {
            Value::Array(items) => items.iter().map(|v| call_of(v, names)).collect(),
            v => Some(vec![call_of(&v, names)?]),
        };
    }
    if let Some(rest) = held.strip_prefix(PYTHON_TAG) {
        return Some(vec![call_of(&first_json(rest.trim())?, names)?]);
    }
    if held.starts_with(HERMES_OPEN) {
        let mut calls = Vec::new();
        for part in held.split(HERMES_OPEN).skip(1) {
            let body = part.split(HERMES_CLOSE).next().unwrap_or("").trim();
            calls.push(call_of(&first_json(body)?, names)?);
        }
        return Some(calls);
    }
    // A bare object, or objects separated by `;` / newlines (Llama 3.2 sometimes does that).
    let mut calls = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(held).into_iter::<Value>();
    for value in stream.by_ref() {
        calls.push(call_of(&value.ok()?, names)?);
    }
    Some(calls)
}

/// The first JSON value of `s` (a model may write text after it).
fn first_json(s: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// `{"name", "arguments" | "parameters"}` naming one of the request's tools.
fn call_of(v: &Value, names: &[String]) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    // Some models write the arguments as a JSON string.
    let args = match args {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        v => v,
    };
    Some(crate::core::chat::tool_call(name, &args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Tool> {
        ["get_weather", "add"]
            .iter()
            .map(|n| Tool {
                name: (*n).into(),
                description: None,
                parameters: json!({}),
            })
            .collect()
    }

    struct Done {
        content: String,
        calls: Vec<ToolCall>,
    }

    /// What was streamed, and the whole content and calls.
    fn run(mode: ToolMode, pieces: &[&str]) -> (String, Done) {
        let mut p = ToolParser::new(mode, &tools());
        let streamed: String = pieces.iter().map(|d| p.push(d)).collect();
        let end = p.finish();
        let content = format!("{streamed}{}", end.content_unsent);
        (
            streamed,
            Done {
                content,
                calls: end.calls,
            },
        )
    }

    #[test]
    fn hermes_calls_after_text_are_split_from_it() {
        let (streamed, done) = run(
            ToolMode::Auto,
            &[
                "Let me check.",
                " <tool",
                "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n",
                "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}</tool_call>",
            ],
        );
        assert_eq!(streamed, "Let me check. ");
        assert_eq!(done.content, "Let me check. ");
        assert_eq!(done.calls.len(), 2);
        assert_eq!(done.calls[0].name, "get_weather");
        assert_eq!(done.calls[0].arguments_value(), json!({"city": "Paris"}));
        assert_eq!(done.calls[1].arguments_value(), json!({"a": 1}));
        assert_ne!(done.calls[0].id, done.calls[1].id);
    }

    #[test]
    fn mistral_and_llama_formats() {
        let (_, done) = run(
            ToolMode::Auto,
            &["[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 2}}]"],
        );
        assert_eq!(done.calls[0].arguments_value(), json!({"a": 2}));
        let (streamed, done) = run(
            ToolMode::Auto,
            &[
                "{\"name\": \"get_weather\", ",
                "\"parameters\": {\"city\": \"Oslo\"}}",
            ],
        );
        assert_eq!(streamed, "");
        assert_eq!(done.content, "");
        assert_eq!(done.calls[0].arguments_value(), json!({"city": "Oslo"}));
    }

    #[test]
    fn text_that_is_not_a_call_stays_content() {
        let (streamed, done) = run(ToolMode::Auto, &["{\"answer\": 42}"]);
        assert_eq!(streamed, "");
        assert_eq!(done.content, "{\"answer\": 42}");
        assert!(done.calls.is_empty());
        let (_, done) = run(
            ToolMode::Auto,
            &["<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>"],
        );
        assert!(done.calls.is_empty());
        assert!(done.content.contains("unknown"));
        let (streamed, done) = run(ToolMode::Auto, &["a < b", " and [TOOL"]);
        assert_eq!(streamed, "a < b and ");
        assert_eq!(done.content, "a < b and [TOOL");
    }

    #[test]
    fn off_streams_everything() {
        let (streamed, done) = run(ToolMode::Off, &["<tool_call>{}"]);
        assert_eq!(streamed, "<tool_call>{}");
        assert_eq!(done.content, "<tool_call>{}");
    }
}
