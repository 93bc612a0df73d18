//! Which files of a repo a node needs: one GGUF file (or all parts of a split one) picked by
//! quantization tag, or a safetensors model's weights — only the shards holding a layer range
//! when the node runs one — plus its config and tokenizer files.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
};

use exo_engine::gguf::Header;
use exo_protocol::LayerRange;

use crate::{
    error::{DownloadError, Result},
    gguf_name,
    manifest::ModelFormat,
    reference::DEFAULT_QUANT,
    store::Need,
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
    /// The safetensors index to read before the weights can be picked.
    pub fn index(&self) -> Option<&str> {
        match self {
            Plan::Safetensors { index, .. } => index.as_deref(),
            Plan::Gguf { .. } => None,
        }
    }

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

/// What part of a model a tensor belongs to, by its GGUF or Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Layer(u32),
    Embedding,
    /// The final norm and the output projection.
    Head,
    /// Anything else outside the blocks (Llama 3's `rope_freqs`): small, read by every stage.
    Other,
}

fn role(tensor: &str) -> Role {
    if let Some(l) = layer_of(tensor).or_else(|| {
        let rest = tensor.strip_prefix("blk.")?;
        rest.split('.').next()?.parse().ok()
    }) {
        return Role::Layer(l);
    }
    let embedding = tensor.starts_with("token_embd.")
        || tensor.contains("embed_tokens")
        || tensor.contains("embed_in")
        || tensor.contains("wte.");
    let head = tensor.starts_with("output.")
        || tensor.starts_with("output_norm.")
        || tensor.contains("lm_head")
        || tensor.ends_with("norm.weight");
    match () {
        _ if embedding => Role::Embedding,
        _ if head => Role::Head,
        _ => Role::Other,
    }
}

/// Whether the stage running `range` reads `tensor`: its blocks, the embedding for the first
/// stage, the final norm and head (and the embedding, when the head is `tied` to it) for the last.
/// The one rule for both formats: it picks safetensors shards and GGUF byte ranges alike.
pub fn stage_reads(tensor: &str, range: &LayerRange, tied: bool) -> bool {
    match role(tensor) {
        Role::Layer(i) => range.start <= i && i < range.end,
        Role::Embedding => range.is_first() || (range.is_last() && tied),
        Role::Head => range.is_last(),
        Role::Other => true,
    }
}

/// Whether a model with these tensors has no output projection of its own (ties it to the
/// embedding).
pub fn is_tied<'a>(mut tensors: impl Iterator<Item = &'a str>) -> bool {
    !tensors.any(|t| t.starts_with("output.") || t.contains("lm_head"))
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
    let tied = is_tied(map.keys().map(String::as_str));
    let files: BTreeSet<String> = map
        .iter()
        .filter(|(tensor, _)| stage_reads(tensor, range, tied))
        .map(|(_, file)| file.clone())
        .collect();
    Ok(files.into_iter().collect())
}

/// The files of `plan` that `need` wants, with the path to open (relative to the model's
/// directory; empty: the directory). `index` is the safetensors index's bytes when the plan has
/// one (read or fetched by the caller first). GGUF parts are all wanted: which of their bytes
/// is [`gguf_ranges`]' question. The one answer for a pull and for the store's "is it here?".
pub(crate) fn wanted(
    repo: &str,
    plan: &Plan,
    index: Option<&[u8]>,
    need: Need,
) -> Result<(String, Vec<String>)> {
    match plan {
        Plan::Gguf { files, .. } => Ok((files[0].clone(), files.clone())),
        Plan::Safetensors { weights, side, .. } => {
            let weights = match index {
                Some(bytes) => match need {
                    Need::Layers(r) => files_for_layers(repo, bytes, &r)?,
                    Need::All => indexed_files(repo, bytes)?,
                    Need::Metadata => Vec::new(),
                },
                None => weights.clone(),
            };
            let mut wanted = side.clone();
            wanted.extend(weights);
            Ok((String::new(), wanted))
        }
    }
}

/// The byte ranges of one GGUF file (a whole model or one part) that `need` wants, sorted and
/// merged: the header always, then every tensor (`All`), or those a stage running the layers
/// reads (`tied`: of the whole model, see [`is_tied`]).
pub fn gguf_ranges(header: &Header, need: Need, tied: bool) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(header.tensors.len() + 1);
    out.push(0..header.data_offset);
    for t in &header.tensors {
        let wanted = match need {
            Need::All => true,
            Need::Metadata => false,
            Need::Layers(r) => stage_reads(&t.name, &r, tied),
        };
        if wanted {
            out.push(header.range(t));
        }
    }
    merge(out, header.alignment)
}

/// [`gguf_ranges`] for each part of a model (`headers` in part order): whether the head is
/// tied is a question about all of them.
pub fn gguf_wants(headers: &[&Header], need: Need) -> Vec<Vec<Range<u64>>> {
    let tied = is_tied(
        headers
            .iter()
            .flat_map(|h| h.tensors.iter().map(|t| t.name.as_str())),
    );
    headers.iter().map(|h| gguf_ranges(h, need, tied)).collect()
}

/// Sorts and merges ranges, joining those apart by less than `gap` (alignment padding).
pub fn merge(mut ranges: Vec<Range<u64>>, gap: u64) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end + gap => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The parts of `wanted` not in `held` (both sorted and merged).
pub fn missing(wanted: &[Range<u64>], held: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for w in wanted {
        let mut at = w.start;
        for h in held.iter().filter(|h| h.end > w.start && h.start < w.end) {
            if h.start > at {
                out.push(at..h.start);
            }
            at = at.max(h.end);
        }
        if at < w.end {
            out.push(at..w.end);
        }
    }
    out
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
    #[allow(clippy::single_range_in_vec_init)]
    fn ranges_merge_and_subtract() {
        assert_eq!(
            merge(vec![10..20, 0..5, 6..8, 20..30], 1),
            vec![0..8, 10..30]
        );
        assert_eq!(merge(vec![0..5, 7..9], 0), vec![0..5, 7..9]);
        let held = [0..5, 10..12];
        assert_eq!(missing(&[0..20], &held), vec![5..10, 12..20]);
        assert_eq!(missing(&[2..4, 10..12], &held), Vec::<Range<u64>>::new());
        assert_eq!(missing(&[3..11], &held), vec![5..10]);
    }

    #[test]
    fn stages_read_their_blocks_and_the_ends() {
        let first = LayerRange::new(0, 2, 4);
        let last = LayerRange::new(2, 4, 4);
        assert!(stage_reads("blk.1.attn_q.weight", &first, true));
        assert!(!stage_reads("blk.2.attn_q.weight", &first, true));
        assert!(stage_reads("token_embd.weight", &first, false));
        assert!(!stage_reads("token_embd.weight", &last, false));
        assert!(stage_reads("token_embd.weight", &last, true));
        assert!(stage_reads("output_norm.weight", &last, true));
        assert!(!stage_reads("output.weight", &first, false));
        // Small tensors outside the blocks (rope factors) go to every stage.
        assert!(stage_reads("rope_freqs.weight", &first, false));
        assert!(is_tied(["token_embd.weight", "blk.0.x"].into_iter()));
        assert!(!is_tied(["output.weight"].into_iter()));
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
