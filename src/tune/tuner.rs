//! One tuning run as a step-at-a-time state machine: P, the optimizer, the data order and the
//! history (loss curve, dev metric curve, best P).
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::adapter::{AdapterLayout, AdapterSpec};
use super::data::{tokenize, Batch, Example, TokenizedExample};
use super::error::TuneError;
use super::init::{initial_prompt, read_init_file, InitSpec};
use super::metric::{label_set, ChunkedEval, EvalOutcome, EvalSet, Metric};
use super::optim::{Optimizer, OptimizerKind, OptimizerSettings};
use super::rng::Rng;
use crate::engine::{Engine, TaskWeights};
use crate::model::adapters::{Adapt, ModelShape};
use crate::model::{T5Model, T5Tokenizer};
use crate::prompts::PromptRows;

/// Prompt length when neither the user nor an init file says.
pub const DEFAULT_PROMPT_LENGTH: usize = 100;

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duration {
    /// Exactly this many optimizer steps.
    Steps(usize),
    /// This many passes over the training rows.
    Epochs(usize),
}

/// Everything that decides a tuning run (besides the model and the data).
#[derive(Debug, Clone)]
pub struct TuneSettings {
    /// Rows of P; None: the init file's rows, else [`DEFAULT_PROMPT_LENGTH`].
    pub prompt_length: Option<usize>,
    /// Where P starts.
    pub init: InitSpec,
    /// Class labels (class-label init, rank classification); empty: the distinct targets.
    pub labels: Vec<String>,
    /// The optimizer.
    pub optimizer: OptimizerSettings,
    /// Rows per step; at least the training set size means every step uses every row.
    pub batch_size: usize,
    /// How long.
    pub duration: Duration,
    /// Evaluate on dev every this many steps.
    pub eval_every: usize,
    /// Stop after this many evaluations without a better dev metric.
    pub patience: Option<usize>,
    /// The dev metric.
    pub metric: Metric,
    /// Inputs are cut to this many tokens (with `</s>`).
    pub max_input_tokens: usize,
    /// Targets are cut to this many tokens (with `</s>`).
    pub max_target_tokens: usize,
    /// Training dropout; None: the model's `dropout_rate`.
    pub dropout: Option<f64>,
    /// Seed of the data order, the initial prompt and dropout.
    pub seed: u64,
    /// Padded encoder tokens per evaluation pass.
    pub max_batch_tokens: u64,
    /// Tune an adapter (a LoRA, IA3) instead of a prompt (`--method lora|ia3`).
    pub adapter: Option<AdapterSpec>,
}

impl TuneSettings {
    /// Settings with the paper's defaults (Adafactor, lr 0.3, 100 rows, class-label init).
    pub fn new(duration: Duration) -> Self {
        Self {
            prompt_length: None,
            init: InitSpec::ClassLabels,
            labels: Vec::new(),
            optimizer: OptimizerSettings::defaults(OptimizerKind::Adafactor),
            batch_size: 32,
            duration,
            eval_every: 100,
            patience: None,
            metric: Metric::Accuracy,
            max_input_tokens: 512,
            max_target_tokens: 128,
            dropout: None,
            seed: 0,
            max_batch_tokens: 32768,
            adapter: None,
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), TuneError> {
        let bad = |why: String| Err(TuneError::Settings(why));
        if self.prompt_length == Some(0) {
            return bad("prompt length must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if self.eval_every == 0 {
            return bad("eval-every must be at least 1".into());
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1".into());
        }
        if matches!(self.duration, Duration::Steps(0) | Duration::Epochs(0)) {
            return bad("steps / epochs must be at least 1".into());
        }
        if self.max_input_tokens < 1 || self.max_target_tokens < 1 {
            return bad("max input / target tokens must be at least 1".into());
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("dropout must be in [0, 1), got {p}"));
            }
        }
        self.optimizer.validate().map_err(TuneError::Settings)
    }

    /// The settings as JSON, for reports.
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_length": self.prompt_length,
            "init": self.init.to_string(),
            "labels": self.labels,
            "optimizer": self.optimizer.kind.to_string(),
            "lr": self.optimizer.lr,
            "weight_decay": self.optimizer.weight_decay,
            "clip_grad_norm": self.optimizer.clip_grad_norm,
            "batch_size": self.batch_size,
            "steps": match self.duration { Duration::Steps(n) => Some(n), Duration::Epochs(_) => None },
            "epochs": match self.duration { Duration::Epochs(n) => Some(n), Duration::Steps(_) => None },
            "eval_every": self.eval_every,
            "patience": self.patience,
            "metric": self.metric.to_string(),
            "max_input_tokens": self.max_input_tokens,
            "max_target_tokens": self.max_target_tokens,
            "dropout": self.dropout,
            "seed": self.seed,
            "method": self.adapter.as_ref().map_or("prompt", AdapterSpec::method),
            "lora": match &self.adapter {
                Some(AdapterSpec::Lora(s)) => json!({"rank": s.rank, "alpha": s.alpha, "targets": s.targets}),
                _ => Value::Null,
            },
            "ia3": match &self.adapter {
                Some(AdapterSpec::Ia3(s)) => json!({"targets": s.targets, "feedforward": s.feedforward}),
                _ => Value::Null,
            },
        })
    }
}

/// A run's data, tokenized: tokenizer work only, so a server does it off the engine thread.
pub struct Prepared {
    train: Vec<TokenizedExample>,
    dev: Option<EvalSet>,
    labels: Vec<String>,
    truncated: usize,
}

impl Prepared {
    /// Tokenizes `train` and `dev` under `settings` (token caps, metric, labels).
    pub fn new(
        tokenizer: &T5Tokenizer,
        settings: &TuneSettings,
        train: &[Example],
        dev: &[Example],
    ) -> Result<Self, TuneError> {
        settings.validate()?;
        if train.is_empty() {
            return Err(TuneError::Data("no training examples".into()));
        }
        let labels = label_set(&settings.labels, train.iter().chain(dev));
        let (train, truncated) = tokenize(
            tokenizer,
            train,
            settings.max_input_tokens,
            settings.max_target_tokens,
        )?;
        let dev = if dev.is_empty() {
            None
        } else {
            Some(EvalSet::new(
                tokenizer,
                dev,
                settings.metric,
                labels.clone(),
                settings.max_input_tokens,
                settings.max_target_tokens,
                None,
            )?)
        };
        Ok(Self {
            train,
            dev,
            labels,
            truncated,
        })
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps taken so far (this one included).
    pub step: usize,
    /// The batch's loss before the update.
    pub loss: f64,
    /// Real input + target tokens in the batch.
    pub tokens: usize,
}

/// What a run produced: prompt rows, or a PEFT adapter's two files.
pub enum Tuned {
    /// A soft prompt.
    Rows(PromptRows),
    /// adapter_config.json and adapter_model.safetensors (the config also in its metadata).
    Adapter {
        /// adapter_config.json.
        config: Vec<u8>,
        /// adapter_model.safetensors.
        weights: Vec<u8>,
    },
}

/// A tuning run in progress.
pub struct Tuner {
    settings: TuneSettings,
    train: Vec<TokenizedExample>,
    dev: Option<EvalSet>,
    /// The trained parameters: P [rows, d], or an adapter's tensors, flat ([`AdapterLayout`]).
    prompt: Tensor,
    /// Where a LoRA run's factors sit in `prompt` (None: a prompt run).
    adapter: Option<AdapterLayout>,
    optimizer: Optimizer,
    rng: Rng,
    order: Vec<usize>,
    cursor: usize,
    step: usize,
    total_steps: usize,
    dropout: f64,
    stale_evals: usize,
    best: Option<(usize, f64, Vec<f32>)>,
    train_loss: Vec<(usize, f64)>,
    dev_metric: Vec<(usize, f64)>,
    tokens: usize,
    train_seconds: f64,
    truncated: usize,
    labels: Vec<String>,
    /// A dev evaluation of the current P in progress (P does not move until it ends).
    pending: Option<(ChunkedEval, Vec<f32>)>,
    /// A step whose batch is being worked through in parts.
    accum: Option<Accum>,
}

/// A batch part-way through gradient accumulation.
struct Accum {
    picked: Vec<usize>,
    next: usize,
    /// Target tokens of the whole batch (the loss's denominator).
    label_tokens: usize,
    loss: f64,
    grad: Option<Tensor>,
    tokens: usize,
}

impl Tuner {
    /// Tokenizes the data and builds the initial prompt on the model's device.
    pub fn new(
        model: &T5Model,
        tokenizer: &T5Tokenizer,
        settings: TuneSettings,
        train: &[Example],
        dev: &[Example],
    ) -> Result<Self, TuneError> {
        let prepared = Prepared::new(tokenizer, &settings, train, dev)?;
        Self::from_prepared(model, tokenizer, settings, prepared)
    }

    /// Builds the initial prompt for already tokenized data (the part that needs the model).
    pub fn from_prepared(
        model: &T5Model,
        tokenizer: &T5Tokenizer,
        settings: TuneSettings,
        prepared: Prepared,
    ) -> Result<Self, TuneError> {
        settings.validate()?;
        let Prepared {
            train: train_rows,
            dev,
            labels,
            truncated,
        } = prepared;
        let d = model.config.d_model as usize;
        let mut rng = Rng::new(settings.seed);
        let device = model.options().device;
        let adapter = settings
            .adapter
            .clone()
            .map(|spec| AdapterLayout::new(spec, &ModelShape::of(&model.config)))
            .transpose()?;
        let (values, shape) = match &adapter {
            Some(layout) => (layout.init(&mut rng), vec![layout.len() as i64]),
            None => {
                let rows = prompt_rows(&settings, d)?;
                let values =
                    initial_prompt(&settings.init, model, tokenizer, rows, &labels, &mut rng)?;
                (values, vec![rows as i64, d as i64])
            }
        };
        let prompt = Tensor::f_from_slice(&values)?
            .f_view(shape.as_slice())?
            .f_to_device(device)?
            .set_requires_grad(true);
        let per_epoch = train_rows.len().div_ceil(settings.batch_size);
        let total_steps = match settings.duration {
            Duration::Steps(n) => n,
            Duration::Epochs(e) => e.saturating_mul(per_epoch),
        };
        let optimizer = Optimizer::new(settings.optimizer, &prompt)?;
        let dropout = settings.dropout.unwrap_or(model.config.dropout_rate);
        tch::manual_seed(settings.seed as i64);
        Ok(Self {
            order: (0..train_rows.len()).collect(),
            cursor: usize::MAX,
            settings,
            train: train_rows,
            dev,
            prompt,
            adapter,
            optimizer,
            rng,
            step: 0,
            total_steps,
            dropout,
            stale_evals: 0,
            best: None,
            train_loss: Vec::new(),
            dev_metric: Vec::new(),
            tokens: 0,
            train_seconds: 0.0,
            truncated,
            labels,
            pending: None,
            accum: None,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &TuneSettings {
        &self.settings
    }

    /// Steps taken.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Steps the run will take unless it stops early.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Training rows cut to the token caps.
    pub fn truncated_rows(&self) -> usize {
        self.truncated
    }

    /// The labels (given, or the distinct targets).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Whether there is a dev set.
    pub fn has_dev(&self) -> bool {
        self.dev.is_some()
    }

    /// Whether every step is taken or early stopping ended the run.
    pub fn finished(&self) -> bool {
        self.step >= self.total_steps
            || self
                .settings
                .patience
                .is_some_and(|p| self.stale_evals >= p)
    }

    /// Whether the dev set is due for an evaluation now (at the start, every `eval_every`
    /// steps, and at the end).
    pub fn eval_due(&self) -> bool {
        let Some(_) = &self.dev else { return false };
        if self.pending.is_some() {
            return true;
        }
        if self.accum.is_some() {
            return false;
        }
        let last = self.dev_metric.last().map(|(s, _)| *s);
        last != Some(self.step)
            && (self.step.is_multiple_of(self.settings.eval_every) || self.step >= self.total_steps)
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let n = self.train.len();
        if self.settings.batch_size >= n {
            return (0..n).collect();
        }
        if self.cursor >= n {
            self.rng.shuffle(&mut self.order);
            self.cursor = 0;
        }
        let end = (self.cursor + self.settings.batch_size).min(n);
        let picked = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        picked
    }

    /// The loss of `rows` with the current P, and its gradient with respect to P.
    pub fn loss_and_grad(
        &self,
        model: &T5Model,
        rows: &[&TokenizedExample],
    ) -> Result<(f64, Tensor, usize), TuneError> {
        tch::with_grad(|| {
            let opts = model.options();
            let batch = Batch::new(rows, model.config.pad_id(), opts.device)?;
            let b = rows.len() as i64;
            if let Some(layout) = &self.adapter {
                let tables = layout.tables(&self.prompt, opts.kind)?;
                let ad = Adapt::new(&tables, Tensor::f_ones([b], (Kind::Int64, opts.device))?);
                let embeds = model.embed(&batch.input_ids)?;
                let loss = model.seq2seq_loss(
                    &embeds,
                    &batch.mask,
                    &batch.labels,
                    self.dropout,
                    Some(&ad),
                )?;
                let value = loss.f_double_value(&[])?;
                let mut grads = Tensor::f_run_backward(&[&loss], &[&self.prompt], false, false)?;
                return Ok((value, grads.remove(0), batch.tokens));
            }
            let (p, d) = (self.prompt.size()[0], self.prompt.size()[1]);
            let prompt = self
                .prompt
                .f_to_kind(opts.kind)?
                .f_unsqueeze(0)?
                .f_expand([b, p, d], false)?;
            let embeds = Tensor::f_cat(&[prompt, model.embed(&batch.input_ids)?], 1)?;
            let ones = Tensor::f_ones([b, p], (Kind::Int64, opts.device))?;
            let mask = Tensor::f_cat(&[ones, batch.mask.shallow_clone()], 1)?;
            let loss = model.seq2seq_loss(&embeds, &mask, &batch.labels, self.dropout, None)?;
            let value = loss.f_double_value(&[])?;
            let mut grads = Tensor::f_run_backward(&[&loss], &[&self.prompt], false, false)?;
            Ok((value, grads.remove(0), batch.tokens))
        })
    }

    /// One optimizer step on the next batch.
    pub fn train_step(&mut self, model: &T5Model) -> Result<StepReport, TuneError> {
        loop {
            if let Some(report) = self.train_micro_step(model, usize::MAX)? {
                return Ok(report);
            }
        }
    }

    /// Works through the current batch at most `max_rows` rows at a time (gradient
    /// accumulation, so a server's engine thread can serve in between); returns the step's
    /// report once the whole batch is done and P has moved. The accumulated loss and gradient
    /// are the whole batch's: each part is weighted by its share of the batch's target tokens.
    pub fn train_micro_step(
        &mut self,
        model: &T5Model,
        max_rows: usize,
    ) -> Result<Option<StepReport>, TuneError> {
        let started = Instant::now();
        let mut acc = match self.accum.take() {
            Some(acc) => acc,
            None => {
                let picked = self.next_batch();
                let label_tokens = picked.iter().map(|&i| self.train[i].labels.len()).sum();
                Accum {
                    picked,
                    next: 0,
                    label_tokens,
                    loss: 0.0,
                    grad: None,
                    tokens: 0,
                }
            }
        };
        let end = acc
            .next
            .saturating_add(max_rows.max(1))
            .min(acc.picked.len());
        let rows: Vec<&TokenizedExample> = acc.picked[acc.next..end]
            .iter()
            .map(|&i| &self.train[i])
            .collect();
        let part_tokens: usize = rows.iter().map(|r| r.labels.len()).sum();
        let (loss, grad, tokens) = self.loss_and_grad(model, &rows)?;
        let weight = part_tokens as f64 / acc.label_tokens.max(1) as f64;
        acc.loss += loss * weight;
        acc.grad = Some(match acc.grad.take() {
            // The whole batch at once: no rescaling, bit for bit the single-pass gradient.
            None if end == acc.picked.len() && acc.next == 0 => grad,
            None => grad.f_mul_scalar(weight)?,
            Some(g) => g.f_add(&grad.f_mul_scalar(weight)?)?,
        });
        acc.tokens += tokens;
        acc.next = end;
        self.train_seconds += started.elapsed().as_secs_f64();
        if acc.next < acc.picked.len() {
            self.accum = Some(acc);
            return Ok(None);
        }
        let loss = acc.loss;
        if !loss.is_finite() {
            return Err(TuneError::Diverged {
                step: self.step + 1,
                loss,
            });
        }
        let started = Instant::now();
        let grad = acc.grad.expect("at least one part");
        self.optimizer.step(&mut self.prompt, &grad)?;
        self.step += 1;
        self.tokens += acc.tokens;
        self.train_loss.push((self.step, loss));
        self.train_seconds += started.elapsed().as_secs_f64();
        Ok(Some(StepReport {
            step: self.step,
            loss,
            tokens: acc.tokens,
        }))
    }

    /// Scores the current P on the dev set through `engine`, and keeps it if it is the best.
    pub fn evaluate(
        &mut self,
        engine: &mut Engine,
        tokenizer: &T5Tokenizer,
    ) -> Result<Option<EvalOutcome>, TuneError> {
        if self.dev.is_none() {
            return Ok(None);
        }
        loop {
            if let Some(outcome) = self.evaluate_chunk(engine, tokenizer, usize::MAX)? {
                return Ok(Some(outcome));
            }
        }
    }

    /// Scores the next `rows` dev rows with the current P (training waits until the evaluation
    /// ends); the outcome, recorded like [`Tuner::evaluate`]'s, once every row is scored.
    pub fn evaluate_chunk(
        &mut self,
        engine: &mut Engine,
        tokenizer: &T5Tokenizer,
        rows: usize,
    ) -> Result<Option<EvalOutcome>, TuneError> {
        let Some(dev) = &self.dev else {
            return Ok(None);
        };
        let (eval, _) = match &mut self.pending {
            Some(p) => p,
            None => {
                let values = self.current_values()?;
                let slot = engine.register_task(&self.task_weights(&values))?;
                self.pending.insert((ChunkedEval::new(Some(slot)), values))
            }
        };
        let Some(outcome) =
            eval.step(engine, tokenizer, dev, rows, self.settings.max_batch_tokens)?
        else {
            return Ok(None);
        };
        let (_, values) = self.pending.take().expect("an evaluation in progress");
        self.dev_metric.push((self.step, outcome.value));
        if self
            .best
            .as_ref()
            .is_none_or(|(_, m, _)| outcome.value > *m)
        {
            self.best = Some((self.step, outcome.value, values));
            self.stale_evals = 0;
        } else {
            self.stale_evals += 1;
        }
        Ok(Some(outcome))
    }

    /// The dev set, if any.
    pub fn dev_set(&self) -> Option<&EvalSet> {
        self.dev.as_ref()
    }

    /// The trained parameters as they are now, flat.
    fn current_values(&self) -> Result<Vec<f32>, TuneError> {
        Ok(Vec::<f32>::try_from(
            self.prompt
                .f_detach()?
                .f_to_device(tch::Device::Cpu)?
                .f_flatten(0, -1)?,
        )?)
    }

    /// What the engine serves for flat parameter `values`: prompt rows or a LoRA.
    fn task_weights(&self, values: &[f32]) -> TaskWeights {
        match &self.adapter {
            Some(layout) => TaskWeights {
                rows: PromptRows {
                    rows: 0,
                    cols: self.prompt.size()[0] as usize,
                    values: Vec::new(),
                },
                adapter: Some(Arc::new(layout.weights(values))),
            },
            None => TaskWeights::from(PromptRows {
                rows: self.prompt.size()[0] as usize,
                cols: self.prompt.size()[1] as usize,
                values: values.to_vec(),
            }),
        }
    }

    /// An adapter run's layout (None: a prompt run).
    pub fn adapter(&self) -> Option<&AdapterLayout> {
        self.adapter.as_ref()
    }

    /// What the run produced so far: the best prompt rows, or the best adapter's PEFT files
    /// (`base_model` goes into its config).
    pub fn best_output(&self, base_model: &str) -> Result<Tuned, TuneError> {
        match &self.adapter {
            None => Ok(Tuned::Rows(self.best_rows()?)),
            Some(layout) => {
                let (config, weights) = layout.peft_files(&self.best_values()?, base_model)?;
                Ok(Tuned::Adapter { config, weights })
            }
        }
    }

    /// The parameters to keep, flat: the best on dev so far, or (without dev) the current ones.
    pub fn best_values(&self) -> Result<Vec<f32>, TuneError> {
        match &self.best {
            Some((_, _, values)) => Ok(values.clone()),
            None => self.current_values(),
        }
    }

    /// P as it is now.
    pub fn current_rows(&self) -> Result<PromptRows, TuneError> {
        self.no_rows_for_adapter()?;
        let size = self.prompt.size();
        let values = Vec::<f32>::try_from(
            self.prompt
                .f_detach()?
                .f_to_device(tch::Device::Cpu)?
                .f_flatten(0, -1)?,
        )?;
        Ok(PromptRows {
            rows: size[0] as usize,
            cols: size[1] as usize,
            values,
        })
    }

    fn no_rows_for_adapter(&self) -> Result<(), TuneError> {
        match &self.adapter {
            Some(a) => Err(TuneError::Settings(format!(
                "a {} run has an adapter, not prompt rows",
                a.method()
            ))),
            None => Ok(()),
        }
    }

    /// The P to keep: the best on dev so far, or (without dev) the current one.
    pub fn best_rows(&self) -> Result<PromptRows, TuneError> {
        self.no_rows_for_adapter()?;
        match &self.best {
            Some((_, _, values)) => Ok(PromptRows {
                rows: self.prompt.size()[0] as usize,
                cols: self.prompt.size()[1] as usize,
                values: values.clone(),
            }),
            None => self.current_rows(),
        }
    }

    /// (step, metric) of the best dev evaluation.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best.as_ref().map(|(s, m, _)| (*s, *m))
    }

    /// (step, training loss) of every step so far.
    pub fn train_loss(&self) -> &[(usize, f64)] {
        &self.train_loss
    }

    /// (step, dev metric) of every evaluation so far.
    pub fn dev_metrics(&self) -> &[(usize, f64)] {
        &self.dev_metric
    }

    /// The latest training loss.
    pub fn last_loss(&self) -> Option<f64> {
        self.train_loss.last().map(|(_, l)| *l)
    }

    /// The latest dev metric.
    pub fn last_metric(&self) -> Option<f64> {
        self.dev_metric.last().map(|(_, m)| *m)
    }

    /// Seconds spent in training steps.
    pub fn train_seconds(&self) -> f64 {
        self.train_seconds
    }

    /// The run's history as JSON (the body of `--report` and of a job's status).
    pub fn report(&self) -> Value {
        let (best_step, best_metric) = self.best().unzip();
        json!({
            "settings": self.settings.to_json(),
            "seed": self.settings.seed,
            "method": self.adapter.as_ref().map_or("prompt", AdapterLayout::method),
            "prompt_length": if self.adapter.is_some() { None } else { Some(self.prompt.size()[0]) },
            "lora_rank": self.adapter.as_ref().and_then(AdapterLayout::rank),
            "adapter_parameters": self.adapter.as_ref().map(AdapterLayout::len),
            "train_rows": self.train.len(),
            "dev_rows": self.dev.as_ref().map_or(0, EvalSet::len),
            "truncated_rows": self.truncated,
            "labels": self.labels,
            "steps": self.step,
            "total_steps": self.total_steps,
            "dropout": self.dropout,
            "train_seconds": self.train_seconds,
            "steps_per_second": if self.train_seconds > 0.0 { self.step as f64 / self.train_seconds } else { 0.0 },
            "tokens_per_second": if self.train_seconds > 0.0 { self.tokens as f64 / self.train_seconds } else { 0.0 },
            "train_loss": self.train_loss,
            "dev_metric": self.dev_metric,
            "metric": self.settings.metric.to_string(),
            "best_step": best_step,
            "best_metric": best_metric,
            "early_stopped": self.step < self.total_steps && self.finished(),
        })
    }
}

/// Rows of P: the init file's, else `--prompt-length`, else the default.
fn prompt_rows(settings: &TuneSettings, d: usize) -> Result<usize, TuneError> {
    Ok(match (&settings.init, settings.prompt_length) {
        (InitSpec::File(path), given) => {
            let file_rows = read_init_file(path, d)?.rows;
            if given.is_some_and(|g| g != file_rows) {
                return Err(TuneError::Settings(format!(
                    "--prompt-length {} differs from the {file_rows} rows of {}",
                    given.unwrap_or_default(),
                    path.display()
                )));
            }
            file_rows
        }
        (_, given) => given.unwrap_or(DEFAULT_PROMPT_LENGTH),
    })
}
