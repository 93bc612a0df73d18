//! Generated token ids to streamed text: incremental detokenization that never splits a UTF-8
//! character, end-of-generation tokens, stop strings and the token limit.

use crate::{error::Result, tokenizer::TextTokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What one more token produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Piece {
    /// Text now safe to show (may be empty while a character or a stop string is incomplete).
    pub text: String,
    pub finish: Option<FinishReason>,
}

pub struct TextStream {
    tokenizer: TextTokenizer,
    /// The last prompt token, decoded in front of the output so tokenizers that strip a leading
    /// space from the first token keep it.
    prefix: Vec<u32>,
    prefix_len: usize,
    ids: Vec<u32>,
    /// Bytes of the decoded output already handed out.
    sent: usize,
    stop: Vec<String>,
    max_tokens: usize,
}

impl TextStream {
    pub fn new(
        tokenizer: TextTokenizer,
        prompt: &[u32],
        stop: Vec<String>,
        max_tokens: usize,
    ) -> Result<Self> {
        let prefix: Vec<u32> = prompt.last().copied().into_iter().collect();
        let prefix_len = tokenizer.decode(&prefix)?.len();
        Ok(Self {
            tokenizer,
            prefix,
            prefix_len,
            ids: Vec::new(),
            sent: 0,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            max_tokens,
        })
    }

    /// Number of tokens generated so far (EOG included).
    pub fn generated(&self) -> usize {
        self.ids.len()
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn push(&mut self, id: u32) -> Result<Piece> {
        if self.tokenizer.is_eog(id) {
            self.ids.push(id);
            let text = self.flush()?;
            return Ok(Piece {
                text,
                finish: Some(FinishReason::Stop),
            });
        }
        self.ids.push(id);
        let text = self.output()?;
        let sent = floor_char_boundary(&text, self.sent);
        // A stop string ends the output just before it.
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| text[sent..].find(s.as_str()).map(|i| i + sent))
            .min()
        {
            let piece = text[sent..at].to_string();
            self.sent = at;
            return Ok(Piece {
                text: piece,
                finish: Some(FinishReason::Stop),
            });
        }
        let limit = self.ids.len() >= self.max_tokens;
        // Hold back an incomplete character, and any tail that could begin a stop string.
        let mut safe = text.len();
        if !limit {
            safe = text.trim_end_matches('\u{FFFD}').len();
            let held = self
                .stop
                .iter()
                .map(|s| partial_suffix(&text[..safe], s))
                .max()
                .unwrap_or(0);
            safe -= held;
        }
        let safe = safe.max(sent);
        let piece = text[sent..safe].to_string();
        self.sent = safe;
        Ok(Piece {
            text: piece,
            finish: limit.then_some(FinishReason::Length),
        })
    }

    /// All output text so far (everything pushed, decoded).
    pub fn output(&self) -> Result<String> {
        let mut all = self.prefix.clone();
        all.extend_from_slice(&self.ids);
        let text = self.tokenizer.decode(&all)?;
        Ok(text.get(self.prefix_len..).unwrap_or_default().to_string())
    }

    fn flush(&mut self) -> Result<String> {
        let text = self.output()?;
        let piece = text.get(self.sent..).unwrap_or_default().to_string();
        self.sent = text.len();
        Ok(piece)
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
