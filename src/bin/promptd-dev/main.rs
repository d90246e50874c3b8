//! `promptd-dev`: the benchmark tools, kept out of the product binary (the load generator's
//! HTTP client, reqwest, is linked only here). Built with `--features dev-tools`.
mod bench;
mod pass;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use promptd::model::random::{self, RandomModel, RandomPrompts, Shape};

/// promptd's benchmark tools: a deterministic random checkpoint, random prompts, and a load
/// generator against a live server.
#[derive(Debug, Parser)]
#[command(name = "promptd-dev", version, about)]
struct Cli {
    /// Kernel for f32 matmuls on the CPU (as `promptd --cpu-matmul`): few-rows, onednn-packed,
    /// onednn or blas.
    #[arg(long, global = true, env = "PROMPTD_CPU_MATMUL", value_enum, default_value_t = promptd::model::CpuMatmul::FewRows)]
    cpu_matmul: promptd::model::CpuMatmul,
    /// libtorch's quantized engine for `--dtype int8`.
    #[arg(long, global = true, env = "PROMPTD_INT8_KERNEL", value_enum, default_value_t = promptd::model::int8::Int8Kernel::Auto)]
    int8_kernel: promptd::model::int8::Int8Kernel,
    /// How many LoRAs are applied in one batch: gathered (BGMV) or grouped (SGMV).
    #[arg(long, global = true, value_enum, default_value_t = promptd::model::adapters::LoraKernel::Gathered)]
    lora_kernel: promptd::model::adapters::LoraKernel,
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a deterministic random T5 checkpoint for benchmarks (t5-small shapes or smaller).
    MakeModel(MakeModelArgs),
    /// Write random prompt files (`taskNNNNN.npy`) for benchmarks.
    MakePrompts(MakePromptsArgs),
    /// Load generator against a live server: throughput, latency percentiles, batching.
    Bench(bench::BenchArgs),
    /// One fixed mixed-task batch through the engine, timed (vs transformers: bench-vs-hf.sh);
    /// a checkpoint or random weights of a public shape made on the device.
    EnginePass(pass::PassArgs),
    /// One large matmul in this libtorch, timed: the device's peak for comparison.
    Gemm(pass::GemmArgs),
}

/// Arguments of `promptd-dev make-model`.
#[derive(Debug, Clone, clap::Args)]
struct MakeModelArgs {
    /// Output folder (created; files in it are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Shapes: small (t5-small's) or mini.
    #[arg(long, default_value = "small")]
    shape: Shape,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// A T5 tokenizer.json to start from; its vocabulary is padded to the model's size.
    #[arg(
        long,
        default_value = "tests/fixtures/models/t5-v1_1-tiny/tokenizer.json"
    )]
    tokenizer: PathBuf,
}

/// Arguments of `promptd-dev make-prompts`.
#[derive(Debug, Clone, clap::Args)]
struct MakePromptsArgs {
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Number of prompts (tasks `task00000`, `task00001`, …).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Rows per prompt (the most, with --min-length).
    #[arg(long, default_value_t = 20)]
    length: usize,
    /// Spread the lengths: prompt k gets min-length + k mod (length - min-length + 1) rows
    /// (1 and 20 over 64 prompts: a mean of 10).
    #[arg(long)]
    min_length: Option<usize>,
    /// Row width (the model's d_model).
    #[arg(long)]
    d_model: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    promptd::cli::init_tracing(false);
    promptd::model::set_cpu_matmul(cli.cpu_matmul);
    promptd::model::int8::set_int8_kernel(cli.int8_kernel);
    promptd::model::adapters::set_lora_kernel(cli.lora_kernel);
    let result = match cli.command {
        Command::MakeModel(a) => random::make_model(RandomModel {
            out: a.out,
            shape: a.shape,
            seed: a.seed,
            tokenizer: a.tokenizer,
        }),
        Command::MakePrompts(a) => random::make_prompts(RandomPrompts {
            out: a.out,
            count: a.count,
            length: a.length,
            min_length: a.min_length,
            d_model: a.d_model,
            seed: a.seed,
        }),
        Command::Bench(args) => bench::run(args),
        Command::EnginePass(args) => pass::run(args),
        Command::Gemm(args) => pass::gemm(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("promptd-dev: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
