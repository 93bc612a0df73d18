//! The chat vocabulary every surface maps its requests onto: messages with tool calls and tool
//! results, tool definitions, the tool choice, the output format and why a turn finished. From
//! these [`plan`] decides what the prompt carries, which grammar (if any) constrains the output,
//! and whether the output is read for tool calls.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

pub use exo_protocol::chat::{ChatMessage, ToolCall};

/// A call the model made now, with a fresh id.
pub fn tool_call(name: impl Into<String>, arguments: &Value) -> ToolCall {
    ToolCall::new(crate::core::generate::new_id("call"), name, arguments)
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

impl Tool {
    /// The `{"type": "function", "function": {...}}` entry chat templates expect.
    pub fn to_template(&self) -> Value {
        let mut f = json!({ "name": self.name, "parameters": self.parameters });
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        json!({ "type": "function", "function": f })
    }

    /// Schema of one call of this tool, as the constrained output writes it.
    fn call_schema(&self) -> Value {
        let params = match &self.parameters {
            Value::Object(o) if !o.is_empty() => self.parameters.clone(),
            _ => json!({ "type": "object" }),
        };
        json!({
            "type": "object",
            "properties": { "name": { "const": self.name }, "arguments": params },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Function(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema` (`strict` or not, the grammar enforces it).
    JsonSchema {
        schema: Value,
    },
}

/// Why a turn ended, in the shared vocabulary; each surface names it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The turn is tool calls.
    ToolCalls,
}

/// Whether and how a turn's text is read for tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// No tools: the text is the answer.
    Off,
    /// The model may answer or call tools in its own format.
    Auto,
    /// The grammar makes the whole output one `{"name", "arguments"}` call.
    Forced,
}

/// What a request's tools, tool choice and format come to.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPlan {
    /// Rendered into the prompt.
    pub tools: Vec<Tool>,
    /// JSON schema the output must match, enforced while sampling.
    pub grammar: Option<Value>,
    pub mode: ToolMode,
}

/// Decides the plan; `param` names the request's tool choice field for errors.
pub fn plan(
    tools: Vec<Tool>,
    choice: ToolChoice,
    format: OutputFormat,
    param: &str,
) -> Result<OutputPlan, ApiError> {
    let format_grammar = match format {
        OutputFormat::Text => None,
        OutputFormat::JsonObject => Some(json!({ "type": "object" })),
        OutputFormat::JsonSchema { schema } => Some(schema),
    };
    if tools.is_empty() {
        if matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
            return Err(ApiError::invalid_param(
                param,
                "A tool must be called, but the request defines no tools.",
            ));
        }
        return Ok(OutputPlan {
            tools,
            grammar: format_grammar,
            mode: ToolMode::Off,
        });
    }
    let forced: Vec<&Tool> = match &choice {
        ToolChoice::None => {
            return Ok(OutputPlan {
                tools: Vec::new(),
                grammar: format_grammar,
                mode: ToolMode::Off,
            })
        }
        ToolChoice::Auto => {
            return Ok(OutputPlan {
                tools,
                grammar: format_grammar,
                mode: ToolMode::Auto,
            })
        }
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => {
            let found: Vec<&Tool> = tools.iter().filter(|t| &t.name == name).collect();
            if found.is_empty() {
                return Err(ApiError::invalid_param(
                    param,
                    format!("Tool choice '{name}' is not one of the tools the request defines."),
                ));
            }
            found
        }
    };
    let grammar = match forced.as_slice() {
        [one] => one.call_schema(),
        many => json!({ "anyOf": many.iter().map(|t| t.call_schema()).collect::<Vec<_>>() }),
    };
    Ok(OutputPlan {
        tools,
        grammar: Some(grammar),
        mode: ToolMode::Forced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
        }
    }

    #[test]
    fn forcing_a_named_tool_makes_its_call_the_grammar() {
        let p = plan(
            vec![tool("a"), tool("b")],
            ToolChoice::Function("b".into()),
            OutputFormat::Text,
            "tool_choice",
        )
        .unwrap();
        assert_eq!(p.mode, ToolMode::Forced);
        let g = p.grammar.unwrap();
        assert_eq!(g["properties"]["name"]["const"], "b");
        assert_eq!(
            g["properties"]["arguments"]["properties"]["x"]["type"],
            "integer"
        );
    }

    #[test]
    fn required_allows_any_tool_and_none_hides_them() {
        let p = plan(
            vec![tool("a"), tool("b")],
            ToolChoice::Required,
            OutputFormat::Text,
            "tool_choice",
        )
        .unwrap();
        assert_eq!(p.grammar.unwrap()["anyOf"].as_array().unwrap().len(), 2);
        let p = plan(
            vec![tool("a")],
            ToolChoice::None,
            OutputFormat::JsonObject,
            "tool_choice",
        )
        .unwrap();
        assert!(p.tools.is_empty());
        assert_eq!(p.mode, ToolMode::Off);
        assert_eq!(p.grammar.unwrap(), json!({"type": "object"}));
    }

    #[test]
    fn an_unknown_forced_tool_is_a_bad_request() {
        let e = plan(
            vec![tool("a")],
            ToolChoice::Function("zz".into()),
            OutputFormat::Text,
            "tool_choice",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }
}
