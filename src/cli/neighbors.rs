//! `promptd neighbors --model DIR --prompt FILE -k 5`: a prompt read through its nearest
//! vocabulary tokens (paper §7), offline, with the same engine code as the server's
//! `GET /v1/prompts/{task}/neighbors`.
use std::path::{Path, PathBuf};

use crate::engine::{DeviceSpec, DtypeSpec};
use crate::prompts::dir::{classify, load_source};
use crate::prompts::PromptLimits;
use crate::service::neighbors::{report, report_labels, split_labels, NeighborsReport, MAX_K};

/// Arguments of `promptd neighbors`.
#[derive(Debug, Clone, clap::Args)]
pub struct NeighborsArgs {
    /// Hugging Face T5 directory.
    #[arg(long, env = "PROMPTD_MODEL")]
    pub model: PathBuf,
    /// The prompt: a .safetensors or .npy file, or a PEFT adapter folder.
    #[arg(long)]
    pub prompt: PathBuf,
    /// Tokens per prompt row.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=MAX_K as i64))]
    pub k: u32,
    /// Labels to look for, comma-separated (default: the tuning report's).
    #[arg(long)]
    pub labels: Option<String>,
    /// The `promptd tune --report` file to take labels from (default: reports/<name>.json
    /// beside the prompt, where `make demo-prompts` writes it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the report as JSON (the HTTP route's body).
    #[arg(long)]
    pub json: bool,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16
    #[arg(long, default_value = "auto")]
    pub dtype: DtypeSpec,
}

/// Runs `promptd neighbors`.
pub fn run(args: NeighborsArgs) -> Result<(), String> {
    let found = neighbors(&args)?;
    if args.json {
        let json = serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", table(&found));
    }
    Ok(())
}

/// The report for `args`' prompt.
pub fn neighbors(args: &NeighborsArgs) -> Result<NeighborsReport, String> {
    let (name, source) = classify(&args.prompt)
        .filter(|_| args.prompt.exists())
        .ok_or_else(|| {
            format!(
                "{}: not a prompt (a .safetensors or .npy file, or a PEFT adapter folder)",
                args.prompt.display()
            )
        })?;
    let (mut engine, tokenizer) = super::load::load_engine(&args.model, args.device, args.dtype)?;
    let d_model = engine.model().config.d_model as usize;
    let limits = PromptLimits {
        max_rows: usize::MAX,
        ..PromptLimits::default()
    };
    let prompt = load_source(&source, d_model, &limits)
        .map_err(|e| format!("{}: {e}", args.prompt.display()))?;
    let slot = engine
        .register_prompt(&prompt.encoder)
        .map_err(|e| e.to_string())?;
    let k = args.k as usize;
    let vocab = tokenizer.vocab_size() as i64;
    let found = engine
        .prompt_neighbors(&slot, k, vocab)
        .map_err(|e| e.to_string())?;
    let labels = match (&args.labels, &args.report) {
        (Some(list), _) => (split_labels(list), "query"),
        (None, Some(path)) => (
            report_labels(path)
                .ok_or_else(|| format!("{}: no labels in this tuning report", path.display()))?,
            "report",
        ),
        (None, None) => match report_labels(&default_report(&args.prompt, &name)) {
            Some(l) => (l, "report"),
            None => (Vec::new(), "none"),
        },
    };
    report(&tokenizer, &name, k, found, labels).map_err(|e| e.to_string())
}

fn default_report(prompt: &Path, name: &str) -> PathBuf {
    prompt
        .parent()
        .unwrap_or(Path::new("."))
        .join("reports")
        .join(format!("{name}.json"))
}

/// One line per row (`row: token (cosine) ...`), then the labels found.
pub fn table(r: &NeighborsReport) -> String {
    let mut out = format!(
        "{}: {} rows, {} nearest tokens each\n",
        r.task,
        r.rows.len(),
        r.k
    );
    for row in &r.rows {
        let tokens: Vec<String> = row
            .neighbors
            .iter()
            .map(|n| format!("{} ({:.2})", n.token, n.cosine))
            .collect();
        out += &format!("{:>4}: {}\n", row.row, tokens.join("  "));
    }
    if r.labels.is_empty() {
        out += "labels: none given (--labels, or a tuning report)\n";
    } else {
        out += &format!(
            "labels ({}): {} of {} found\n",
            r.labels_from,
            r.labels_found,
            r.labels.len()
        );
        for l in &r.labels {
            let rows: Vec<String> = l.rows.iter().map(usize::to_string).collect();
            out += &format!(
                "  {:<20} {}\n",
                l.label,
                if l.found.is_empty() {
                    "-".to_string()
                } else {
                    format!("{} in rows {}", l.found.join(" "), rows.join(","))
                }
            );
        }
    }
    out
}
