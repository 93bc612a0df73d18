//! Friendly names for popular models exo-p2p runs, mapped to Hugging Face repos (like exo's model
//! list). Only architectures the engine supports (gemma3, qwen2, llama) are listed.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    /// The name users type: `exo-p2p run gemma-3-270m`.
    pub name: &'static str,
    /// `owner/repo` on the hub.
    pub repo: &'static str,
    /// Architecture as GGUF names it.
    pub arch: &'static str,
    /// Approximate size of the default (Q4_K_M) file, for `models list --available`.
    pub approx_bytes: u64,
}

const MB: u64 = 1_000_000;

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "gemma-3-270m",
        repo: "unsloth/gemma-3-270m-it-GGUF",
        arch: "gemma3",
        approx_bytes: 253 * MB,
    },
    CatalogEntry {
        name: "gemma-3-1b",
        repo: "unsloth/gemma-3-1b-it-GGUF",
        arch: "gemma3",
        approx_bytes: 806 * MB,
    },
    CatalogEntry {
        name: "gemma-3-4b",
        repo: "unsloth/gemma-3-4b-it-GGUF",
        arch: "gemma3",
        approx_bytes: 2_490 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-0.5b",
        repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 491 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-1.5b",
        repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 1_120 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-3b",
        repo: "Qwen/Qwen2.5-3B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 2_100 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-7b",
        repo: "Qwen/Qwen2.5-7B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 4_680 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b",
        repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 398 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-coder-1.5b",
        repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 1_120 * MB,
    },
    CatalogEntry {
        name: "qwen2.5-coder-7b",
        repo: "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF",
        arch: "qwen2",
        approx_bytes: 4_680 * MB,
    },
    CatalogEntry {
        name: "llama-3.2-1b",
        repo: "bartowski/Llama-3.2-1B-Instruct-GGUF",
        arch: "llama",
        approx_bytes: 808 * MB,
    },
    CatalogEntry {
        name: "llama-3.2-3b",
        repo: "bartowski/Llama-3.2-3B-Instruct-GGUF",
        arch: "llama",
        approx_bytes: 2_020 * MB,
    },
    CatalogEntry {
        name: "llama-3.1-8b",
        repo: "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
        arch: "llama",
        approx_bytes: 4_920 * MB,
    },
];

/// The catalog entry named `name` (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// The catalog entry for a repo, so listings can show the friendly name.
pub fn by_repo(repo: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.repo.eq_ignore_ascii_case(repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lowercase() {
        let mut names: Vec<_> = CATALOG.iter().map(|e| e.name).collect();
        assert!(names.iter().all(|n| *n == n.to_lowercase()));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
    }

    #[test]
    fn required_entries() {
        for (name, repo) in [
            (
                "qwen2.5-coder-0.5b",
                "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            ),
            ("gemma-3-270m", "unsloth/gemma-3-270m-it-GGUF"),
            ("llama-3.2-1b", "bartowski/Llama-3.2-1B-Instruct-GGUF"),
        ] {
            assert_eq!(lookup(name).unwrap().repo, repo);
            assert_eq!(by_repo(repo).unwrap().name, name);
        }
        assert_eq!(lookup("Gemma-3-270M").unwrap().name, "gemma-3-270m");
    }
}
