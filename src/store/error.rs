//! The object store's errors.

/// Errors of the object store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The URL or the `AWS_*` settings are not usable.
    #[error("object store: {0}")]
    Config(String),
    /// The store failed or could not be reached.
    #[error("the object store is unreachable: {0}")]
    Unreachable(String),
    /// Too many writers raced for the same manifest.
    #[error("the object store is contended: {0}")]
    Contended(String),
    /// An object the manifest names is not there.
    #[error("object missing: {0}")]
    Missing(String),
    /// An object's bytes do not match its hash, or a record is not what it should be.
    #[error("corrupt object: {0}")]
    Corrupt(String),
}
