//! Where a pass's time goes, by op family, for `promptd-dev engine-pass --profile`. Off by
//! default (one thread-local flag read per span); when on, each span adds its wall time to its
//! family. CPU ops run synchronously, so the times are the ops' own; on a GPU they would be
//! launch times only, and the profile says so by refusing to start there.
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// Op families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Projections, feed-forward and the LM head (`linear`).
    Matmul,
    /// Scores, softmax and the weighted sum (fused or eager).
    Attention,
    /// Relative position buckets and the bias lookup, and the padding mask.
    PositionBias,
    /// RMS norms.
    LayerNorm,
    /// The feed-forward activation and gate.
    Activation,
    /// Embedding lookups (the vocabulary and the prompt bank).
    Gather,
    /// Self-attention cache growth, row selection and merging.
    KvCache,
    /// Tensors made from host data, and the next tokens read back.
    HostCopy,
}

const FAMILIES: [Family; 8] = [
    Family::Matmul,
    Family::Attention,
    Family::PositionBias,
    Family::LayerNorm,
    Family::Activation,
    Family::Gather,
    Family::KvCache,
    Family::HostCopy,
];

impl Family {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmuls",
            Family::Attention => "attention",
            Family::PositionBias => "position bias + mask",
            Family::LayerNorm => "layer norm",
            Family::Activation => "activation",
            Family::Gather => "gather (embeddings)",
            Family::KvCache => "KV cache (cat/select)",
            Family::HostCopy => "host <-> tensor copies",
        }
    }
}

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static TOTALS: RefCell<[f64; 8]> = const { RefCell::new([0.0; 8]) };
}

/// Turns profiling on or off on this thread (and clears the totals).
pub fn enable(on: bool) {
    ON.with(|o| o.set(on));
    take();
}

/// Seconds per family since the last call, in [`Family`] order; clears them.
pub fn take() -> Vec<(Family, f64)> {
    let totals = TOTALS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    FAMILIES.into_iter().zip(totals).collect()
}

/// Times its scope into `family` when profiling is on.
#[must_use = "a span times the scope it lives in"]
pub struct Span(Option<(Family, Instant)>);

/// Starts a span.
pub fn span(family: Family) -> Span {
    Span(ON.with(|o| o.get()).then(|| (family, Instant::now())))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((family, start)) = self.0 {
            let idx = FAMILIES.iter().position(|f| *f == family).unwrap_or(0);
            let secs = start.elapsed().as_secs_f64();
            TOTALS.with(|t| t.borrow_mut()[idx] += secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_count_only_when_on() {
        enable(false);
        drop(span(Family::Matmul));
        assert!(take().iter().all(|(_, s)| *s == 0.0));
        enable(true);
        {
            let _s = span(Family::LayerNorm);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let totals = take();
        enable(false);
        let norm = totals
            .iter()
            .find(|(f, _)| *f == Family::LayerNorm)
            .unwrap()
            .1;
        assert!(norm >= 0.002, "{totals:?}");
        assert!(totals
            .iter()
            .filter(|(f, _)| *f != Family::LayerNorm)
            .all(|(_, s)| *s == 0.0));
    }
}
