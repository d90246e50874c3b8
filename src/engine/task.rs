//! What the engine serves for one task: prompt rows, an adapter, or both.
use std::sync::Arc;

use super::bank::PromptRows;
use crate::model::adapters::AdapterWeights;

/// What the engine serves for a task: soft prompt rows (maybe none) and an adapter (maybe none).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWeights {
    /// Rows prepended to the encoder input (0 rows: none).
    pub rows: PromptRows,
    /// Changes to the frozen model.
    pub adapter: Option<Arc<AdapterWeights>>,
}

impl From<PromptRows> for TaskWeights {
    fn from(rows: PromptRows) -> Self {
        Self {
            rows,
            adapter: None,
        }
    }
}
