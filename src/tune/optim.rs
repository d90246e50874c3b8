//! Optimizers for the prompt: Adafactor as the paper tunes (numerically transformers'
//! `Adafactor(lr, scale_parameter=False, relative_step=False, warmup_init=False,
//! decay_rate=-0.8, weight_decay, clip_threshold=1.0, beta1=None)`), and Adam / SGD as
//! `torch.optim` define them, for comparison. State is f32 on the prompt's device.
use std::fmt;
use std::str::FromStr;

use tch::{Kind, Tensor};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Factored second moments, update clipping, no momentum (the paper's choice).
    Adafactor,
    /// `torch.optim.Adam` (betas 0.9 / 0.999, eps 1e-8).
    Adam,
    /// Plain gradient descent: P ← P − lr·(g + wd·P).
    Sgd,
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adafactor" => Ok(Self::Adafactor),
            "adam" => Ok(Self::Adam),
            "sgd" => Ok(Self::Sgd),
            other => Err(format!(
                "unknown optimizer {other:?}: use adafactor, adam or sgd"
            )),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Adafactor => "adafactor",
            Self::Adam => "adam",
            Self::Sgd => "sgd",
        })
    }
}

/// An optimizer's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OptimizerSettings {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Learning rate (constant).
    pub lr: f64,
    /// Weight decay (Adafactor: decoupled, as transformers; Adam/SGD: L2 added to the gradient).
    pub weight_decay: f64,
    /// Rescale the gradient to at most this global L2 norm before the update.
    pub clip_grad_norm: Option<f64>,
}

impl OptimizerSettings {
    /// The paper's defaults for `kind`: lr 0.3 and weight decay 1e-5 for Adafactor; lr 0.01
    /// (Adam) or 1.0 (SGD) without weight decay otherwise.
    pub fn defaults(kind: OptimizerKind) -> Self {
        let (lr, weight_decay) = match kind {
            OptimizerKind::Adafactor => (0.3, 1e-5),
            OptimizerKind::Adam => (0.01, 0.0),
            OptimizerKind::Sgd => (1.0, 0.0),
        };
        Self {
            kind,
            lr,
            weight_decay,
            clip_grad_norm: None,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("clip-grad-norm must be positive, got {c}"));
            }
        }
        Ok(())
    }
}

/// Adafactor's fixed constants (transformers' defaults).
const ADAFACTOR_EPS: f64 = 1e-30;
const ADAFACTOR_DECAY_RATE: f64 = -0.8;
const ADAFACTOR_CLIP_THRESHOLD: f64 = 1.0;
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

enum State {
    Adafactor {
        /// Factored second moment (2-D and up): row and column means.
        row: Option<Tensor>,
        col: Option<Tensor>,
        /// Unfactored second moment (1-D).
        full: Option<Tensor>,
    },
    Adam {
        m: Tensor,
        v: Tensor,
    },
    Sgd,
}

/// An optimizer over one f32 parameter (the prompt).
pub struct Optimizer {
    settings: OptimizerSettings,
    steps: u64,
    state: State,
}

impl Optimizer {
    /// Fresh state for a parameter shaped like `param`.
    pub fn new(settings: OptimizerSettings, param: &Tensor) -> Result<Self, tch::TchError> {
        let state = match settings.kind {
            OptimizerKind::Adafactor => {
                let shape = param.size();
                let opts = (Kind::Float, param.device());
                if shape.len() >= 2 {
                    let n = shape.len();
                    let row_shape = &shape[..n - 1];
                    let mut col_shape = shape[..n - 2].to_vec();
                    col_shape.push(shape[n - 1]);
                    State::Adafactor {
                        row: Some(Tensor::f_zeros(row_shape, opts)?),
                        col: Some(Tensor::f_zeros(col_shape.as_slice(), opts)?),
                        full: None,
                    }
                } else {
                    State::Adafactor {
                        row: None,
                        col: None,
                        full: Some(Tensor::f_zeros(shape.as_slice(), opts)?),
                    }
                }
            }
            OptimizerKind::Adam => State::Adam {
                m: param.f_zeros_like()?,
                v: param.f_zeros_like()?,
            },
            OptimizerKind::Sgd => State::Sgd,
        };
        Ok(Self {
            settings,
            steps: 0,
            state,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update to `param` (in place) from `grad`. Runs without autograd.
    pub fn step(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<(), tch::TchError> {
        tch::no_grad(|| self.step_inner(param, grad))
    }

    fn step_inner(&mut self, param: &mut Tensor, grad: &Tensor) -> Result<(), tch::TchError> {
        let s = self.settings;
        let mut grad = grad.f_to_kind(Kind::Float)?;
        if let Some(max_norm) = s.clip_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when below 1.
            let norm = grad.f_norm()?.f_double_value(&[])?;
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                grad = grad.f_mul_scalar(coef)?;
            }
        }
        self.steps += 1;
        let t = self.steps as f64;
        match &mut self.state {
            State::Adafactor { row, col, full } => {
                let beta2t = 1.0 - t.powf(ADAFACTOR_DECAY_RATE);
                let sq = grad.f_square()?.f_add_scalar(ADAFACTOR_EPS)?;
                let mut update = match (row, col, full) {
                    (Some(row), Some(col), _) => {
                        let r_mean = sq.f_mean_dim(-1, false, Kind::Float)?;
                        let c_mean = sq.f_mean_dim(-2, false, Kind::Float)?;
                        *row = row
                            .f_mul_scalar(beta2t)?
                            .f_add(&r_mean.f_mul_scalar(1.0 - beta2t)?)?;
                        *col = col
                            .f_mul_scalar(beta2t)?
                            .f_add(&c_mean.f_mul_scalar(1.0 - beta2t)?)?;
                        let r_factor = row
                            .f_div(&row.f_mean_dim(-1, true, Kind::Float)?)?
                            .f_rsqrt()?
                            .f_unsqueeze(-1)?;
                        let c_factor = col.f_unsqueeze(-2)?.f_rsqrt()?;
                        r_factor.f_mul(&c_factor)?.f_mul(&grad)?
                    }
                    (_, _, Some(full)) => {
                        *full = full
                            .f_mul_scalar(beta2t)?
                            .f_add(&sq.f_mul_scalar(1.0 - beta2t)?)?;
                        full.f_rsqrt()?.f_mul(&grad)?
                    }
                    _ => unreachable!("adafactor state is factored or full"),
                };
                let rms = rms(&update)?;
                let denom = (rms / ADAFACTOR_CLIP_THRESHOLD).max(1.0);
                update = update.f_div_scalar(denom)?.f_mul_scalar(s.lr)?;
                if s.weight_decay != 0.0 {
                    let decayed = param.f_mul_scalar(-s.weight_decay * s.lr)?;
                    let _ = param.f_add_(&decayed)?;
                }
                let _ = param.f_sub_(&update)?;
            }
            State::Adam { m, v } => {
                if s.weight_decay != 0.0 {
                    grad = grad.f_add(&param.f_mul_scalar(s.weight_decay)?)?;
                }
                let (b1, b2) = ADAM_BETAS;
                *m = m.f_mul_scalar(b1)?.f_add(&grad.f_mul_scalar(1.0 - b1)?)?;
                *v = v
                    .f_mul_scalar(b2)?
                    .f_add(&grad.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                let step_size = s.lr / (1.0 - b1.powf(t));
                let denom = v
                    .f_sqrt()?
                    .f_div_scalar((1.0 - b2.powf(t)).sqrt())?
                    .f_add_scalar(ADAM_EPS)?;
                let _ = param.f_sub_(&m.f_div(&denom)?.f_mul_scalar(step_size)?)?;
            }
            State::Sgd => {
                if s.weight_decay != 0.0 {
                    grad = grad.f_add(&param.f_mul_scalar(s.weight_decay)?)?;
                }
                let _ = param.f_sub_(&grad.f_mul_scalar(s.lr)?)?;
            }
        }
        Ok(())
    }
}

/// Root mean square, as transformers' `Adafactor._rms`: ‖x‖₂ / √numel.
fn rms(x: &Tensor) -> Result<f64, tch::TchError> {
    let n = x.numel().max(1) as f64;
    Ok(x.f_norm()?.f_double_value(&[])? / n.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: OptimizerKind, p0: &[f32], grads: &[&[f32]], shape: &[i64]) -> Vec<f32> {
        let mut p = Tensor::from_slice(p0).view(shape);
        let mut opt = Optimizer::new(OptimizerSettings::defaults(kind), &p).unwrap();
        for g in grads {
            opt.step(&mut p, &Tensor::from_slice(g).view(shape))
                .unwrap();
        }
        Vec::<f32>::try_from(p.flatten(0, -1)).unwrap()
    }

    #[test]
    fn sgd_is_p_minus_lr_grad() {
        let p = run(OptimizerKind::Sgd, &[1.0, 2.0], &[&[0.5, -1.0]], &[2]);
        assert_eq!(p, vec![0.5, 3.0]);
    }

    #[test]
    fn adam_first_step_moves_each_value_by_lr() {
        // Bias-corrected m / sqrt(v) is sign(g) on the first step.
        let p = run(OptimizerKind::Adam, &[0.0, 0.0], &[&[3.0, -0.2]], &[2]);
        assert!(
            (p[0] + 0.01).abs() < 1e-6 && (p[1] - 0.01).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn adafactor_first_step_is_clipped_to_unit_rms_times_lr() {
        // Step 1: beta2t = 0, the factored moment reproduces g² for a rank-1 g², so the update
        // is sign(g) with RMS 1 (no clipping needed); times lr 0.3, plus weight decay.
        let p0 = [1.0f32, 1.0, 1.0, 1.0];
        let p = run(
            OptimizerKind::Adafactor,
            &p0,
            &[&[2.0, 4.0, 1.0, 2.0]],
            &[2, 2],
        );
        let decayed = 1.0 - 1e-5 * 0.3;
        for v in p {
            assert!((v as f64 - (decayed - 0.3)).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            "adam".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam
        );
        assert!("lamb".parse::<OptimizerKind>().is_err());
    }
}
