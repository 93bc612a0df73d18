//! What users type to name a model: a local path, a catalog name, or `owner/repo[:QUANT]` as in
//! llama.cpp's `-hf` (QUANT picks the GGUF file by its quantization tag, default Q4_K_M).

use std::{fmt, path::PathBuf};

use crate::catalog;

/// The quantization picked from a GGUF repo when the reference names none.
pub const DEFAULT_QUANT: &str = "Q4_K_M";
/// The branch pulled when none is given.
pub const DEFAULT_REVISION: &str = "main";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A GGUF file or safetensors directory on this machine.
    Local(PathBuf),
    /// A model repo on the hub (or held by peers).
    Hub(HubRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/repo`.
    pub repo: String,
    /// The quantization tag asked for, upper-cased; `None` means the default (Q4_K_M) when the
    /// repo has GGUF files.
    pub quant: Option<String>,
    pub revision: String,
    /// The catalog name the user typed, if any.
    pub alias: Option<String>,
}

impl HubRef {
    pub fn new(repo: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            quant: None,
            revision: DEFAULT_REVISION.into(),
            alias: None,
        }
    }

    pub fn with_quant(mut self, quant: impl Into<String>) -> Self {
        self.quant = Some(quant.into().to_ascii_uppercase());
        self
    }

    /// The quantization tag a GGUF file must carry.
    pub fn quant_or_default(&self) -> &str {
        self.quant.as_deref().unwrap_or(DEFAULT_QUANT)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Local(p) => write!(f, "{}", p.display()),
            ModelRef::Hub(h) => write!(f, "{h}"),
        }
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(q) = &self.quant {
            write!(f, ":{q}")?;
        }
        Ok(())
    }
}

/// Parses a model reference. An existing path is always local; so is anything that looks like a
/// path (`./x`, `/x`, `~/x`, `x.gguf`, more than one `/`). Otherwise a catalog name or
/// `owner/repo`, each with an optional `:QUANT`; `hf.co/` and `https://huggingface.co/` prefixes
/// are accepted. Anything else is taken as a (missing) local path, which the store reports with
/// the catalog's names.
pub fn parse_reference(s: &str) -> ModelRef {
    let s = s.trim();
    let as_path = PathBuf::from(s);
    if s.is_empty() || as_path.exists() {
        return ModelRef::Local(as_path);
    }
    if let Some(rest) = s.strip_prefix("~/") {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        return ModelRef::Local(home.join(rest));
    }
    let stripped = [
        "https://huggingface.co/",
        "http://huggingface.co/",
        "huggingface.co/",
        "hf.co/",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    let looks_like_path = stripped.starts_with(['/', '.'])
        || stripped.contains('\\')
        || stripped.to_ascii_lowercase().ends_with(".gguf")
        || stripped.matches('/').count() > 1;
    if looks_like_path {
        return ModelRef::Local(as_path);
    }
    let (name, quant) = match stripped.rsplit_once(':') {
        Some((name, q)) if !q.is_empty() && is_repo_part(q) => (name, Some(q)),
        _ => (stripped, None),
    };
    let quant = quant.map(str::to_ascii_uppercase);
    if let Some(entry) = catalog::lookup(name) {
        return ModelRef::Hub(HubRef {
            repo: entry.repo.to_string(),
            quant,
            revision: DEFAULT_REVISION.into(),
            alias: Some(entry.name.to_string()),
        });
    }
    match name.split_once('/') {
        Some((owner, repo)) if is_repo_part(owner) && is_repo_part(repo) => ModelRef::Hub(HubRef {
            repo: name.to_string(),
            quant,
            revision: DEFAULT_REVISION.into(),
            alias: None,
        }),
        _ => ModelRef::Local(as_path),
    }
}

/// Characters the hub allows in owner and repo names (and quant tags); `--` and `..` are not.
fn is_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.contains("--")
        && !s.contains("..")
        && !s.starts_with(['-', '.'])
}

/// The catalog's names, for error messages.
pub(crate) fn catalog_names() -> String {
    catalog::CATALOG
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(s: &str) -> HubRef {
        match parse_reference(s) {
            ModelRef::Hub(h) => h,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn owner_repo_with_and_without_quant() {
        let h = hub("Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(h.repo, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(h.quant, None);
        assert_eq!(h.quant_or_default(), "Q4_K_M");
        assert_eq!(h.revision, "main");
        let h = hub("bartowski/Llama-3.2-1B-Instruct-GGUF:q8_0");
        assert_eq!(h.repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(h.quant.as_deref(), Some("Q8_0"));
        assert_eq!(h.to_string(), "bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0");
    }

    #[test]
    fn catalog_names_map_to_repos() {
        let h = hub("qwen2.5-coder-0.5b");
        assert_eq!(h.repo, "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF");
        assert_eq!(h.alias.as_deref(), Some("qwen2.5-coder-0.5b"));
        let h = hub("Gemma-3-270M:Q8_0");
        assert_eq!(h.repo, "unsloth/gemma-3-270m-it-GGUF");
        assert_eq!(h.quant.as_deref(), Some("Q8_0"));
        assert!(hub("llama-3.2-1b").repo.contains("Llama-3.2-1B-Instruct"));
    }

    #[test]
    fn hub_url_prefixes() {
        assert_eq!(
            hub("hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M").repo,
            "unsloth/gemma-3-270m-it-GGUF"
        );
        assert_eq!(hub("https://huggingface.co/a/b").repo, "a/b");
    }

    #[test]
    fn paths_are_local() {
        for s in [
            "./model.gguf",
            "/models/x",
            "models/a/b.gguf",
            "x.GGUF",
            "a/b/c",
            "..\\x",
        ] {
            assert!(matches!(parse_reference(s), ModelRef::Local(_)), "{s}");
        }
        assert_eq!(
            parse_reference("/tmp/q.gguf"),
            ModelRef::Local(PathBuf::from("/tmp/q.gguf"))
        );
        // Not a catalog name nor owner/repo: a (missing) local path.
        assert!(matches!(
            parse_reference("no-such-model"),
            ModelRef::Local(_)
        ));
        assert!(matches!(parse_reference("a--b/c"), ModelRef::Local(_)));
    }

    #[test]
    fn existing_path_wins_over_repo_syntax() {
        // Unit tests run in the crate's directory, where `src/pull` exists.
        assert_eq!(
            parse_reference("src/pull"),
            ModelRef::Local(PathBuf::from("src/pull"))
        );
    }

    #[test]
    fn home_is_expanded() {
        let ModelRef::Local(p) = parse_reference("~/m.gguf") else {
            panic!()
        };
        assert!(p.ends_with("m.gguf") && !p.starts_with("~"));
    }
}
