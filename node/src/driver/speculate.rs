//! Loading what `--draft` / `--lookup` ask for: the [`Speculation`] a driving node gives each of
//! its greedy requests.

use anyhow::{Context, Result};
use exo_engine::{ModelInfo, Speculation};

use crate::cli::SpeculationArgs;

impl SpeculationArgs {
    /// The speculation asked for, for requests to `target`; `None` without `--draft` or
    /// `--lookup`. A draft model is fetched like any model and refused when its tokenizer is
    /// not the target's.
    pub async fn load(&self, target: &ModelInfo) -> Result<Option<Speculation>> {
        if self.lookup {
            tracing::info!(model = %target.id, "speculative decoding by prompt lookup");
            return Ok(Some(Speculation::Lookup));
        }
        let Some(draft) = &self.draft else {
            return Ok(None);
        };
        let path = crate::models::resolve_standalone(draft)
            .await
            .with_context(|| format!("cannot get draft model {draft}"))?;
        let (tokenizer, id) = (target.tokenizer.clone(), target.id.clone());
        let spec =
            tokio::task::spawn_blocking(move || Speculation::load_draft(&path, &tokenizer, &id))
                .await??;
        tracing::info!(model = %target.id, draft = %spec.name(), "speculative decoding with a draft model");
        Ok(Some(spec))
    }
}
