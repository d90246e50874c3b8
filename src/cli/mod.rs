//! Command-line entry points.
pub mod convert;
pub mod inspect;
pub mod inspect_adapter;
pub mod keys;
pub mod limits;
mod load;
pub mod neighbors;
pub mod predict;
pub mod serve;
pub mod store;
pub mod tune;

use clap::{Parser, Subcommand};

pub use load::load_engine;

/// promptd: one frozen T5, thousands of soft-prompt tasks, mixed in one batch.
#[derive(Debug, Parser)]
#[command(name = "promptd", version, about, args_override_self = true)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "PROMPTD_LOG_JSON")]
    pub log_json: bool,
    /// Kernel for f32 matmuls on the CPU: few-rows (promptd's own matrix-vector kernel over
    /// the plain weight for passes of 1 or 2 rows, as a decode step of one or two requests,
    /// and onednn-packed above), onednn-packed (libtorch's oneDNN over weights reordered once
    /// at load: a second copy of every linear weight; 1.4x plain oneDNN per token at one row),
    /// onednn (libtorch's oneDNN, reordering at every call; measured about 2x MKL on AMD EPYC)
    /// or blas (libtorch's BLAS, as torch.nn.functional.linear). The results are the same bit
    /// for bit on both oneDNN kernels. Training always uses torch's own linear.
    #[arg(long, global = true, env = "PROMPTD_CPU_MATMUL", value_enum, default_value_t = crate::model::CpuMatmul::FewRows)]
    pub cpu_matmul: crate::model::CpuMatmul,
    /// libtorch's quantized engine for `--dtype int8`: auto (both timed on this CPU when the
    /// model is packed; oneDNN for calls from the row count where it wins at every count up,
    /// fbgemm below), fbgemm (measured faster on AMD EPYC) or onednn (faster from 32-64 rows
    /// up on Intel Xeons with AMX) for every call.
    #[arg(long, global = true, env = "PROMPTD_INT8_KERNEL", value_enum, default_value_t = crate::model::int8::Int8Kernel::Auto)]
    pub int8_kernel: crate::model::int8::Int8Kernel,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read JSON lines {"task","input","labels"?,"max_new_tokens"?} on stdin, write one result line each.
    Predict(predict::PredictArgs),
    /// Learn a soft prompt on the frozen model from labelled JSON lines (prompt tuning).
    Tune(tune::TuneArgs),
    /// Score a prompt (or none, or a text prefix) on labelled JSON lines.
    Eval(tune::EvalArgs),
    /// Serve the HTTP API: prompt uploads, mixed-task batched predictions, metrics.
    Serve(serve::ServeArgs),
    /// Print the SHA-256 of an API key (read on stdin) for a tenants file, or make a new key.
    HashKey(keys::HashKeyArgs),
    /// Read a prompt through its nearest vocabulary tokens (cosine), and which labels are among them.
    Neighbors(neighbors::NeighborsArgs),
    /// Show what promptd sees in a model folder (variant, sizes, files, memory) and whether it can serve it.
    Inspect(inspect::InspectArgs),
    /// Rewrite a model folder promptd can serve as sharded safetensors + tokenizer.json.
    Convert(convert::ConvertArgs),
    /// Move prompts between a folder and an object store (push, pull), list and verify a store.
    Store(store::StoreArgs),
}

/// Logs go to stderr so stdout carries only results.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROMPTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
