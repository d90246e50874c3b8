//! What can be wrong with a prompt, its name or its file.
/// Errors about prompt names, files and contents.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The bytes are not a readable tensor file.
    #[error("{0}")]
    Format(String),
    /// The tensor is readable but not a valid prompt for this model.
    #[error("{0}")]
    Invalid(String),
    /// A PEFT adapter config is unusable.
    #[error("adapter_config.json: {0}")]
    Adapter(String),
    /// A task name breaks the naming rule.
    #[error("{0}")]
    TaskName(String),
    /// A file could not be read (the kind is kept: a full disk is not a missing file).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl PromptError {
    /// A failure reading `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        PromptError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
