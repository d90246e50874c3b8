//! What is wrong with a pickle.
/// A pickle that is not a plain state dict, or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The pickle names a global outside the allow-list.
    #[error("refusing to load global {0} (only tensors, storages and ordered dicts are allowed)")]
    Forbidden(String),
    /// An opcode this reader does not implement (none that a state dict needs).
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    /// Malformed: truncated, stack underflow, wrong argument types.
    #[error("malformed pickle at byte {0}: {1}")]
    Malformed(usize, String),
}
