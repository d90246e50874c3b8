//! `promptd predict`: JSON lines in, JSON lines out, run as mixed-task batches.
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::limits::RowLimitArgs;
use crate::engine::{DeviceSpec, DtypeSpec, Engine, PromptSlot, RowInput, RowOutput};
use crate::model::adapters::ModelShape;
use crate::model::T5Tokenizer;
use crate::prompts::dir::classify;
use crate::prompts::{load_prompt_dir, PromptLimits};
use crate::service::rows::{best_label, build_row};

/// Arguments of `promptd predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Hugging Face T5 directory (config.json; safetensors or pytorch_model.bin weights, single or
    /// sharded; tokenizer.json or spiece.model).
    #[arg(long, env = "PROMPTD_MODEL")]
    pub model: PathBuf,
    /// Folder of prompts: <task>.safetensors, <task>.npy or PEFT adapter folders <task>/.
    #[arg(long, env = "PROMPTD_PROMPTS")]
    pub prompts: Option<PathBuf>,
    /// Inputs per forward pass; consecutive lines of any tasks share a pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, bf16 on GPU) | f32 | bf16 | f16 | int8 (CPU: int8 linear layers)
    #[arg(long, default_value = "auto")]
    pub dtype: DtypeSpec,
    /// Per-input limits and the longest prompt.
    #[command(flatten)]
    pub rows: RowLimitArgs,
    /// Padded encoder tokens (rows x longest row) per forward pass; bounds attention memory.
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_tokens: u64,
}

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    #[serde(default)]
    task: Option<String>,
    input: String,
    #[serde(default)]
    labels: Option<Vec<String>>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

/// One output line.
#[derive(Debug, Serialize)]
struct OutputLine<'a> {
    task: Option<&'a str>,
    input: &'a str,
    text: String,
    token_ids: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scores: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ErrorLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a str>,
    line: usize,
    error: String,
}

struct Context {
    engine: Engine,
    tokenizer: T5Tokenizer,
    slots: HashMap<String, Arc<PromptSlot>>,
    /// Tasks whose prompt file exists but failed to load, with the reason.
    broken: HashMap<String, String>,
    args: PredictArgs,
}

/// Runs `promptd predict` over stdin/stdout.
pub fn run(args: PredictArgs) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    let (mut engine, tokenizer) = super::load::load_engine(&args.model, args.device, args.dtype)?;
    let d_model = engine.model().config.d_model as usize;
    let mut slots = HashMap::new();
    let mut broken = HashMap::new();
    if let Some(dir) = &args.prompts {
        let limits = PromptLimits {
            max_rows: args.rows.max_prompt_length,
            shape: Some(ModelShape::of(&engine.model().config)),
            ..PromptLimits::default()
        };
        let loaded = load_prompt_dir(dir, d_model, &limits).map_err(|e| e.to_string())?;
        for (path, err) in &loaded.errors {
            tracing::warn!(path = %path.display(), "skipping prompt: {err}");
            if let Some((task, _)) = classify(path) {
                broken.insert(task, format!("{}: {err}", path.display()));
            }
        }
        for (task, prompt) in &loaded.prompts {
            let slot = engine
                .register_task(&prompt.weights())
                .map_err(|e| e.to_string())?;
            slots.insert(task.to_string(), slot);
        }
        tracing::info!(prompts = slots.len(), "prompts loaded");
    }
    let batch = args.max_batch_size as usize;
    let mut ctx = Context {
        engine,
        tokenizer,
        slots,
        broken,
        args,
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut pending: Vec<(usize, RawLine)> = Vec::with_capacity(batch);
    for (n, line) in stdin.lock().split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = String::from_utf8(line).map_err(|_| "input line is not valid UTF-8".to_string());
        pending.push((n + 1, line));
        if pending.len() == batch {
            ctx.run_lines(&pending, &mut out)?;
            pending.clear();
        }
    }
    ctx.run_lines(&pending, &mut out)?;
    out.flush().map_err(|e| e.to_string())
}

/// A line of stdin, or why it is not text.
type RawLine = Result<String, String>;

impl Context {
    fn prepare(&self, line: &InputLine) -> Result<RowInput, String> {
        let prompt =
            match line.task.as_deref() {
                None | Some("") => None,
                Some(task) => {
                    Some(self.slots.get(task).cloned().ok_or_else(
                        || match self.broken.get(task) {
                            Some(why) => {
                                format!("the prompt of task {task:?} failed to load: {why}")
                            }
                            None => format!("unknown task {task:?}"),
                        },
                    )?)
                }
            };
        let limits = self.args.rows.row_limits();
        build_row(
            &self.tokenizer,
            &limits,
            prompt,
            &line.input,
            line.max_new_tokens,
            line.labels.as_deref().unwrap_or_default(),
        )
        .map_err(|e| e.to_string())
    }

    fn run_rows(&mut self, rows: Vec<RowInput>) -> Vec<Result<RowOutput, String>> {
        let (results, _) = self.engine.run_rows(&rows, self.args.max_batch_tokens);
        results
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    fn run_lines(
        &mut self,
        lines: &[(usize, RawLine)],
        out: &mut impl Write,
    ) -> Result<(), String> {
        let parsed: Vec<Result<InputLine, String>> = lines
            .iter()
            .map(|(_, l)| {
                let text = l.as_ref().map_err(Clone::clone)?;
                serde_json::from_str(text).map_err(|e| format!("invalid JSON line: {e}"))
            })
            .collect();
        let rows: Vec<Result<RowInput, String>> = parsed
            .iter()
            .map(|p| {
                p.as_ref()
                    .map_err(Clone::clone)
                    .and_then(|l| self.prepare(l))
            })
            .collect();
        let valid: Vec<RowInput> = rows
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut results = self.run_rows(valid).into_iter();
        for (((n, _), parsed), row) in lines.iter().zip(&parsed).zip(&rows) {
            let line = parsed.as_ref().ok();
            let task = line.and_then(|l| l.task.as_deref());
            let input = line.map(|l| l.input.as_str());
            let result = match row {
                Err(e) => Err(e.clone()),
                Ok(_) => results
                    .next()
                    .unwrap_or_else(|| Err("internal: missing output".into())),
            };
            let json = match result {
                Ok(o) => {
                    let text = self
                        .tokenizer
                        .decode(&o.token_ids)
                        .map_err(|e| e.to_string())?;
                    let label = o
                        .scores
                        .as_ref()
                        .and_then(|s| best_label(line?.labels.as_deref()?, s));
                    serde_json::to_string(&OutputLine {
                        task,
                        input: input.unwrap_or_default(),
                        text,
                        token_ids: o.token_ids,
                        scores: o.scores,
                        label,
                    })
                }
                Err(error) => serde_json::to_string(&ErrorLine {
                    task,
                    input,
                    line: *n,
                    error,
                }),
            }
            .map_err(|e| e.to_string())?;
            writeln!(out, "{json}").map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
