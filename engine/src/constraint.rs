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
    use std::path::PathBuf;

    use exo_protocol::SamplingParams;
    use serde_json::json;

    use super::*;
    use crate::{sampling::Sampler, ModelInfo};

    const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

    /// A real test model's tokenizer (scripts/fetch-test-models.sh; EXO_TEST_MODELS).
    fn tokenizer(name: &str) -> TextTokenizer {
        let dir = std::env::var("EXO_TEST_MODELS").map_or_else(
            |_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/exo-p2p/test-models")
            },
            PathBuf::from,
        );
        let path = dir.join(name);
        assert!(
            path.exists(),
            "test model {} is missing: run scripts/fetch-test-models.sh (or set EXO_TEST_MODELS)",
            path.display()
        );
        ModelInfo::load(&path).expect("test model loads").tokenizer
    }

    fn weather() -> Value {
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": false,
        })
    }

    /// Every string, number and list is bounded, so any path through the grammar ends.
    fn person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "languages": {"type": "array", "items": {"type": "string", "maxLength": 8},
                              "minItems": 1, "maxItems": 3},
                "role": {"enum": ["dev", "ops"]},
            },
            "required": ["name", "age", "languages", "role"],
            "additionalProperties": false,
        })
    }

    fn allowed(mask: &TokenMask, n: usize) -> Vec<u32> {
        (0..n as u32).filter(|&id| mask.allows(id)).collect()
    }

    #[test]
    fn byte_tables() {
        assert_eq!(byte_fallback("<0x0A>"), Some(10));
        assert_eq!(byte_fallback("<0x0>"), None);
        let chars = byte_level_chars();
        assert_eq!(chars.len(), 256);
        assert_eq!(chars[&'\u{120}'], b' ');
        assert_eq!(chars[&'a'], b'a');
    }

    #[test]
    fn token_bytes_spell_what_the_tokenizer_encodes() {
        // Byte-level BPE (Qwen) and SentencePiece with byte fallback (Gemma).
        for name in [QWEN, GEMMA] {
            let tok = tokenizer(name);
            let words = token_bytes(&tok).unwrap();
            for text in [
                "{\"name\": \"Zoë\", \"age\": 42}\n",
                "naïve café — 東京 🙂\t[1, 2]",
            ] {
                let ids = tok.encode(text, false).unwrap();
                let spelled: Vec<u8> = ids
                    .iter()
                    .flat_map(|&id| words[id as usize].clone())
                    .collect();
                // SentencePiece prepends a space to the text it encodes.
                let spelled = spelled
                    .strip_prefix(b" ")
                    .filter(|_| !text.starts_with(' '))
                    .unwrap_or(&spelled);
                assert_eq!(String::from_utf8_lossy(spelled), text, "{name}");
            }
            for &eog in tok.eog_ids() {
                assert_eq!(
                    words[eog as usize][0],
                    TokTrie::SPECIAL_TOKEN_MARKER,
                    "{name}: eog {eog}"
                );
            }
        }
    }

    #[test]
    fn masks_allow_only_valid_continuations() {
        let tok = tokenizer(QWEN);
        let n = tok.vocab_size();
        let words = token_bytes(&tok).unwrap();
        let vocab = ConstraintVocab::new(&tok).unwrap();
        let mut c = Constraint::json_schema(&vocab, &weather()).unwrap();

        // The output must open the object: every allowed token spells a prefix of `{"city": "`
        // or starts with it (then the city's text), and prose or end-of-generation is refused.
        let first = allowed(&c.mask().unwrap(), n);
        assert!(!first.is_empty());
        let opening = b"{\"city\": \"";
        for &id in &first {
            let w = &words[id as usize];
            assert!(
                opening.starts_with(w) || w.starts_with(opening),
                "token {id} {:?} allowed first",
                String::from_utf8_lossy(w)
            );
        }
        // The forced opening is offered as the tokenizer would split it (`{"` here), not `{`.
        let canonical = tok.encode("{\"city\": \"", false).unwrap();
        assert!(first.contains(&canonical[0]), "{first:?}");
        for refused in ["Hello", " {", "\n", "["] {
            let id = tok.encode(refused, false).unwrap()[0];
            assert!(!first.contains(&id), "{refused:?} allowed first");
        }
        assert!(tok.eog_ids().iter().all(|e| !first.contains(e)));

        // The tokenizer's split of a valid prefix is accepted; then only the enum's values fit.
        for id in tok
            .encode("{\"city\": \"Paris\", \"unit\": \"", false)
            .unwrap()
        {
            c.advance(id).unwrap();
        }
        let unit = allowed(&c.mask().unwrap(), n);
        assert!(!unit.is_empty());
        for &id in &unit {
            let w = &words[id as usize];
            assert!(
                [&b"celsius\"}"[..], b"fahrenheit\"}"]
                    .iter()
                    .any(|v| v.starts_with(w)),
                "token {id} {:?} allowed in the enum",
                String::from_utf8_lossy(w)
            );
        }
        for id in tok.encode("celsius\"}", false).unwrap() {
            c.advance(id).unwrap();
        }
        // Done: end of generation and nothing else.
        let end = allowed(&c.mask().unwrap(), n);
        assert!(
            !end.is_empty() && end.iter().all(|id| tok.eog_ids().contains(id)),
            "{end:?}"
        );
    }

    /// A seeded stand-in for a model: random logits, optionally pushing hard toward what a
    /// grammar must refuse (ending at once, blanks, prose).
    fn fake_logits(state: &mut u64, n: usize, hostile: &[u32]) -> Vec<f32> {
        let mut logits: Vec<f32> = (0..n)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 40) as f32 / (1u64 << 24) as f32 * 10.0
            })
            .collect();
        for &id in hostile {
            logits[id as usize] += 1000.0;
        }
        logits
    }

    #[test]
    fn random_and_hostile_models_still_write_schema_valid_json() {
        for name in [QWEN, GEMMA] {
            let tok = tokenizer(name);
            let n = tok.vocab_size();
            let vocab = ConstraintVocab::new(&tok).unwrap();
            let mut hostile: Vec<u32> = tok.eog_ids().to_vec();
            for t in [" ", "\n", "Hello", "}", "```"] {
                hostile.extend(tok.encode(t, false).unwrap());
            }
            for (seed, push) in [(1u64, false), (2, false), (3, true), (4, true)] {
                let mut c = Constraint::json_schema(&vocab, &person()).unwrap();
                let mut sampler = Sampler::new(if seed % 2 == 0 {
                    SamplingParams::greedy()
                } else {
                    SamplingParams {
                        temperature: 1.5,
                        seed,
                        ..SamplingParams::default()
                    }
                });
                let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut out = Vec::new();
                let finished = (0..400).any(|_| {
                    let mask = c.mask().unwrap();
                    let logits = fake_logits(&mut state, n, if push { &hostile } else { &[] });
                    let id = sampler.sample_slice_masked(&logits, Some(&mask)).id;
                    assert!(mask.allows(id), "sampled {id} outside the mask");
                    if tok.is_eog(id) {
                        return true;
                    }
                    c.advance(id).unwrap();
                    out.push(id);
                    false
                });
                let text = tok.decode(&out).unwrap();
                assert!(
                    finished,
                    "{name} seed {seed}: no end after 400 tokens: {text}"
                );
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}: {text}"));
                let o = v.as_object().unwrap();
                // In the schema's order, as OpenAI's strict mode writes them.
                let keys: Vec<&str> = o.keys().map(String::as_str).collect();
                assert_eq!(keys, ["name", "age", "languages", "role"], "{text}");
                let name_len = o["name"].as_str().unwrap().chars().count();
                assert!((1..=12).contains(&name_len), "{text}");
                assert!((0..=150).contains(&o["age"].as_i64().unwrap()), "{text}");
                let langs = o["languages"].as_array().unwrap();
                assert!((1..=3).contains(&langs.len()), "{text}");
                assert!(
                    langs
                        .iter()
                        .all(|l| l.as_str().is_some_and(|s| s.chars().count() <= 8)),
                    "{text}"
                );
                assert!(
                    ["dev", "ops"].contains(&o["role"].as_str().unwrap()),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn bad_schemas_are_refused_with_the_reason() {
        let tok = tokenizer(QWEN);
        let vocab = ConstraintVocab::new(&tok).unwrap();
        let e = Constraint::json_schema(&vocab, &json!("object"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("must be an object"), "{e}");
        let e = Constraint::json_schema(
            &vocab,
            &json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("invalid JSON schema"), "{e}");
    }
}
