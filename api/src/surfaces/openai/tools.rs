//! OpenAI's shapes of the shared tool and format vocabulary: `tools`, `tool_choice` and
//! `response_format` of chat completions (the Responses API flattens them; see `responses`).

use serde_json::Value;

use crate::core::chat::{FinishReason, OutputFormat, Tool, ToolChoice};
use crate::error::ApiError;
use crate::surfaces::openai::types::ToolDef;

/// OpenAI's name of a finish reason.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

pub fn tools(defs: Option<Vec<ToolDef>>) -> Result<Vec<Tool>, ApiError> {
    defs.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            if d.kind != "function" {
                return Err(ApiError::invalid_param(
                    &format!("tools[{i}].type"),
                    format!(
                        "Tools of type '{}' are not supported; use 'function'.",
                        d.kind
                    ),
                ));
            }
            tool(
                d.function.name,
                d.function.description,
                d.function.parameters,
                &format!("tools[{i}].function.name"),
            )
        })
        .collect()
}

/// One function tool, its name checked.
pub fn tool(
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    param: &str,
) -> Result<Tool, ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid_param(
            param,
            "A function's name must not be empty.",
        ));
    }
    Ok(Tool {
        name,
        description,
        parameters: parameters
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
    })
}

/// `"auto"`, `"none"`, `"required"`, `{"type": "function", "function": {"name"}}` (chat) or
/// `{"type": "function", "name"}` (Responses). Unset: `auto` with tools.
pub fn tool_choice(value: Option<Value>, param: &str) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            param,
            "Invalid 'tool_choice': use 'auto', 'none', 'required' or \
             {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        )
    };
    match value {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            Ok(ToolChoice::Function(name.to_owned()))
        }
    }
}

/// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema",
/// "strict"}}`. The Responses API's `text.format` has the schema's fields at the top level.
pub fn response_format(value: Option<Value>, param: &str) -> Result<OutputFormat, ApiError> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(OutputFormat::Text),
        Some("json_object") => Ok(OutputFormat::JsonObject),
        Some("json_schema") => {
            let schema = v
                .pointer("/json_schema/schema")
                .or_else(|| v.get("schema"))
                .cloned()
                .ok_or_else(|| {
                    ApiError::invalid_param(param, "A 'json_schema' format needs its 'schema'.")
                })?;
            if !schema.is_object() {
                return Err(ApiError::invalid_param(
                    param,
                    "The 'schema' must be a JSON object.",
                ));
            }
            Ok(OutputFormat::JsonSchema { schema })
        }
        _ => Err(ApiError::invalid_param(
            param,
            "Invalid format type: use 'text', 'json_object' or 'json_schema'.",
        )),
    }
}
