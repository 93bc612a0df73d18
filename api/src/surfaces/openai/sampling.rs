//! The sampling fields OpenAI's endpoints share, and their checks (with OpenAI's `param` names
//! in errors).

use exo_protocol::SamplingParams;

use crate::error::ApiError;
use crate::surfaces::openai::types::Stop;

/// The checked fields: OpenAI's defaults, and llama.cpp's for its extras (0 top_k: off; 1.0
/// repeat_penalty: off).
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Without log-probabilities; each endpoint asks for those its own way.
    pub params: SamplingParams,
}

/// The sampling fields as a request sent them, before any check.
pub struct SamplingFields {
    /// The field name the value came from, for `param` in errors.
    pub max_tokens: Option<(&'static str, i64)>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

/// How many stop strings a request may carry (OpenAI allows 4; llama.cpp any).
const MAX_STOPS: usize = 16;

fn in_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(v.is_finite() && (lo..=hi).contains(&v)) => Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': {v} is not between {lo} and {hi}."),
        )),
        _ => Ok(()),
    }
}

impl SamplingFields {
    pub fn check(self, default_max_tokens: Option<usize>) -> Result<Sampling, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!(
                        "Invalid 'n': {n}. This server generates one choice per request (n=1)."
                    ),
                ));
            }
        }
        let max_tokens = match self.max_tokens {
            Some((param, v)) if v < 1 => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("Invalid '{param}': {v}. It must be at least 1."),
                ))
            }
            Some((_, v)) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
            None => default_max_tokens,
        };
        in_range("temperature", self.temperature, 0.0, 2.0)?;
        in_range("top_p", self.top_p, 0.0, 1.0)?;
        in_range("min_p", self.min_p, 0.0, 1.0)?;
        in_range("repeat_penalty", self.repeat_penalty, 0.0, 10.0)?;
        in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let stop: Vec<String> = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid_param(
                "stop",
                format!("Invalid 'stop': at most {MAX_STOPS} stop sequences are allowed."),
            ));
        }
        Ok(Sampling {
            max_tokens,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            params: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                // llama.cpp: top_k <= 0 disables it.
                top_k: self
                    .top_k
                    .map_or(0, |k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
                min_p: self.min_p.unwrap_or(0.0),
                repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
                // Negative seeds are valid in OpenAI's API; keep their bits.
                seed: self.seed.map_or_else(rand::random, |s| s as u64),
                ..SamplingParams::default()
            },
        })
    }
}
