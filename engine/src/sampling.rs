//! Turning logits into the next token: greedy at temperature 0, otherwise repetition penalty,
//! top-k, temperature, top-p and min-p, then a seeded draw. A step's token mask (a grammar's,
//! see [`crate::constraint`]) removes the tokens it does not allow before anything else.

use candle_core::{Result, Tensor};
use exo_protocol::{SamplingParams, TokenMask, TokenOut};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Sampling state of one request: its settings, its random stream and the tokens it has seen
/// (for the repetition penalty).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    recent: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            recent: Vec::new(),
        }
    }

    /// Records tokens the model has seen (prompt and generated) for the repetition penalty.
    pub fn observe(&mut self, tokens: &[u32]) {
        let keep = self.params.repeat_last_n as usize;
        if keep == 0 || self.params.repeat_penalty == 1.0 {
            return;
        }
        self.recent.extend_from_slice(tokens);
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
    }

    /// Picks the next token from logits `[vocab]` (or `[1, vocab]`, `[1, 1, vocab]`), among
    /// the tokens `allowed` (all when `None`). The chosen token is not observed here: it comes
    /// back as the next step's input. Log-probabilities are the model's, before the mask.
    pub fn sample(&mut self, logits: &Tensor, allowed: Option<&TokenMask>) -> Result<TokenOut> {
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        Ok(self.sample_masked(&logits, allowed))
    }

    #[cfg(test)]
    fn sample_slice(&mut self, raw: &[f32]) -> TokenOut {
        self.sample_masked(raw, None)
    }

    /// [`Self::sample`] over logits already on the host.
    #[cfg(test)]
    pub(crate) fn sample_slice_masked(
        &mut self,
        raw: &[f32],
        allowed: Option<&TokenMask>,
    ) -> TokenOut {
        self.sample_masked(raw, allowed)
    }

    fn sample_masked(&mut self, raw: &[f32], allowed: Option<&TokenMask>) -> TokenOut {
        let p = self.params.clone();
        let mut logits = raw.to_vec();
        if let Some(mask) = allowed {
            // A mask that allows nothing would leave no token; the grammar engine never sends
            // one (a finished grammar allows end-of-generation), but a peer could.
            if mask.count() > 0 {
                for (id, l) in logits.iter_mut().enumerate() {
                    if !mask.allows(id as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
        if p.repeat_penalty != 1.0 && p.repeat_penalty > 0.0 {
            let mut seen = self.recent.clone();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        let id = if p.temperature <= 0.0 || allowed.is_some_and(|m| m.count() == 1) {
            argmax(&logits)
        } else {
            self.draw(&logits)
        };
        let (logprob, top) = if p.logprobs || p.top_logprobs > 0 {
            let lp = log_softmax(raw);
            let mut top: Vec<(u32, f32)> = Vec::new();
            if p.top_logprobs > 0 {
                let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
                let k = (p.top_logprobs as usize).min(20).min(idx.len());
                idx.select_nth_unstable_by(k - 1, |&a, &b| {
                    lp[b as usize].total_cmp(&lp[a as usize])
                });
                idx.truncate(k);
                idx.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
                top = idx.into_iter().map(|i| (i, lp[i as usize])).collect();
            }
            (Some(lp[id as usize]), top)
        } else {
            (None, Vec::new())
        };
        TokenOut { id, logprob, top }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        // Candidates sorted by logit, best first (ties by lower id, like llama.cpp).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < cand.len() {
            let k = p.top_k as usize;
            cand.select_nth_unstable_by(k - 1, by_logit);
            cand.truncate(k);
        }
        cand.sort_by(by_logit);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand
            .iter()
            .map(|&(_, l)| ((l - max) / p.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = v
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    v.iter().map(|&x| x - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample_slice(&[0.1, 3.0, 3.0, -1.0]).id, 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 1.0;
                p.seed = seed;
            }));
            (0..40)
                .map(|_| s.sample_slice(&logits).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 5.0;
            p.top_k = 1;
        }));
        for _ in 0..20 {
            assert_eq!(s.sample_slice(&[1.0, 0.5, 2.0, 1.9]).id, 2);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [10.0, 9.0, -5.0, -6.0];
        for p in [
            params(|p| {
                p.temperature = 1.0;
                p.top_p = 0.9;
            }),
            params(|p| {
                p.temperature = 1.0;
                p.min_p = 0.05;
            }),
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..200 {
                assert!(s.sample_slice(&logits).id < 2);
            }
        }
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut s = Sampler::new(params(|p| {
            p.repeat_penalty = 2.0;
        }));
        s.observe(&[0]);
        assert_eq!(s.sample_slice(&[2.0, 1.5]).id, 1);
    }

    #[test]
    fn a_mask_restricts_greedy_and_random_draws() {
        // Allow ids 1 and 3 only: bits 1 and 3 of the first word.
        let mask = TokenMask::from_words(&[0b1010]);
        let logits = [9.0, 1.0, 8.0, 0.5, 7.0];
        let mut greedy = Sampler::new(SamplingParams::greedy());
        assert_eq!(greedy.sample_masked(&logits, Some(&mask)).id, 1);
        let mut hot = Sampler::new(params(|p| {
            p.temperature = 2.0;
            p.seed = 3;
        }));
        let mut seen = [0usize; 5];
        for _ in 0..300 {
            seen[hot.sample_masked(&logits, Some(&mask)).id as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[test]
    fn logprobs_are_normalised_and_top_is_sorted() {
        let mut s = Sampler::new(params(|p| {
            p.logprobs = true;
            p.top_logprobs = 2;
        }));
        let out = s.sample_slice(&[1.0, 3.0, 2.0]);
        assert_eq!(out.id, 1);
        let lp = out.logprob.unwrap();
        let want = 3.0 - (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((lp - want).abs() < 1e-5);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    }
}
