//! Grammar-constrained decoding: a JSON schema compiled by llguidance into a matcher that, at
//! each step, gives the set of tokens of the model's vocabulary that keep the output inside the
//! grammar. The node that drives a request keeps the matcher; the mask travels with the step to
//! the stage that samples ([`exo_protocol::SamplingParams::allowed`]).

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use tokenizers::DecoderWrapper;

use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;
use exo_protocol::TokenMask;

fn grammar_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("{what}: {e}"))
}

/// A model's vocabulary as llguidance sees it (each token's bytes in a trie), built once per
/// model and shared by its requests.
pub struct ConstraintVocab {
    factory: ParserFactory,
}

impl ConstraintVocab {
    /// Builds the token trie of `tokenizer` (about 0.1-0.3 s for a 150k-token vocabulary).
    pub fn new(tokenizer: &TextTokenizer) -> Result<Self> {
        let words = token_bytes(tokenizer)?;
        let eog = tokenizer.eog_ids();
        let eos = eog.first().copied().unwrap_or(0);
        let info = TokRxInfo::new(words.len() as u32, eos);
        let mut trie = TokTrie::from(&info, &words);
        if eog.len() > 1 {
            trie = trie.with_eos_tokens(eog);
        }
        let env: TokEnv = Arc::new(Env {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| grammar_err("grammar setup", e))?;
        factory.quiet();
        Ok(Self { factory })
    }
}

struct Env {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer
                .inner()
                .encode(s, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// The bytes each token stands for: byte-level BPE tokens (Qwen, Llama 3) map their characters
/// back to bytes, SentencePiece tokens (Gemma) use `▁` for space and `<0xNN>` for raw bytes;
/// special tokens carry llguidance's marker so grammars never produce them by accident.
fn token_bytes(tokenizer: &TextTokenizer) -> Result<Vec<Vec<u8>>> {
    let hf = tokenizer.inner();
    let byte_level = match hf.get_decoder() {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(seq)) => seq
            .get_decoders()
            .iter()
            .any(|d| matches!(d, DecoderWrapper::ByteLevel(_))),
        _ => false,
    };
    let chars = byte_level_chars();
    let added = hf.get_added_tokens_decoder();
    let n = hf.get_vocab_size(true) as u32;
    let mut words = Vec::with_capacity(n as usize);
    for id in 0..n {
        let bytes = match (added.get(&id), hf.id_to_token(id)) {
            (Some(t), _) if t.special => {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(t.content.as_bytes());
                b
            }
            (Some(t), _) => t.content.as_bytes().to_vec(),
            (None, None) => Vec::new(),
            (None, Some(name)) if byte_level => name
                .chars()
                .map(|c| chars.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_default(),
            (None, Some(name)) => match byte_fallback(&name) {
                Some(b) => vec![b],
                None => name.replace('\u{2581}', " ").into_bytes(),
            },
        };
        words.push(bytes);
    }
    if words.iter().all(|w| w.is_empty()) {
        return Err(EngineError::Tokenizer(
            "the vocabulary has no tokens a grammar can use".into(),
        ));
    }
    Ok(words)
}

/// `<0x0A>` → 0x0A.
fn byte_fallback(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte-to-character table, inverted.
fn byte_level_chars() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = b as char;
        if matches!(c, '!'..='~' | '\u{a1}'..='\u{ac}' | '\u{ae}'..='\u{ff}') {
            map.insert(c, b);
        } else {
            map.insert(char::from_u32(next).expect("valid char"), b);
            next += 1;
        }
    }
    map
}

/// One request's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Output must be JSON matching `schema`. Whitespace is fixed (`, ` and `: `, no newlines)
    /// so a small model cannot wander off into endless blanks; unknown keywords are ignored.
    pub fn json_schema(vocab: &ConstraintVocab, schema: &Value) -> Result<Self> {
        let mut schema = schema.clone();
        if let Value::Object(map) = &mut schema {
            map.insert(
                "x-guidance".into(),
                serde_json::json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": ",
                    "lenient": true,
                }),
            );
        } else if schema != Value::Bool(true) {
            return Err(EngineError::Invalid(
                "a JSON schema must be an object".into(),
            ));
        }
        let parser = vocab
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| grammar_err("invalid JSON schema", e))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(grammar_err("invalid JSON schema", e));
        }
        Ok(Self { matcher })
    }

    /// The tokens the next step may sample (end of generation only, once the grammar is done).
    pub fn mask(&mut self) -> Result<TokenMask> {
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| grammar_err("grammar", e))?;
        Ok(TokenMask::from_words(vob.as_slice()))
    }

    /// Moves the grammar past the sampled `token`.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| grammar_err("grammar", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tables() {
        assert_eq!(byte_fallback("<0x0A>"), Some(10));
        assert_eq!(byte_fallback("<0x0>"), None);
        let chars = byte_level_chars();
        assert_eq!(chars.len(), 256);
        assert_eq!(chars[&'\u{120}'], b' ');
        assert_eq!(chars[&'a'], b'a');
    }
}
