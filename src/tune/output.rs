//! Writing what a tuning run produced, each file atomically (temp file, fsync, rename): the
//! prompt in the format the server accepts, a PEFT adapter folder, the JSON report and its
//! curve picture.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::curve::Curve;
use super::error::TuneError;
use super::peft::safetensors_bytes;
use crate::model::T5Config;
use crate::prompts::tensor::PEFT_KEY;
use crate::prompts::PromptRows;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so readers (and a
/// crash) see either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TuneError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_err(path))
}

/// The prompt as a bare safetensors file (`prompt_embeddings`, f32 [rows, d_model]): what
/// `PUT /v1/prompts/<task>`, a prompt folder and `--init file:` accept.
pub fn prompt_file_bytes(rows: &PromptRows) -> Result<Vec<u8>, TuneError> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_bytes(vec![(PEFT_KEY, rows)], meta)
}

/// Writes the prompt file to `path`.
pub fn write_prompt_file(path: &Path, rows: &PromptRows) -> Result<(), TuneError> {
    write_atomic(path, &prompt_file_bytes(rows)?)
}

/// Writes a PEFT prompt-tuning adapter (`adapter_config.json` + `adapter_model.safetensors`)
/// that `PeftModel.from_pretrained` loads for T5: 2 × rows, the encoder rows first; the
/// decoder rows are zeros (the prompt is the encoder's, as PEFT's own `generate()` uses it).
pub fn write_peft_dir(
    dir: &Path,
    rows: &PromptRows,
    config: &T5Config,
    base_model: &Path,
) -> Result<(), TuneError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut both = rows.values.clone();
    both.resize(rows.values.len() * 2, 0.0);
    let all = PromptRows {
        rows: rows.rows * 2,
        cols: rows.cols,
        values: both,
    };
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = safetensors_bytes(vec![(PEFT_KEY, &all)], meta)?;
    let adapter = json!({
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "num_virtual_tokens": rows.rows,
        "token_dim": rows.cols,
        "num_transformer_submodules": 2,
        "num_attention_heads": config.num_heads,
        "num_layers": config.num_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": null,
        "tokenizer_name_or_path": null,
        "tokenizer_kwargs": null,
        "base_model_name_or_path": base_model.display().to_string(),
        "inference_mode": true,
        "revision": null,
        "modules_to_save": null,
        "auto_mapping": null,
    });
    let text = serde_json::to_vec_pretty(&adapter).map_err(|e| TuneError::Data(e.to_string()))?;
    write_atomic(&dir.join("adapter_model.safetensors"), &weights)?;
    write_atomic(&dir.join("adapter_config.json"), &text)
}

/// Writes a PEFT adapter folder from its two files ([`peft_adapter_files`]).
pub fn write_adapter_dir(
    dir: &Path,
    (config, weights): &(Vec<u8>, Vec<u8>),
) -> Result<(), TuneError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_atomic(&dir.join("adapter_model.safetensors"), weights)?;
    write_atomic(&dir.join("adapter_config.json"), config)
}

/// Where a report's curve picture goes: the report's path with an `.svg` extension
/// (`r.json` → `r.svg`; a report itself named `.svg` keeps it: `r.svg` → `r.curve.svg`).
pub fn curve_path(report: &Path) -> PathBuf {
    let svg = report.with_extension("svg");
    if svg == report {
        report.with_extension("curve.svg")
    } else {
        svg
    }
}

/// Writes `curve`'s picture, `title` on top, to `path`.
pub fn write_curve(path: &Path, curve: &Curve, title: &str) -> Result<(), TuneError> {
    write_atomic(path, curve.to_svg(title)?.as_bytes())
}

/// Writes a JSON value (the report) to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TuneError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| TuneError::Data(e.to_string()))?;
    text.push(b'\n');
    write_atomic(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_goes_next_to_the_report_and_never_over_it() {
        for (report, svg) in [
            ("out/r.json", "out/r.svg"),
            ("r", "r.svg"),
            ("r.svg", "r.curve.svg"),
            ("a.b/report.v2.json", "a.b/report.v2.svg"),
        ] {
            assert_eq!(curve_path(Path::new(report)), Path::new(svg), "{report}");
        }
    }
}
