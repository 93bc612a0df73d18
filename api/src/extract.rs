//! Request bodies: read under the size limit and parsed as JSON, with every failure in OpenAI's
//! error shape (axum's own extractors answer in plain text).

use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::core::AppState;
use crate::error::ApiError;

/// A JSON object body, not yet typed: upstream requests are forwarded as the client sent them.
pub struct JsonObject(pub Value);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.body_limit;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        // A chunked body has no declared length: the limit applies while reading.
        let bytes = match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(ApiError::payload_too_large(limit)),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "Could not read the request body: {e}"
                )))
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "The request body is empty; send a JSON object.",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}."
            ))
            .with_code("invalid_json")
        })?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            ));
        }
        Ok(JsonObject(value))
    }
}

/// Types a JSON body, naming the offending field (`param`) when a type is wrong.
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            // A missing field: serde names it in the message.
            let field = inner
                .strip_prefix("missing field `")
                .and_then(|s| s.split('`').next())
                .map(str::to_owned);
            let err = ApiError::bad_request(format!("Invalid request: {inner}."));
            match field {
                Some(f) => err.with_param(f).with_code("missing_required_parameter"),
                None => err,
            }
        } else {
            ApiError::bad_request(format!("Invalid value for '{path}': {inner}."))
                .with_param(path)
                .with_code("invalid_type")
        }
    })
}
