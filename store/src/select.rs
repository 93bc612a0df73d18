//! Which files of a repo a node needs: one GGUF file (or all parts of a split one) picked by
//! quantization tag, or a safetensors model's weights — only the shards holding a layer range
//! when the node runs one — plus its config and tokenizer files.

use std::collections::{BTreeMap, BTreeSet};

use exo_protocol::LayerRange;

use crate::{
    error::{DownloadError, Result},
    gguf_name,
    manifest::ModelFormat,
    reference::DEFAULT_QUANT,
};

pub use exo_engine::source::SAFETENSORS_INDEX;

/// Settings and tokenizer files a safetensors model needs beside its weights, when present.
pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    SAFETENSORS_INDEX,
];

/// When no quantization is named and the repo has no Q4_K_M, the first of these it has.
const FALLBACK_QUANTS: &[&str] = &[
    "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q6_K", "Q8_0", "BF16", "F16",
];

/// What to fetch from a repo, before the safetensors index is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Gguf {
        /// All parts, in order; the first is the file to open.
        files: Vec<String>,
        quant: Option<String>,
    },
    Safetensors {
        /// `model.safetensors.index.json` when the weights are sharded.
        index: Option<String>,
        /// Every weight file at the repo's top level (narrowed by the index and a layer range).
        weights: Vec<String>,
        side: Vec<String>,
    },
}

impl Plan {
    pub fn format(&self) -> ModelFormat {
        match self {
            Plan::Gguf { .. } => ModelFormat::Gguf,
            Plan::Safetensors { .. } => ModelFormat::Safetensors,
        }
    }
}

/// Picks the files for `quant` (`None`: the default) from a repo's file names.
pub fn plan(repo: &str, files: &[String], quant: Option<&str>) -> Result<Plan> {
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| gguf_name::is_gguf(f) && !gguf_name::is_side_file(f))
        .collect();
    if ggufs.is_empty() {
        if let Some(q) = quant {
            return Err(DownloadError::QuantNotFound {
                repo: repo.into(),
                quant: q.into(),
                available: "none (the repo has no GGUF files)".into(),
            });
        }
        return plan_safetensors(repo, files);
    }
    // Split parts of one model share a set name.
    let mut sets: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for f in ggufs {
        sets.entry(gguf_name::split_set(f)).or_default().push(f);
    }
    let pick = |tag: &str| -> Option<&String> {
        // The shortest matching name: `m-Q4_K_M` before `m-Q4_K_M-extra`.
        sets.keys()
            .filter(|set| gguf_name::has_quant(set, tag))
            .min_by_key(|set| (set.len(), set.to_string()))
    };
    let chosen = match quant {
        Some(q) => pick(q).ok_or_else(|| DownloadError::QuantNotFound {
            repo: repo.into(),
            quant: q.into(),
            available: available_quants(&sets),
        })?,
        None => pick(DEFAULT_QUANT)
            .or_else(|| FALLBACK_QUANTS.iter().find_map(|q| pick(q)))
            .or_else(|| sets.keys().next())
            .expect("at least one GGUF set"),
    };
    let mut parts: Vec<String> = sets[chosen].iter().map(|s| s.to_string()).collect();
    if let Some((_, count)) = gguf_name::split_part(&parts[0]) {
        parts.sort_by_key(|p| gguf_name::split_part(p).map(|(i, _)| i));
        let have: Vec<u32> = parts
            .iter()
            .filter_map(|p| gguf_name::split_part(p).map(|(i, _)| i))
            .collect();
        if have != (1..=count).collect::<Vec<_>>() {
            return Err(DownloadError::BadIndex {
                repo: repo.into(),
                reason: format!("split GGUF {chosen} lists parts {have:?} of {count}"),
            });
        }
    } else if parts.len() > 1 {
        // Same name in two folders: take the shortest path.
        parts.sort_by_key(|p| (p.len(), p.clone()));
        parts.truncate(1);
    }
    let quant = gguf_name::quant_in_name(&parts[0]).or(quant.map(str::to_string));
    tracing::debug!(repo, ?parts, ?quant, "picked GGUF");
    Ok(Plan::Gguf {
        files: parts,
        quant,
    })
}

fn available_quants(sets: &BTreeMap<String, Vec<&String>>) -> String {
    let tags: BTreeSet<String> = sets
        .values()
        .filter_map(|files| gguf_name::quant_in_name(files[0]))
        .collect();
    if tags.is_empty() {
        sets.keys().cloned().collect::<Vec<_>>().join(", ")
    } else {
        tags.into_iter().collect::<Vec<_>>().join(", ")
    }
}

fn plan_safetensors(repo: &str, files: &[String]) -> Result<Plan> {
    let top: Vec<&String> = files.iter().filter(|f| !f.contains('/')).collect();
    let weights: Vec<String> = top
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .map(|f| f.to_string())
        .collect();
    if weights.is_empty() {
        return Err(DownloadError::NoModelFiles { repo: repo.into() });
    }
    let has = |n: &str| top.iter().any(|f| *f == n);
    let index = has(SAFETENSORS_INDEX).then(|| SAFETENSORS_INDEX.to_string());
    let side = SIDE_FILES
        .iter()
        .filter(|n| has(n))
        .map(|n| n.to_string())
        .collect();
    Ok(Plan::Safetensors {
        index,
        weights,
        side,
    })
}

/// `model.safetensors.index.json`'s tensor -> file map.
fn weight_map(repo: &str, index_json: &[u8]) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(index_json).map_err(|e| DownloadError::BadIndex {
        repo: repo.into(),
        reason: format!("{SAFETENSORS_INDEX}: {e}"),
    })?;
    Ok(index.weight_map)
}

/// Every weight file the index names (repos sometimes hold extra `consolidated.safetensors`).
pub fn indexed_files(repo: &str, index_json: &[u8]) -> Result<Vec<String>> {
    let files: BTreeSet<String> = weight_map(repo, index_json)?.into_values().collect();
    Ok(files.into_iter().collect())
}

/// The layer a tensor belongs to: `model.layers.12.mlp.up_proj.weight` -> 12.
pub fn layer_of(tensor: &str) -> Option<u32> {
    let at = tensor.find("layers.")?;
    let rest = &tensor[at + "layers.".len()..];
    let (n, _) = rest.split_once('.')?;
    let before_ok = at == 0 || tensor.as_bytes()[at - 1] == b'.';
    before_ok.then(|| n.parse().ok()).flatten()
}

fn is_embedding(tensor: &str) -> bool {
    tensor.contains("embed_tokens") || tensor.contains("embed_in") || tensor.contains("wte.")
}

/// The weight files holding `range`'s layers, plus the embedding for the first shard and the
/// final norm and head (and the embedding, when the head is tied to it) for the last.
pub fn files_for_layers(repo: &str, index_json: &[u8], range: &LayerRange) -> Result<Vec<String>> {
    let map = weight_map(repo, index_json)?;
    let n_layers = map
        .keys()
        .filter_map(|t| layer_of(t))
        .max()
        .map_or(0, |m| m + 1);
    if range.n_layers != n_layers || range.start >= range.end || range.end > n_layers {
        return Err(DownloadError::BadIndex {
            repo: repo.into(),
            reason: format!(
                "layers {}..{} of {} asked for, but {SAFETENSORS_INDEX} has {n_layers} layers",
                range.start, range.end, range.n_layers
            ),
        });
    }
    let tied = !map.keys().any(|t| t.contains("lm_head"));
    let mut files = BTreeSet::new();
    for (tensor, file) in &map {
        let wanted = match layer_of(tensor) {
            Some(i) => range.start <= i && i < range.end,
            None if is_embedding(tensor) => range.is_first() || (range.is_last() && tied),
            // Final norm, lm_head and anything else outside the blocks.
            None => range.is_last(),
        };
        if wanted {
            files.insert(file.clone());
        }
    }
    Ok(files.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gguf_by_quant_default_and_case() {
        let files = names(&[
            "README.md",
            "m-Q8_0.gguf",
            "m-q4_k_m.gguf",
            "m-Q4_K_S.gguf",
            "mmproj-m-Q4_K_M.gguf",
        ]);
        let p = plan("a/b", &files, None).unwrap();
        assert_eq!(
            p,
            Plan::Gguf {
                files: names(&["m-q4_k_m.gguf"]),
                quant: Some("Q4_K_M".into())
            }
        );
        let Plan::Gguf { files: f, .. } = plan("a/b", &files, Some("q8_0")).unwrap() else {
            panic!()
        };
        assert_eq!(f, names(&["m-Q8_0.gguf"]));
        let err = plan("a/b", &files, Some("Q2_K")).unwrap_err().to_string();
        assert!(
            err.contains("Q2_K") && err.contains("Q4_K_M, Q4_K_S, Q8_0"),
            "{err}"
        );
    }

    #[test]
    fn gguf_fallback_without_default() {
        let files = names(&["m-Q8_0.gguf", "m-F16.gguf"]);
        let Plan::Gguf { files: f, .. } = plan("a/b", &files, None).unwrap() else {
            panic!()
        };
        assert_eq!(f, names(&["m-Q8_0.gguf"]));
    }

    #[test]
    fn split_gguf_takes_all_parts_in_order() {
        let files = names(&[
            "Q4_K_M/m-Q4_K_M-00003-of-00003.gguf",
            "Q4_K_M/m-Q4_K_M-00001-of-00003.gguf",
            "Q4_K_M/m-Q4_K_M-00002-of-00003.gguf",
            "Q8_0/m-Q8_0-00001-of-00002.gguf",
            "Q8_0/m-Q8_0-00002-of-00002.gguf",
        ]);
        let Plan::Gguf { files: f, .. } = plan("a/b", &files, None).unwrap() else {
            panic!()
        };
        assert_eq!(f.len(), 3);
        assert!(f[0].ends_with("00001-of-00003.gguf") && f[2].ends_with("00003-of-00003.gguf"));
        let err = plan("a/b", &files[1..], None).unwrap_err().to_string();
        assert!(err.contains("parts [1, 2] of 3"), "{err}");
    }

    #[test]
    fn safetensors_plan() {
        let files = names(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            SAFETENSORS_INDEX,
            "tokenizer.json",
            "onnx/model.safetensors",
            "README.md",
        ]);
        let Plan::Safetensors {
            index,
            weights,
            side,
        } = plan("a/b", &files, None).unwrap()
        else {
            panic!()
        };
        assert_eq!(index.as_deref(), Some(SAFETENSORS_INDEX));
        assert_eq!(weights.len(), 2);
        assert_eq!(
            side,
            names(&["config.json", "tokenizer.json", SAFETENSORS_INDEX])
        );
        assert!(plan("a/b", &files, Some("Q4_K_M")).is_err());
        assert!(matches!(
            plan("a/b", &names(&["README.md"]), None),
            Err(DownloadError::NoModelFiles { .. })
        ));
    }

    #[test]
    fn layers_of_tensor_names() {
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_of("model.language_model.layers.3.x"), Some(3));
        assert_eq!(layer_of("model.norm.weight"), None);
        assert_eq!(layer_of("model.sublayers.3.x"), None);
    }

    fn index(tied: bool) -> Vec<u8> {
        // 4 layers over 3 files: embed + layer 0-1 in 1, layers 2 in 2, layer 3 + norm (+ head) in 3.
        let mut map = serde_json::json!({
            "model.embed_tokens.weight": "s1",
            "model.layers.0.self_attn.q_proj.weight": "s1",
            "model.layers.1.self_attn.q_proj.weight": "s1",
            "model.layers.1.mlp.up_proj.weight": "s2",
            "model.layers.2.self_attn.q_proj.weight": "s2",
            "model.layers.3.self_attn.q_proj.weight": "s3",
            "model.norm.weight": "s3",
        });
        if !tied {
            map["lm_head.weight"] = "s3".into();
        }
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap()
    }

    #[test]
    fn layer_ranges_pick_only_needed_shards() {
        let idx = index(false);
        let r = |s, e| LayerRange::new(s, e, 4);
        assert_eq!(
            files_for_layers("a/b", &idx, &r(0, 1)).unwrap(),
            names(&["s1"])
        );
        assert_eq!(
            files_for_layers("a/b", &idx, &r(0, 2)).unwrap(),
            names(&["s1", "s2"])
        );
        assert_eq!(
            files_for_layers("a/b", &idx, &r(2, 3)).unwrap(),
            names(&["s2"])
        );
        assert_eq!(
            files_for_layers("a/b", &idx, &r(3, 4)).unwrap(),
            names(&["s3"])
        );
        assert_eq!(
            files_for_layers("a/b", &idx, &r(0, 4)).unwrap(),
            names(&["s1", "s2", "s3"])
        );
        // A tied head reads the embedding, so the last shard needs its file too.
        assert_eq!(
            files_for_layers("a/b", &index(true), &r(3, 4)).unwrap(),
            names(&["s1", "s3"])
        );
        assert!(files_for_layers("a/b", &idx, &LayerRange::new(0, 2, 8)).is_err());
        assert_eq!(
            indexed_files("a/b", &idx).unwrap(),
            names(&["s1", "s2", "s3"])
        );
    }
}
