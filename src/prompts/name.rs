//! The naming rule for tasks.
use std::fmt;

use super::error::PromptError;

/// A task name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskName(String);

impl TaskName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Checks `name` against the naming rule.
    pub fn parse(name: &str) -> Result<Self, PromptError> {
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok_first || !ok_rest || name.len() > Self::MAX_LEN {
            let shown: String = name.chars().take(40).collect();
            return Err(PromptError::TaskName(format!(
                "invalid task name {shown:?}: use 1 to {} characters from [A-Za-z0-9._-], starting with a letter or digit",
                Self::MAX_LEN
            )));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names() {
        for ok in ["a", "task-1", "acme.sentiment_v2", "A9"] {
            TaskName::parse(ok).unwrap();
        }
        for bad in [
            "",
            ".x",
            "-x",
            "../x",
            "a/b",
            "a b",
            "%2e%2e",
            "a\0b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(TaskName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
