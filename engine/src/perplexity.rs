//! Perplexity of a model on a text, computed the way llama.cpp's `llama-perplexity` does it so the
//! two figures can be compared: the text is tokenized once (BOS when the model wants it), cut into
//! chunks of `ctx` tokens, each chunk starts from an empty cache with its first token replaced by
//! BOS, and only the second half of each chunk is scored (every scored token has at least ctx/2
//! tokens of context).

use crate::{
    error::{EngineError, Result},
    model::{Logits, ShardInput, ShardModel},
    tokenizer::TextTokenizer,
};

/// The running result after each chunk, and the final one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Chunks evaluated so far.
    pub chunks: usize,
    /// Tokens scored so far.
    pub scored: usize,
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Standard error of `ppl` (llama.cpp's `+/-`).
    pub stderr: f64,
}

#[derive(Default)]
struct Totals {
    count: usize,
    nll: f64,
    nll2: f64,
}

impl Totals {
    fn add(&mut self, nll: f64) {
        self.count += 1;
        self.nll += nll;
        self.nll2 += nll * nll;
    }

    fn result(&self, chunks: usize) -> Perplexity {
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        let ppl = mean.exp();
        let stderr = if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        Perplexity {
            chunks,
            scored: self.count,
            ppl,
            stderr,
        }
    }
}

/// `-log p(token)` under `logits`, with llama.cpp's arithmetic: max-shifted `expf` in f32,
/// summed in f64.
pub fn negative_log_likelihood(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[token] - max) - sum.ln())
}

/// Perplexity of `model` (a whole model: first and last shard) on `text` with chunks of `ctx`
/// tokens, at most `max_chunks` of them. `progress` sees the running result after each chunk.
pub fn perplexity(
    model: &ShardModel,
    tokenizer: &TextTokenizer,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(&Perplexity),
) -> Result<Perplexity> {
    let context = model.spec().hp.context_length;
    if ctx < 4 || ctx > context {
        return Err(EngineError::Invalid(format!(
            "a perplexity context of {ctx} tokens: it must be between 4 and the model's {context}"
        )));
    }
    let tokens = tokenizer.encode(text, true)?;
    let available = tokens.len() / ctx;
    if available < 1 {
        return Err(EngineError::Invalid(format!(
            "the text has {} tokens: at least {ctx} (one chunk) are needed",
            tokens.len()
        )));
    }
    let chunks = max_chunks.map_or(available, |m| m.clamp(1, available));
    let first = ctx / 2;
    let mut totals = Totals::default();
    let mut last = None;
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = tokenizer.bos().filter(|_| tokenizer.adds_bos()) {
            chunk[0] = bos;
        }
        let mut cache = model.new_cache();
        let logits = model.forward(ShardInput::Tokens(&chunk), &mut cache, Logits::From(first))?;
        let logits = logits.squeeze(0)?.to_vec2::<f32>()?;
        // Row i holds the prediction for the token after position first + i.
        for (i, row) in logits.iter().take(ctx - first - 1).enumerate() {
            let next = tokens[c * ctx + first + i + 1] as usize;
            totals.add(negative_log_likelihood(row, next));
        }
        let r = totals.result(c + 1);
        progress(&r);
        last = Some(r);
    }
    Ok(last.expect("at least one chunk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_a_uniform_distribution_is_log_n() {
        let logits = vec![0.5f32; 1000];
        let nll = negative_log_likelihood(&logits, 7);
        assert!((nll - 1000f64.ln()).abs() < 1e-9, "{nll}");
    }

    #[test]
    fn nll_is_shift_invariant_and_ranks_likely_tokens_lower() {
        let logits = [1.0f32, 3.0, -2.0, 0.0];
        let shifted: Vec<f32> = logits.iter().map(|l| l + 100.0).collect();
        let a = negative_log_likelihood(&logits, 1);
        assert!((a - negative_log_likelihood(&shifted, 1)).abs() < 1e-6);
        assert!(a < negative_log_likelihood(&logits, 0));
        // Exact value: -log(e^3 / (e^1 + e^3 + e^-2 + e^0)).
        let z: f64 = [1.0f64, 3.0, -2.0, 0.0].iter().map(|x| x.exp()).sum();
        assert!((a - (z.ln() - 3.0)).abs() < 1e-6, "{a}");
    }

    #[test]
    fn totals_match_the_definition() {
        let mut t = Totals::default();
        for x in [1.0, 2.0, 3.0] {
            t.add(x);
        }
        let r = t.result(1);
        assert!((r.ppl - 2f64.exp()).abs() < 1e-12);
        // Sample variance 1 over 3 values: stderr of the mean = sqrt(1/3)·... as llama.cpp.
        let var = (1.0 + 4.0 + 9.0) / 3.0 - 4.0;
        assert!((r.stderr - (var / 2.0f64).sqrt() * r.ppl).abs() < 1e-12);
        assert_eq!(r.scored, 3);
    }
}
