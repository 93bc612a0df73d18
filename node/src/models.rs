//! The models this node can serve: each `--model` path, read once (shape, tokenizer, template).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use exo_engine::ModelInfo;
use exo_protocol::{LayerRange, ModelOffer};
use exo_store::{
    parse_reference, Downloader, HubRef, ModelRef, ModelStore, PullOptions, TerminalReporter,
    CATALOG,
};

/// A model reference made into a local path: a path as is; `owner/repo[:QUANT]` or a catalog
/// name from the store, or fetched (from peers first when the downloader has them, then the hub).
/// `metadata_only`: of a safetensors model with an index, only what describes it (a serving
/// node fetches its shard's weights when it is given layers, see [`Fetcher::shard_files`]).
pub async fn resolve(
    reference: &str,
    downloader: &Downloader,
    metadata_only: bool,
) -> Result<PathBuf> {
    let r = parse_reference(reference);
    if let ModelRef::Local(path) = &r {
        if !path.exists() {
            anyhow::bail!(
                "cannot read model {}: no such file (a Hugging Face model is `owner/repo[:QUANT]`; \
                 known names: {})",
                path.display(),
                CATALOG.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(path.clone());
    }
    if let Some(path) = resolve_local(reference, downloader.store(), metadata_only).await? {
        return Ok(path);
    }
    tracing::info!(model = reference, metadata_only, "downloading");
    let opts = PullOptions {
        metadata_only,
        ..Default::default()
    };
    let pulled = downloader
        .pull(&r, &opts)
        .await
        .with_context(|| format!("cannot fetch model {reference}"))?;
    Ok(pulled.path)
}

/// A reference that needs no download: a local path, or a model already in the store (with
/// `metadata_only`, a safetensors model's description is enough).
pub async fn resolve_local(
    reference: &str,
    store: &ModelStore,
    metadata_only: bool,
) -> Result<Option<PathBuf>> {
    match parse_reference(reference) {
        ModelRef::Local(path) if path.exists() => Ok(Some(path)),
        ModelRef::Local(_) => Ok(None),
        r => {
            let store = store.clone();
            Ok(tokio::task::spawn_blocking(move || {
                if metadata_only {
                    store.resolve_metadata(&r)
                } else {
                    store.resolve(&r, None)
                }
            })
            .await??)
        }
    }
}

/// [`resolve`] without a mesh: the whole model from the store, else the hub, with progress on
/// stderr.
pub async fn resolve_standalone(reference: &str) -> Result<PathBuf> {
    if let Some(path) = resolve_local(reference, &ModelStore::from_env(), false).await? {
        return Ok(path);
    }
    let downloader =
        Downloader::from_env()?.with_progress(std::sync::Arc::new(TerminalReporter::new()));
    resolve(reference, &downloader, false).await
}

type MakeDownloader = Box<dyn Fn() -> Result<Downloader> + Send + Sync>;

/// A serving node's downloads: models at start-up and the weight files of the layer ranges it is
/// given later. The downloader is made on first use, so a node whose models are all here starts
/// on machines without CA certificates (an HTTPS client needs them).
pub struct Fetcher {
    store: ModelStore,
    make: MakeDownloader,
    downloader: tokio::sync::OnceCell<Downloader>,
}

impl Fetcher {
    pub fn new(
        store: ModelStore,
        make: impl Fn() -> Result<Downloader> + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            make: Box::new(make),
            downloader: tokio::sync::OnceCell::new(),
        }
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    pub async fn downloader(&self) -> Result<&Downloader> {
        self.downloader
            .get_or_try_init(|| async { (self.make)() })
            .await
    }

    /// Makes the weights of `range` of `hub` available (the safetensors files holding it, or
    /// the byte ranges of a GGUF model's parts), from the store, peers or the hub. Returns the
    /// names of the files it had to fetch (whole or in part).
    pub async fn shard_files(&self, hub: &HubRef, range: LayerRange) -> Result<Vec<String>> {
        let r = ModelRef::Hub(hub.clone());
        let (store, r2) = (self.store.clone(), r.clone());
        if tokio::task::spawn_blocking(move || store.resolve(&r2, Some(&range)))
            .await??
            .is_some()
        {
            return Ok(Vec::new());
        }
        tracing::info!(repo = %hub.repo, %range, "fetching the weight files for the layers");
        let opts = PullOptions {
            layers: Some(range),
            prefer_local: true,
            ..Default::default()
        };
        let pulled = self
            .downloader()
            .await?
            .pull(&r, &opts)
            .await
            .with_context(|| format!("cannot fetch the weights of {hub} for layers {range}"))?;
        let weights = |fetched: bool| -> Vec<String> {
            pulled
                .files
                .iter()
                .filter(|f| {
                    let weights = f.name.ends_with(".safetensors") || f.name.ends_with(".gguf");
                    weights && (f.fetched || !fetched)
                })
                .map(|f| f.name.clone())
                .collect()
        };
        let fetched = weights(true);
        let bytes = pulled.fetched_bytes();
        tracing::info!(repo = %hub.repo, %range, files = ?weights(false), ?fetched, bytes, "weight files for the layers are here");
        Ok(fetched)
    }
}

pub struct LocalModel {
    pub path: PathBuf,
    pub info: Arc<ModelInfo>,
    /// Where to fetch the weight files of a layer range from, for a safetensors model served by
    /// reference (the node may hold only its description).
    pub hub: Option<HubRef>,
}

impl LocalModel {
    pub fn offer(&self) -> ModelOffer {
        ModelOffer {
            id: self.info.id.clone(),
            n_layers: self.info.n_layers(),
            bytes: self.info.weight_bytes,
            arch: self.info.spec.arch.clone(),
            layer_bytes: self.info.layer_bytes.clone(),
        }
    }
}

#[derive(Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, LocalModel>,
    /// The references models were started with (`qwen2.5-coder-0.5b`, `owner/repo:Q8_0`),
    /// accepted as names in requests.
    aliases: BTreeMap<String, String>,
}

impl ModelRegistry {
    /// Reads every model (in parallel with nothing else: this is start-up).
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        let mut models = BTreeMap::new();
        for path in paths {
            let info = ModelInfo::load(path)
                .with_context(|| format!("cannot serve model {}", path.display()))?;
            tracing::info!(model = %info.id, layers = info.n_layers(), path = %path.display(), "model available");
            models.insert(
                info.id.clone(),
                LocalModel {
                    path: path.clone(),
                    info: Arc::new(info),
                    hub: None,
                },
            );
        }
        Ok(Self {
            models,
            aliases: BTreeMap::new(),
        })
    }

    /// Records that the weights of model `id` come from `hub`: the node holds its description
    /// (a safetensors model's settings and index, a GGUF model's headers) and fetches a layer
    /// range's weights when it is given one.
    pub fn fetch_from(&mut self, id: &str, hub: HubRef) {
        if let Some(m) = self.models.get_mut(id) {
            m.hub = Some(hub);
        }
    }

    pub fn get(&self, id: &str) -> Option<&LocalModel> {
        self.models.get(id)
    }

    /// Records that `reference` names the model with id `id`.
    pub fn alias(&mut self, reference: &str, id: &str) {
        if reference != id && self.models.contains_key(id) {
            self.aliases.insert(reference.to_string(), id.to_string());
        }
    }

    /// The model id a request's name stands for.
    pub fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    pub fn offers(&self) -> Vec<ModelOffer> {
        self.models.values().map(LocalModel::offer).collect()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.models.keys()
    }
}

/// `exo-p2p models ...`.
pub async fn command(cmd: crate::cli::ModelsCommand) -> Result<()> {
    use crate::cli::ModelsCommand;
    let store = exo_store::ModelStore::from_env();
    match cmd {
        ModelsCommand::List => {
            let models = tokio::task::spawn_blocking(move || store.list()).await??;
            if models.is_empty() {
                eprintln!(
                    "no models in {} (fetch one with `exo-p2p models pull REF`)",
                    exo_store::ModelStore::default_root().display()
                );
                return Ok(());
            }
            println!(
                "{:<48} {:>9}  {:<8} {:<8} PATH",
                "MODEL", "SIZE", "ARCH", "QUANT"
            );
            for m in models {
                for f in m.files.iter().filter(|f| f.name.ends_with(".gguf")) {
                    let (arch, quant) = f.gguf.as_ref().map_or(("?", "?"), |g| {
                        (g.arch.as_str(), g.quant.as_deref().unwrap_or("?"))
                    });
                    println!(
                        "{:<48} {:>9}  {arch:<8} {quant:<8} {}{}",
                        m.repo,
                        human(f.size),
                        m.dir.join(&f.name).display(),
                        held(f.partial.as_ref())
                    );
                }
                if !m.files.iter().any(|f| f.name.ends_with(".gguf")) {
                    println!(
                        "{:<48} {:>9}  {:<8} {:<8} {}",
                        m.repo,
                        human(m.total_size),
                        "-",
                        "-",
                        m.dir.display()
                    );
                }
            }
        }
        ModelsCommand::Pull { reference } => {
            let path = resolve_standalone(&reference).await?;
            println!("{}", path.display());
        }
        ModelsCommand::Rm { reference } => {
            let r = parse_reference(&reference);
            let removed = tokio::task::spawn_blocking(move || store.remove(&r)).await??;
            eprintln!(
                "removed {} file(s), {} of {}",
                removed.files.len(),
                human(removed.bytes),
                removed.repo
            );
        }
        ModelsCommand::Catalog => {
            println!("{:<22} {:<48} {:<8} SIZE", "NAME", "REPOSITORY", "ARCH");
            for c in CATALOG {
                println!(
                    "{:<22} {:<48} {:<8} ~{}",
                    c.name,
                    c.repo,
                    c.arch,
                    human(c.approx_bytes)
                );
            }
        }
    }
    Ok(())
}

/// What of a GGUF file is here: nothing to say for a whole one.
fn held(partial: Option<&exo_store::Partial>) -> String {
    let Some(p) = partial else {
        return String::new();
    };
    if p.layers.is_empty() {
        return "  (partial: header only)".into();
    }
    let layers: Vec<String> = p
        .layers
        .iter()
        .map(|l| format!("{}..{}", l.start, l.end))
        .collect();
    format!(
        "  (partial: layers {} of {})",
        layers.join(", "),
        p.layers[0].n_layers
    )
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        b2 if b2 >= 1 << 30 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b2 if b2 >= 1 << 20 => format!("{:.0} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.0} KiB", b / 1024.0),
    }
}
