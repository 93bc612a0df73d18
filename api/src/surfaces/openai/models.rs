//! `GET /v1/models` and `GET /v1/models/{id}`: the mesh's models, then upstream ones.

use axum::extract::{Path, State};
use axum::Json;

use crate::backend::ModelCard;
use crate::core::AppState;
use crate::error::ApiError;
use crate::surfaces::openai::types::{ModelList, ModelObject};

async fn all_models(state: &AppState) -> Vec<ModelCard> {
    let (mesh, upstream) = futures::join!(state.backend.models(), state.upstream.models());
    // Requests are routed upstream by name before the mesh is asked, so a name an upstream
    // provider claims is listed as that provider's.
    let mut cards: Vec<ModelCard> = mesh
        .into_iter()
        .filter(|c| state.upstream.config.route(&c.id).is_none())
        .collect();
    for card in upstream {
        if !cards.iter().any(|c| c.id == card.id) {
            cards.push(card);
        }
    }
    cards
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let data = all_models(&state)
        .await
        .into_iter()
        .map(ModelObject::from)
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Model ids may hold slashes (`org/name`, `openai/gpt-4o`): the route captures the rest.
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    if let Some(card) = all_models(&state).await.into_iter().find(|c| c.id == id) {
        return Ok(Json(card.into()));
    }
    // A prefix routes every model under it, listed or not.
    if let Some((provider, _)) = state.upstream.config.route(&id) {
        return Ok(Json(ModelObject::from(ModelCard {
            id,
            owned_by: provider.name.clone(),
            created: 0,
            context_length: None,
        })));
    }
    Err(ApiError::model_not_found(&id))
}
