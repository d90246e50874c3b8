//! How a request generates beyond the defaults (greedy, no log-probabilities): sampling,
//! per-token log-probabilities, stop strings and several choices per input; and the text a
//! stream sends as tokens arrive. Shared by every front door that offers them.
use std::sync::Arc;

use super::error::Error;
use crate::engine::sampling::{fresh_seed, mix};
use crate::engine::{RowInput, Sampling};
use crate::model::T5Tokenizer;

/// Most alternatives per generated token a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop strings per request.
pub const MAX_STOPS: usize = 4;
/// Most choices per input.
pub const MAX_CHOICES: usize = 16;

/// What a request asks of generation; the default is today's greedy decoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    /// Divides the logits before sampling; absent or 0 decodes greedily.
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (0, 1].
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: Option<usize>,
    /// Seeds sampling: the same input, seed and parameters give the same output, whatever
    /// else shares its pass.
    pub seed: Option<u64>,
    /// Record each generated token's log-probability and this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Generation ends before the first of these strings (which is not returned).
    pub stop: Vec<String>,
    /// Outputs per input (sampling only).
    pub n: Option<usize>,
}

impl Generation {
    /// Whether tokens are sampled (a temperature above 0).
    pub fn samples(&self) -> bool {
        self.temperature.is_some_and(|t| t > 0.0)
    }

    /// Outputs per input.
    pub fn choices(&self) -> usize {
        self.n.unwrap_or(1)
    }

    /// Refuses what cannot be honoured, naming the field.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |field: &str, why: String| Err(Error::Invalid(format!("`{field}` {why}")));
        if let Some(t) = self.temperature {
            if !(0.0..=100.0).contains(&t) {
                return bad("temperature", format!("is {t}; it must be in [0, 100]"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", format!("is {p}; it must be in (0, 1]"));
            }
        }
        if let Some(k) = self.top_logprobs {
            if k > MAX_TOP_LOGPROBS {
                return bad(
                    "logprobs",
                    format!("asks for {k} alternatives; the limit is {MAX_TOP_LOGPROBS}"),
                );
            }
        }
        if self.stop.len() > MAX_STOPS {
            return bad(
                "stop",
                format!("has {} strings; the limit is {MAX_STOPS}", self.stop.len()),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "holds an empty string".into());
        }
        match self.n {
            Some(0) => return bad("n", "must be at least 1".into()),
            Some(n) if n > MAX_CHOICES => {
                return bad("n", format!("is {n}; the limit is {MAX_CHOICES}"))
            }
            Some(n) if n > 1 && !self.samples() => {
                return bad(
                    "n",
                    format!(
                        "is {n}, but greedy decoding gives one answer: set a temperature above 0"
                    ),
                )
            }
            _ => {}
        }
        Ok(())
    }

    /// Sets `row` up for choice `choice` of its input: its sampling (each choice with its own
    /// seed, derived from the request's) and its log-probabilities.
    pub fn apply(&self, row: &mut RowInput, choice: usize, request_seed: u64) {
        row.top_logprobs = self.top_logprobs;
        if self.samples() {
            let seed = if choice == 0 {
                request_seed
            } else {
                mix(request_seed ^ choice as u64)
            };
            row.sampling = Some(Sampling {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                seed,
            });
        }
    }

    /// The seed a request's rows derive theirs from.
    pub fn request_seed(&self) -> u64 {
        self.seed.unwrap_or_else(fresh_seed)
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended the text, or a stop string was reached.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// Text of a row's tokens as they arrive: what may be sent now, holding back any tail that
/// could still become a stop string, and where a stop string ends the row.
pub struct TextStream {
    tokenizer: Arc<T5Tokenizer>,
    stops: Arc<[String]>,
    ids: Vec<i64>,
    /// Bytes of the text already handed out.
    sent: usize,
    stopped: bool,
}

impl TextStream {
    /// A stream for one row.
    pub fn new(tokenizer: Arc<T5Tokenizer>, stops: Arc<[String]>) -> Self {
        Self {
            tokenizer,
            stops,
            ids: Vec::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Whether a stop string was reached (the row needs no more tokens).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a token; returns the text that may be sent now (possibly empty).
    pub fn push(&mut self, id: i64) -> Result<String, Error> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        let text = self.decode()?;
        let (end, stopped) = cut(&text, &self.stops);
        if stopped {
            self.stopped = true;
            return Ok(self.take(&text, end));
        }
        // An unfinished character (a byte-level piece) or a possible stop's start waits.
        let mut safe = text.trim_end_matches('\u{FFFD}').len();
        safe -= held_back(&text[..safe], &self.stops);
        Ok(self.take(&text, safe))
    }

    /// The rest of the text once the row has finished.
    pub fn finish(&mut self) -> Result<String, Error> {
        if self.stopped {
            return Ok(String::new());
        }
        let text = self.decode()?;
        let (end, stopped) = cut(&text, &self.stops);
        self.stopped = stopped;
        Ok(self.take(&text, end))
    }

    fn decode(&self) -> Result<String, Error> {
        self.tokenizer
            .decode(&self.ids)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    fn take(&mut self, text: &str, end: usize) -> String {
        // Decoding more tokens can rewrite the text's end (the tokenizer's clean-up): never
        // send before what was sent.
        if end <= self.sent || !text.is_char_boundary(self.sent) {
            return String::new();
        }
        let out = text[self.sent..end].to_string();
        self.sent = end;
        out
    }
}

/// Where `text` ends given the stop strings: before the first stop string found (and true),
/// or its whole length.
pub fn cut(text: &str, stops: &[String]) -> (usize, bool) {
    stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .map_or((text.len(), false), |at| (at, true))
}

/// Bytes at the end of `text` that begin some stop string (and so may not be sent yet).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len().min(text.len() + 1))
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

/// The finished row's reason: whether it ended with an end-of-sequence token, or a stop
/// string cut it.
pub fn finish_reason(ended: bool, stopped: bool) -> FinishReason {
    if stopped || ended {
        FinishReason::Stop
    } else {
        FinishReason::Length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_cut_at_the_first_match() {
        let stops = vec!["\n".to_string(), "END".to_string()];
        assert_eq!(cut("abc END x\n", &stops), (4, true));
        assert_eq!(cut("abc", &stops), (3, false));
        assert_eq!(held_back("the EN", &stops), 2);
        assert_eq!(held_back("the E", &stops), 1);
        assert_eq!(held_back("the", &stops), 0);
    }

    #[test]
    fn checks_name_the_field() {
        let refused = |g: Generation| match g.check() {
            Err(Error::Invalid(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(Generation {
            n: Some(2),
            ..Generation::default()
        })
        .contains("`n`"));
        assert!(refused(Generation {
            top_p: Some(0.0),
            ..Generation::default()
        })
        .contains("`top_p`"));
        assert!(refused(Generation {
            temperature: Some(-1.0),
            ..Generation::default()
        })
        .contains("`temperature`"));
        Generation {
            temperature: Some(0.8),
            n: Some(3),
            ..Generation::default()
        }
        .check()
        .unwrap();
    }
}
