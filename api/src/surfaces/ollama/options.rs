//! Ollama's request `options` (llama.cpp's names) and `format`.

use serde::Deserialize;
use serde_json::Value;

use crate::backend::GenerateRequest;
use crate::core::chat::OutputFormat;
use crate::error::ApiError;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f32>,
    /// Tokens to generate; -1 (or unset) until the end or the context is full.
    pub num_predict: Option<i64>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
}

fn in_range(name: &str, v: Option<f32>, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && (0.0..=hi).contains(&x)) => Err(ApiError::invalid_param(
            name,
            format!("invalid option {name}: {x} is not between 0 and {hi}"),
        )),
        _ => Ok(()),
    }
}

impl Options {
    /// Sets `req`'s sampling from these options, with Ollama's defaults (temperature 0.8,
    /// top_k 40, top_p 0.9, repeat_penalty 1.1).
    pub fn apply(self, req: &mut GenerateRequest) -> Result<(), ApiError> {
        in_range("temperature", self.temperature, 2.0)?;
        in_range("top_p", self.top_p, 1.0)?;
        in_range("min_p", self.min_p, 1.0)?;
        in_range("repeat_penalty", self.repeat_penalty, 10.0)?;
        let s = &mut req.sampling;
        s.temperature = self.temperature.unwrap_or(0.8);
        s.top_p = self.top_p.unwrap_or(0.9);
        s.top_k = self
            .top_k
            .map_or(40, |k| u32::try_from(k.max(0)).unwrap_or(u32::MAX));
        s.min_p = self.min_p.unwrap_or(0.0);
        s.repeat_penalty = self.repeat_penalty.unwrap_or(1.1);
        if let Some(seed) = self.seed {
            s.seed = seed as u64;
        }
        req.max_tokens = match self.num_predict {
            None => None,
            Some(n) if n < 0 => None,
            Some(0) => {
                return Err(ApiError::invalid_param(
                    "num_predict",
                    "invalid option num_predict: 0 generates nothing; use -1 for no limit",
                ))
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        req.stop = self
            .stop
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        Ok(())
    }
}

/// `"json"`, a JSON schema object, or nothing.
pub fn format(value: Option<Value>) -> Result<OutputFormat, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(OutputFormat::Text),
        Some(Value::String(s)) if s.is_empty() => Ok(OutputFormat::Text),
        Some(Value::String(s)) if s == "json" => Ok(OutputFormat::JsonObject),
        Some(schema @ Value::Object(_)) => Ok(OutputFormat::JsonSchema { schema }),
        Some(_) => Err(ApiError::invalid_param(
            "format",
            "invalid format: use \"json\" or a JSON schema object",
        )),
    }
}
