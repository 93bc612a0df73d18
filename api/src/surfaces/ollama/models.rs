//! `/api/tags`, `/api/show`, `/api/ps`, `/api/version`: the mesh's models in Ollama's shapes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::ModelCard;
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::surfaces::ollama::{rfc3339, OLLAMA_VERSION};

fn details() -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "",
        "families": null,
        "parameter_size": "",
        "quantization_level": "",
    })
}

fn entry(card: &ModelCard) -> Value {
    json!({
        "name": card.id,
        "model": card.id,
        "modified_at": rfc3339(card.created),
        "size": 0,
        "digest": "",
        "details": details(),
    })
}

/// Models of the mesh only (upstream ones are not served on this surface).
async fn mesh_models(state: &AppState) -> Vec<ModelCard> {
    state
        .backend
        .models()
        .await
        .into_iter()
        .filter(|m| m.owned_by == "exo-p2p")
        .collect()
}

pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = mesh_models(&state).await.iter().map(entry).collect();
    Json(json!({ "models": models }))
}

pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = mesh_models(&state)
        .await
        .iter()
        .map(|m| {
            let mut e = entry(m);
            e["expires_at"] = json!("0001-01-01T00:00:00Z");
            e["size_vram"] = json!(0);
            e
        })
        .collect();
    Json(json!({ "models": models }))
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_VERSION }))
}

#[derive(Deserialize)]
struct ShowRequest {
    /// `name` is the older spelling.
    model: Option<String>,
    name: Option<String>,
}

pub async fn show(
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let req: ShowRequest = typed(body)?;
    let Some(model) = req.model.or(req.name) else {
        return Err(ApiError::invalid_param("model", "model is required"));
    };
    let Some(card) = mesh_models(&state)
        .await
        .into_iter()
        .find(|m| m.id == model)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model '{model}' not found"),
        ));
    };
    let mut info = json!({ "general.name": card.id });
    if let Some(n) = card.context_length {
        info["context_length"] = json!(n);
    }
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(),
        "model_info": info,
        "capabilities": ["completion", "tools"],
        "modified_at": rfc3339(card.created),
    })))
}
