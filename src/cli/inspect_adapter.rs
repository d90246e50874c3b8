//! `promptd inspect ADAPTER_DIR [--for-model MODEL_DIR]`: what promptd would serve from a PEFT
//! adapter folder, and what PEFT itself does not use at inference (so it is not served).
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::adapters::ModelShape;
use crate::model::T5Config;
use crate::prompts::{Prompt, PromptLimits};

/// What `inspect` found in an adapter folder.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    /// The folder.
    pub dir: PathBuf,
    /// `peft_type` from adapter_config.json.
    pub peft_type: Option<String>,
    /// What serves it: prompt, lora, ia3 or prefix.
    pub kind: Option<&'static str>,
    /// Tasks it becomes (a multitask adapter: one per task prompt, `<name>.<t>`).
    pub tasks: usize,
    /// Encoder prompt rows of each task (soft prompts).
    pub prompt_length: Option<usize>,
    /// The largest LoRA rank.
    pub rank: Option<usize>,
    /// Module names it changes.
    pub modules: Vec<String>,
    /// Linear layers (or decoder blocks, for a prefix) it changes.
    pub layers: usize,
    /// Parameters served.
    pub parameters: usize,
    /// What the adapter holds that is not served, as PEFT itself does not use it.
    pub notes: Vec<String>,
    /// The model it was checked against (`--for-model`); without one, only its own
    /// consistency is checked.
    pub checked_against: Option<PathBuf>,
    /// Whether promptd would serve it.
    pub can_serve: bool,
    /// Why not.
    pub reason: Option<String>,
}

/// Whether `dir` is a PEFT adapter folder.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// Reads `dir` as promptd would (checked against `model`'s shapes when given).
pub fn report(dir: &Path, model: Option<&Path>) -> AdapterReport {
    let mut r = AdapterReport {
        dir: dir.to_path_buf(),
        peft_type: None,
        kind: None,
        tasks: 0,
        prompt_length: None,
        rank: None,
        modules: Vec::new(),
        layers: 0,
        parameters: 0,
        notes: Vec::new(),
        checked_against: model.map(Path::to_path_buf),
        can_serve: false,
        reason: None,
    };
    match fill(dir, model, &mut r) {
        Ok(()) => r.can_serve = true,
        Err(e) => r.reason = Some(e),
    }
    r
}

fn fill(dir: &Path, model: Option<&Path>, r: &mut AdapterReport) -> Result<(), String> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let config = read("adapter_config.json")?;
    let weights = read("adapter_model.safetensors")?;
    let head: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| format!("adapter_config.json: {e}"))?;
    r.peft_type = head["peft_type"].as_str().map(String::from);
    let (shape, d_model) = match model {
        Some(m) => {
            let cfg = T5Config::from_dir(m).map_err(|e| e.to_string())?;
            (Some(ModelShape::of(&cfg)), cfg.d_model as usize)
        }
        // Without a model, a prompt's width is the adapter's own.
        None => (None, head["token_dim"].as_u64().unwrap_or(0) as usize),
    };
    let limits = PromptLimits {
        shape,
        max_rows: usize::MAX,
        ..PromptLimits::default()
    };
    let prompts =
        Prompt::from_peft_tasks(&config, &weights, d_model, &limits).map_err(|e| e.to_string())?;
    r.tasks = prompts.len();
    let first = &prompts[0];
    r.notes = first.notes();
    if prompts.len() > 1 {
        r.notes.push(format!(
            "a multitask adapter: served as {} tasks <name>.0 … <name>.{}, each the encoder half of its task prompt (the decoder half is not served: PEFT's generate() uses only the encoder half)",
            prompts.len(),
            prompts.len() - 1
        ));
    }
    match &first.adapter {
        None => {
            r.kind = Some("prompt");
            r.prompt_length = Some(first.encoder.rows);
            r.parameters = prompts.iter().map(|p| p.encoder.values.len()).sum();
        }
        Some(a) => {
            r.kind = Some(match a.kind {
                crate::prompts::adapter::AdapterKind::Lora => "lora",
                crate::prompts::adapter::AdapterKind::Ia3 => "ia3",
                crate::prompts::adapter::AdapterKind::Prefix => "prefix",
            });
            r.rank = a.rank();
            r.modules = a.modules().into_iter().map(String::from).collect();
            let w = &a.weights;
            r.layers = w.lora.len() + w.ia3.len() + w.prefix.as_ref().map_or(0, |p| p.layers.len());
            r.parameters = w.parameters();
        }
    }
    Ok(())
}

/// The report as text.
pub fn text(r: &AdapterReport) -> String {
    let mut out = format!("adapter:      {}\n", r.dir.display());
    out += &format!(
        "peft_type:    {} (served as {})\n",
        r.peft_type.as_deref().unwrap_or("?"),
        r.kind.unwrap_or("?")
    );
    if r.tasks > 1 {
        out += &format!("tasks:        {}\n", r.tasks);
    }
    if let Some(p) = r.prompt_length {
        out += &format!("prompt rows:  {p}\n");
    }
    if let Some(rank) = r.rank {
        out += &format!("rank:         {rank}\n");
    }
    if !r.modules.is_empty() {
        out += &format!(
            "modules:      {} ({} layers)\n",
            r.modules.join(", "),
            r.layers
        );
    }
    out += &format!(
        "parameters:   {} ({:.3} MB in f32, {:.3} MB in bf16)\n",
        r.parameters,
        r.parameters as f64 * 4e-6,
        r.parameters as f64 * 2e-6
    );
    for n in &r.notes {
        out += &format!("not served:   {n}\n");
    }
    out += &match &r.checked_against {
        Some(m) => format!("checked for:  {}\n", m.display()),
        None => "checked for:  no model (--for-model DIR checks its shapes)\n".into(),
    };
    match &r.reason {
        None => out += "can serve:    yes\n",
        Some(why) => out += &format!("can serve:    no — {why}\n"),
    }
    out
}
