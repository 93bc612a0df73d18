//! Tokenizers: `tokenizer.json` when the model ships one, otherwise built from the GGUF's
//! `tokenizer.ggml.*` metadata into a `tokenizers::Tokenizer`, reproducing llama.cpp's
//! tokenization:
//! - `gpt2` (byte-level BPE: Qwen2, Llama 3): vocab + merges and the pre-tokenizer regex named by
//!   `tokenizer.ggml.pre`;
//! - `llama` (SentencePiece BPE: Gemma, Llama 2): llama.cpp merges the adjacent pair whose
//!   concatenation is the highest-scoring token; that is BPE with merges ranked by score, with
//!   byte fallback for characters outside the vocabulary.

use tokenizers::{
    decoders::{
        byte_fallback::ByteFallback, byte_level::ByteLevel as ByteLevelDecoder, fuse::Fuse,
        sequence::Sequence as DecoderSequence, strip::Strip, DecoderWrapper,
    },
    models::bpe::{Vocab, BPE},
    normalizers::{replace::Replace, NormalizerWrapper, Prepend, Sequence as NormalizerSequence},
    pre_tokenizers::{
        byte_level::ByteLevel, sequence::Sequence, split::Split, split::SplitPattern,
        PreTokenizerWrapper,
    },
    AddedToken, SplitDelimiterBehavior, Tokenizer,
};

use std::sync::Arc;

use crate::{
    error::{EngineError, Result},
    source::{Meta, Source},
};

const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// A model's tokenizer together with the special ids generation needs. Cloning is cheap: the
/// vocabulary (hundreds of thousands of entries) is shared.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    bos: Option<u32>,
    add_bos: bool,
    /// Ids that end generation (end of sequence, end of turn).
    eog: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn strings(src: &Source, key: &str) -> Option<Vec<String>> {
    match src.meta(key)? {
        Meta::Gguf(v) => v
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        Meta::Json(_) => None,
    }
}

fn numbers(src: &Source, key: &str) -> Option<Vec<f64>> {
    match src.meta(key)? {
        Meta::Gguf(v) => v.as_array()?.iter().map(|v| v.as_f64()).collect(),
        Meta::Json(_) => None,
    }
}

impl TextTokenizer {
    pub fn from_source(src: &Source) -> Result<Self> {
        if src.is_gguf() {
            Self::from_gguf(src)
        } else {
            Self::from_json_dir(src)
        }
    }

    fn from_json_dir(src: &Source) -> Result<Self> {
        let path = src.path().join("tokenizer.json");
        let inner =
            Tokenizer::from_file(&path).map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        // tokenizer.json's post-processor adds BOS itself.
        let mut eog: Vec<u32> = match src.meta("eos_token_id") {
            Some(Meta::Json(serde_json::Value::Array(a))) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            Some(Meta::Json(v)) => v.as_u64().map(|v| v as u32).into_iter().collect(),
            _ => Vec::new(),
        };
        let gen_config = src.path().join("generation_config.json");
        if let Ok(bytes) = std::fs::read(gen_config) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                match &v["eos_token_id"] {
                    serde_json::Value::Array(a) => {
                        eog.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
                    }
                    v => eog.extend(v.as_u64().map(|v| v as u32)),
                }
            }
        }
        let mut t = Self {
            inner: Arc::new(inner),
            bos: None,
            add_bos: false,
            eog,
        };
        t.add_named_eog();
        Ok(t)
    }

    fn from_gguf(src: &Source) -> Result<Self> {
        let model = src.meta_str("tokenizer.ggml.model")?;
        let tokens = strings(src, "tokenizer.ggml.tokens")
            .ok_or_else(|| tok_err("GGUF has no tokenizer.ggml.tokens"))?;
        let types: Vec<i64> = numbers(src, "tokenizer.ggml.token_type")
            .map(|v| v.into_iter().map(|x| x as i64).collect())
            .unwrap_or_default();
        let mut inner = match model.as_str() {
            "gpt2" => byte_level_bpe(src, &tokens)?,
            "llama" => sentencepiece_bpe(src, &tokens)?,
            other => {
                return Err(tok_err(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
                )))
            }
        };
        // Control tokens (<|im_start|>, <start_of_turn>) and user-defined tokens are matched in
        // the text before the model runs, as llama.cpp does when it parses special tokens.
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, t) in types.iter().enumerate() {
            match *t {
                TOKEN_CONTROL => special.push(AddedToken::from(tokens[i].clone(), true)),
                TOKEN_USER_DEFINED => {
                    user.push(AddedToken::from(tokens[i].clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(special).map_err(tok_err)?;
        inner.add_tokens(user).map_err(tok_err)?;

        let id = |k: &str| src.meta_u32_opt(&format!("tokenizer.ggml.{k}"));
        let mut eog: Vec<u32> = ["eos_token_id", "eot_token_id", "eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        eog.retain(|&t| (t as usize) < tokens.len());
        let mut t = Self {
            inner: Arc::new(inner),
            bos: id("bos_token_id"),
            add_bos: src
                .meta_bool_opt("tokenizer.ggml.add_bos_token")
                .unwrap_or(model == "llama"),
            eog,
        };
        t.add_named_eog();
        Ok(t)
    }

    /// End-of-generation tokens llama.cpp recognises by name.
    fn add_named_eog(&mut self) {
        for name in [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|eom_id|>",
            "<EOT>",
            "<|end_of_text|>",
        ] {
            if let Some(id) = self.inner.token_to_id(name) {
                self.eog.push(id);
            }
        }
        self.eog.sort_unstable();
        self.eog.dedup();
    }

    /// Token ids for `text`; special tokens written in the text (`<|im_start|>`) become their
    /// ids. With `add_bos`, BOS is prepended when the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_bos).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model's metadata asks for BOS at the start of a text.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn byte_level_bpe(src: &Source, tokens: &[String]) -> Result<Tokenizer> {
    let merges: Vec<(String, String)> = strings(src, "tokenizer.ggml.merges")
        .ok_or_else(|| tok_err("GGUF BPE tokenizer has no tokenizer.ggml.merges"))?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("invalid merge `{m}`")))
        })
        .collect::<Result<_>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let pre = src
        .meta_str_opt("tokenizer.ggml.pre")
        .unwrap_or_else(|| "gpt2".into());
    let (regex, ignore_merges) = match pre.as_str() {
        "qwen2" | "deepseek-r1-qwen" => (QWEN2_REGEX, false),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => (LLAMA3_REGEX, true),
        _ => (GPT2_REGEX, false),
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut t = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    t.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ]))));
    t.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok(t)
}

fn sentencepiece_bpe(src: &Source, tokens: &[String]) -> Result<Tokenizer> {
    let scores = numbers(src, "tokenizer.ggml.scores")
        .ok_or_else(|| tok_err("GGUF SentencePiece tokenizer has no tokenizer.ggml.scores"))?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Every split of a token into two tokens is a merge; better-scoring results merge first.
    let mut ranked: Vec<(f64, u32, String, String)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        for (at, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                ranked.push((scores[id], id as u32, l.to_string(), r.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let unk = src
        .meta_u32_opt("tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let mut t = Tokenizer::new(builder.build().map_err(tok_err)?);
    let space_prefix = src
        .meta_bool_opt("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new("\u{2581}".into()).into());
    }
    normalizers.push(Replace::new(" ", "\u{2581}").map_err(tok_err)?.into());
    t.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(tok_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    t.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(t)
}
