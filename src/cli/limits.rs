//! Flag groups shared by commands (`#[command(flatten)]`), each defaulting to the `Default` of
//! the config it fills, so a default is written once: in the config struct.
use crate::prompts::PromptLimits;
use crate::service::rows::RowLimits;
use crate::service::state::TuneLimits;

/// What one input may ask for, and the longest prompt: `serve` and `predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct RowLimitArgs {
    /// Tokens generated per input when a request (or an input line) does not say.
    #[arg(long, env = "PROMPTD_MAX_NEW_TOKENS",
          default_value_t = RowLimits::default().default_max_new_tokens)]
    pub max_new_tokens: usize,
    /// Largest max_new_tokens an input may ask for.
    #[arg(long, env = "PROMPTD_MAX_NEW_TOKENS_LIMIT",
          default_value_t = RowLimits::default().max_new_tokens_limit)]
    pub max_new_tokens_limit: usize,
    /// Longest input or label, in tokens including </s>; longer ones are refused.
    #[arg(long, env = "PROMPTD_MAX_INPUT_TOKENS",
          default_value_t = RowLimits::default().max_input_tokens)]
    pub max_input_tokens: usize,
    /// Most candidate labels per input.
    #[arg(long, env = "PROMPTD_MAX_LABELS", default_value_t = RowLimits::default().max_labels)]
    pub max_labels: usize,
    /// Longest prompt accepted, in virtual tokens.
    #[arg(long, env = "PROMPTD_MAX_PROMPT_LENGTH",
          default_value_t = PromptLimits::default().max_rows)]
    pub max_prompt_length: usize,
}

impl RowLimitArgs {
    /// The per-input limits these flags set.
    pub fn row_limits(&self) -> RowLimits {
        RowLimits {
            max_input_tokens: self.max_input_tokens,
            default_max_new_tokens: self.max_new_tokens,
            max_new_tokens_limit: self.max_new_tokens_limit,
            max_labels: self.max_labels,
        }
    }
}

/// Caps on the server's tuning jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneLimitArgs {
    /// Training plus dev rows one tuning job may carry.
    #[arg(long, env = "PROMPTD_TUNE_MAX_ROWS", default_value_t = TuneLimits::default().max_rows)]
    pub tune_max_rows: usize,
    /// Steps one tuning job may take.
    #[arg(long, env = "PROMPTD_TUNE_MAX_STEPS", default_value_t = TuneLimits::default().max_steps)]
    pub tune_max_steps: usize,
    /// Rows per tuning step (bounds how long one step holds the engine).
    #[arg(long, env = "PROMPTD_TUNE_MAX_BATCH_SIZE",
          default_value_t = TuneLimits::default().max_batch_size)]
    pub tune_max_batch_size: usize,
    /// Queued or running tuning jobs per tenant.
    #[arg(long, env = "PROMPTD_TUNE_MAX_JOBS_PER_TENANT",
          default_value_t = TuneLimits::default().max_jobs_per_tenant)]
    pub tune_max_jobs_per_tenant: usize,
    /// Size of a tuning request body in bytes.
    #[arg(long, env = "PROMPTD_TUNE_MAX_BODY_BYTES",
          default_value_t = TuneLimits::default().max_body_bytes)]
    pub tune_max_body_bytes: usize,
}

impl TuneLimitArgs {
    /// The caps these flags set.
    pub fn tune_limits(&self) -> TuneLimits {
        TuneLimits {
            max_rows: self.tune_max_rows,
            max_steps: self.tune_max_steps,
            max_batch_size: self.tune_max_batch_size,
            max_jobs_per_tenant: self.tune_max_jobs_per_tenant,
            max_body_bytes: self.tune_max_body_bytes,
        }
    }
}
