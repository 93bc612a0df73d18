//! Speculative decoding's proposers: something cheap guesses the next few tokens, the target
//! model checks them all in one forward (logits for every guessed position), and the longest
//! prefix it agrees with is kept. With greedy sampling the text is exactly what plain decoding
//! writes; only the number of forwards through the (possibly networked) target changes.
//!
//! Two proposers: [`NgramLookup`] copies what followed the last few tokens when they occurred
//! before (in the prompt or the text so far: code edits, answers about a pasted document), and
//! [`DraftState`] runs a small model with the same tokenizer greedily for `k` tokens.

use std::{path::Path, sync::Arc};

use candle_core::Device;

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    model::{Logits, ShardInput, ShardModel},
    scheduler::CHUNK,
    source::Source,
    tokenizer::TextTokenizer,
};

/// Most tokens proposed at once: verification stays far below the 64-query batches that take
/// attention's tiled kernel (whose numerics differ from one query's).
pub const MAX_K: usize = 12;

/// How drafts are proposed for a model; shared by its requests (each gets a [`Speculator`]).
#[derive(Clone)]
pub enum Speculation {
    /// N-gram lookup in the prompt and the text so far.
    Lookup,
    /// A small model with the target's tokenizer, held by the driving node.
    Draft {
        name: String,
        model: Arc<ShardModel>,
    },
}

impl Speculation {
    /// Loads the draft model at `path` for a target whose tokenizer is `target`; refuses a
    /// draft whose vocabulary differs (its token ids would mean other text).
    pub fn load_draft(path: &Path, target: &TextTokenizer, target_name: &str) -> Result<Self> {
        let src = Source::open(path)?;
        let draft = TextTokenizer::from_source(&src)?;
        let name = crate::info::model_id(path);
        check_same_tokenizer(&draft, target).map_err(|why| {
            EngineError::Invalid(format!(
                "draft model {name} cannot propose tokens for {target_name}: its tokenizer \
                 differs ({why}); a draft must share the target's tokenizer"
            ))
        })?;
        let model = ShardModel::from_source(&src, None, &Device::Cpu)?;
        Ok(Speculation::Draft {
            name,
            model: Arc::new(model),
        })
    }

    /// A proposer for one request whose model holds `context` tokens at most.
    pub fn speculator(&self, context: usize) -> Speculator {
        let (proposer, k) = match self {
            Speculation::Lookup => (Proposer::Lookup(NgramLookup::default()), 6),
            Speculation::Draft { model, .. } => (
                Proposer::Draft(DraftState {
                    cache: model.new_cache(),
                    model: model.clone(),
                    fed: Vec::new(),
                }),
                4,
            ),
        };
        Speculator {
            proposer,
            k,
            context,
            proposed: 0,
            accepted: 0,
            rounds: 0,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Speculation::Lookup => "lookup".into(),
            Speculation::Draft { name, .. } => format!("draft {name}"),
        }
    }
}

/// Why two tokenizers are not the same, if they are not: same size, same text for every id.
pub fn check_same_tokenizer(
    a: &TextTokenizer,
    b: &TextTokenizer,
) -> std::result::Result<(), String> {
    let (na, nb) = (a.vocab_size(), b.vocab_size());
    if na != nb {
        return Err(format!("{na} tokens against {nb}"));
    }
    for id in 0..na as u32 {
        let (ta, tb) = (a.token_text(id), b.token_text(id));
        if ta != tb {
            return Err(format!("token {id} is {ta:?} against {tb:?}"));
        }
    }
    Ok(())
}

/// One request's proposer, with the number of tokens it proposes adapted to how many the
/// target accepts, and the counts for the acceptance rate.
pub struct Speculator {
    proposer: Proposer,
    /// Tokens proposed next time.
    k: usize,
    /// The model's context length: a verification never runs past it.
    context: usize,
    /// Draft tokens proposed and accepted so far.
    pub proposed: usize,
    pub accepted: usize,
    /// Verifications run.
    pub rounds: usize,
}

enum Proposer {
    Lookup(NgramLookup),
    Draft(DraftState),
}

impl Speculator {
    /// Up to `k` (adapted) tokens that may follow `context` (the prompt and every token
    /// generated so far), and at most `room - 1` so that verifying them with the last token
    /// stays within `room` more positions. Empty when there is nothing worth verifying.
    pub fn propose(&mut self, context: &[u32], room: usize) -> Result<Vec<u32>> {
        let room = room.min(self.context.saturating_sub(context.len()));
        let k = self.k.min(room.saturating_sub(1));
        if k == 0 {
            return Ok(Vec::new());
        }
        match &mut self.proposer {
            Proposer::Lookup(l) => Ok(l.propose(context, k)),
            Proposer::Draft(d) => d.propose(context, k),
        }
    }

    /// Records that the target kept `accepted` of `proposed` draft tokens, and adapts `k`: one
    /// more after a fully accepted draft, one fewer when fewer than half were kept.
    pub fn record(&mut self, proposed: usize, accepted: usize) {
        self.proposed += proposed;
        self.accepted += accepted;
        self.rounds += 1;
        if proposed == 0 {
            return;
        }
        if accepted == proposed && proposed == self.k {
            self.k = (self.k + 1).min(MAX_K);
        } else if accepted * 2 < proposed {
            self.k = (self.k - 1).max(2);
        }
    }

    /// Accepted draft tokens over proposed ones (0 when none were proposed).
    pub fn acceptance(&self) -> f64 {
        if self.proposed == 0 {
            0.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }
}

/// How many of `draft` the target's own tokens confirm: `target[i]` is what the target samples
/// after the verified token and `draft[..i]`, so draft token `i` stands when it equals
/// `target[i]` and every one before it stood.
pub fn accepted_prefix(draft: &[u32], target: &[u32]) -> usize {
    draft.iter().zip(target).take_while(|(d, t)| d == t).count()
}

/// Prompt lookup: the tokens that followed the most recent earlier occurrence of the context's
/// last `n` tokens, for the longest `n` from `max_ngram` down to `min_ngram` that occurs.
#[derive(Debug, Clone)]
pub struct NgramLookup {
    pub max_ngram: usize,
    pub min_ngram: usize,
}

impl Default for NgramLookup {
    fn default() -> Self {
        Self {
            max_ngram: 4,
            min_ngram: 2,
        }
    }
}

impl NgramLookup {
    pub fn propose(&self, context: &[u32], k: usize) -> Vec<u32> {
        let len = context.len();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if len <= n {
                continue;
            }
            let tail = &context[len - n..];
            // The most recent occurrence that has something after it (not the tail itself).
            if let Some(start) = (0..len - n).rev().find(|&s| context[s..s + n] == *tail) {
                let from = start + n;
                return context[from..(from + k).min(len)].to_vec();
            }
        }
        Vec::new()
    }
}

/// A draft model's state for one request: its own KV cache over the tokens it was fed. Each
/// proposal first rolls the cache back to the part of the context it still agrees with (the
/// drafts the target rejected go), then feeds what is new.
pub struct DraftState {
    model: Arc<ShardModel>,
    cache: KvCache,
    /// The tokens in `cache`, by position.
    fed: Vec<u32>,
}

impl DraftState {
    /// `k` tokens the draft model greedily writes after `context`, fewer when it writes an
    /// end-of-generation token or reaches its context.
    pub fn propose(&mut self, context: &[u32], k: usize) -> Result<Vec<u32>> {
        if context.is_empty() {
            return Ok(Vec::new());
        }
        // At least the last token is fed again, so there are logits to start from.
        let keep = self
            .fed
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count()
            .min(context.len() - 1);
        self.cache.truncate(keep);
        self.fed.truncate(keep);
        let limit = self.model.spec().hp.context_length;
        let mut input: Vec<u32> = context[keep..].to_vec();
        let mut out = Vec::with_capacity(k);
        while out.len() < k && self.fed.len() + input.len() <= limit {
            let mut logits = None;
            for chunk in input.chunks(CHUNK) {
                let l =
                    self.model
                        .forward(ShardInput::Tokens(chunk), &mut self.cache, Logits::Last)?;
                self.fed.extend_from_slice(chunk);
                logits = Some(l);
            }
            let logits: Vec<f32> = logits
                .expect("input is never empty")
                .flatten_all()?
                .to_vec1()?;
            let id = crate::sampling::argmax(&logits);
            out.push(id);
            input = vec![id];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_copies_what_followed_the_longest_match() {
        let l = NgramLookup::default();
        // "1 2 3 4 5 ... 2 3" -> after "2 3" came "4 5 6".
        let ctx = [1, 2, 3, 4, 5, 6, 9, 2, 3];
        assert_eq!(l.propose(&ctx, 3), vec![4, 5, 6]);
        assert_eq!(l.propose(&ctx, 10), vec![4, 5, 6, 9, 2, 3]);
        // The most recent occurrence wins.
        let ctx = [7, 8, 1, 7, 8, 2, 7, 8];
        assert_eq!(l.propose(&ctx, 1), vec![2]);
        // No repeated bigram: nothing to propose.
        assert!(l.propose(&[1, 2, 3, 4], 4).is_empty());
        assert!(l.propose(&[], 4).is_empty());
    }

    #[test]
    fn accepted_prefix_stops_at_the_first_disagreement() {
        assert_eq!(accepted_prefix(&[1, 2, 3], &[1, 2, 3, 4]), 3);
        assert_eq!(accepted_prefix(&[1, 2, 3], &[1, 5, 3, 4]), 1);
        assert_eq!(accepted_prefix(&[1, 2, 3], &[0, 2, 3, 4]), 0);
        assert_eq!(accepted_prefix(&[], &[4]), 0);
    }

    #[test]
    fn k_grows_with_full_acceptance_and_shrinks_with_rejection() {
        let mut s = Speculation::Lookup.speculator(1000);
        let k0 = s.k;
        s.record(k0, k0);
        assert_eq!(s.k, k0 + 1);
        s.record(s.k, 0);
        assert_eq!(s.k, k0);
        for _ in 0..50 {
            s.record(s.k, 0);
        }
        assert_eq!(s.k, 2);
        for _ in 0..50 {
            s.record(s.k, s.k);
        }
        assert_eq!(s.k, MAX_K);
        assert!(s.acceptance() > 0.0 && s.acceptance() < 1.0);
    }

    #[test]
    fn proposals_stay_within_the_room_left() {
        let mut s = Speculation::Lookup.speculator(10);
        let ctx = [1, 2, 3, 4, 5, 1, 2];
        // 3 positions of context left: the last token plus at most 2 drafts.
        assert_eq!(s.propose(&ctx, 100).unwrap(), vec![3, 4]);
        assert_eq!(s.propose(&ctx, 2).unwrap(), vec![3]);
        assert!(s.propose(&ctx, 1).unwrap().is_empty());
    }
}
