//! The linear layers of a T5 model an adapter may change, by their Hugging Face names, and
//! their sizes.
use crate::model::config::T5Config;

/// The part of a T5 block a linear layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `layer.0.SelfAttention`.
    SelfAttention,
    /// `layer.1.EncDecAttention` (decoder only).
    CrossAttention,
    /// `layer.{1,2}.DenseReluDense`.
    FeedForward,
}

/// A linear layer of a T5 block, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// Feed-forward input (v1.0).
    Wi,
    /// Gated feed-forward input, activated half (v1.1).
    Wi0,
    /// Gated feed-forward input, linear half (v1.1).
    Wi1,
    /// Feed-forward output.
    Wo,
}

impl Module {
    /// The Hugging Face name (`q`, `wi_0`, …).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q",
            Module::K => "k",
            Module::V => "v",
            Module::O => "o",
            Module::Wi => "wi",
            Module::Wi0 => "wi_0",
            Module::Wi1 => "wi_1",
            Module::Wo => "wo",
        }
    }

    /// Parses a Hugging Face module name.
    pub fn parse(name: &str) -> Option<Self> {
        ALL_MODULES.into_iter().find(|m| m.name() == name)
    }
}

/// Every linear layer name of a T5 block.
pub const ALL_MODULES: [Module; 8] = [
    Module::Q,
    Module::K,
    Module::V,
    Module::O,
    Module::Wi,
    Module::Wi0,
    Module::Wi1,
    Module::Wo,
];

/// One linear layer of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// Decoder (else encoder) stack.
    pub decoder: bool,
    /// Block index in its stack.
    pub layer: usize,
    /// Attention or feed-forward.
    pub part: Part,
    /// Which projection.
    pub module: Module,
}

impl Site {
    /// The site of a Hugging Face module path such as `decoder.block.1.layer.1.EncDecAttention.q`
    /// (a `base_model.model.` prefix is allowed); None when it names no linear layer of T5.
    pub fn parse(path: &str) -> Option<Self> {
        let path = path.strip_prefix("base_model.model.").unwrap_or(path);
        let parts: Vec<&str> = path.split('.').collect();
        let [stack, "block", layer, "layer", sub, part, module] = parts.as_slice() else {
            return None;
        };
        let decoder = match *stack {
            "encoder" => false,
            "decoder" => true,
            _ => return None,
        };
        let layer: usize = layer.parse().ok()?;
        let sub: usize = sub.parse().ok()?;
        let module = Module::parse(module)?;
        let part = match (*part, sub, decoder) {
            ("SelfAttention", 0, _) => Part::SelfAttention,
            ("EncDecAttention", 1, true) => Part::CrossAttention,
            ("DenseReluDense", 1, false) | ("DenseReluDense", 2, true) => Part::FeedForward,
            _ => return None,
        };
        let attention = matches!(module, Module::Q | Module::K | Module::V | Module::O);
        (attention == (part != Part::FeedForward)).then_some(Self {
            decoder,
            layer,
            part,
            module,
        })
    }

    /// The Hugging Face module path (no prefix).
    pub fn path(&self) -> String {
        let (sub, part) = match (self.decoder, self.part) {
            (_, Part::SelfAttention) => (0, "SelfAttention"),
            (_, Part::CrossAttention) => (1, "EncDecAttention"),
            (false, Part::FeedForward) => (1, "DenseReluDense"),
            (true, Part::FeedForward) => (2, "DenseReluDense"),
        };
        let name = if self.decoder { "decoder" } else { "encoder" };
        format!(
            "{name}.block.{}.layer.{sub}.{part}.{}",
            self.layer,
            self.module.name()
        )
    }

    /// (input, output) features of this layer in a model of `shape`; None when the model has
    /// no such layer (a block past its stack, `wi` in a gated model).
    pub fn dims(&self, shape: &ModelShape) -> Option<(usize, usize)> {
        let layers = if self.decoder {
            shape.decoder_layers
        } else {
            shape.encoder_layers
        };
        if self.layer >= layers {
            return None;
        }
        let (d, inner, ff) = (shape.d_model, shape.inner, shape.d_ff);
        match (self.module, shape.gated) {
            (Module::Q | Module::K | Module::V, _) => Some((d, inner)),
            (Module::O, _) => Some((inner, d)),
            (Module::Wi, false) | (Module::Wi0 | Module::Wi1, true) => Some((d, ff)),
            (Module::Wo, _) => Some((ff, d)),
            _ => None,
        }
    }

    /// Every linear layer of a model of `shape`.
    pub fn all(shape: &ModelShape) -> Vec<Site> {
        let mut out = Vec::new();
        for (decoder, layers) in [(false, shape.encoder_layers), (true, shape.decoder_layers)] {
            for layer in 0..layers {
                let mut parts = vec![Part::SelfAttention, Part::FeedForward];
                if decoder {
                    parts.insert(1, Part::CrossAttention);
                }
                for part in parts {
                    for module in ALL_MODULES {
                        let site = Site {
                            decoder,
                            layer,
                            part,
                            module,
                        };
                        let attention = part != Part::FeedForward;
                        let is_attention_module =
                            matches!(module, Module::Q | Module::K | Module::V | Module::O);
                        if attention == is_attention_module && site.dims(shape).is_some() {
                            out.push(site);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The layer sizes of a T5 model: what an adapter's factors must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Hidden width.
    pub d_model: usize,
    /// Attention width (heads × d_kv).
    pub inner: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Gated feed-forward (`wi_0`, `wi_1`) rather than `wi`.
    pub gated: bool,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
}

impl ModelShape {
    /// The shape of a model of `cfg`.
    pub fn of(cfg: &T5Config) -> Self {
        Self {
            d_model: cfg.d_model as usize,
            inner: (cfg.num_heads * cfg.d_kv) as usize,
            heads: cfg.num_heads as usize,
            d_ff: cfg.d_ff as usize,
            gated: cfg.is_gated(),
            encoder_layers: cfg.num_layers as usize,
            decoder_layers: cfg.decoder_layers() as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_and_print_hugging_face_paths() {
        for path in [
            "encoder.block.0.layer.0.SelfAttention.q",
            "decoder.block.2.layer.1.EncDecAttention.v",
            "decoder.block.1.layer.2.DenseReluDense.wi_1",
            "encoder.block.3.layer.1.DenseReluDense.wo",
        ] {
            let site = Site::parse(path).unwrap();
            assert_eq!(site.path(), path);
            assert_eq!(Site::parse(&format!("base_model.model.{path}")), Some(site));
        }
        for bad in [
            "encoder.block.0.layer.1.EncDecAttention.q",
            "decoder.block.0.layer.1.DenseReluDense.wo",
            "encoder.block.0.layer.0.SelfAttention.wo",
            "encoder.block.x.layer.0.SelfAttention.q",
            "lm_head",
        ] {
            assert_eq!(Site::parse(bad), None, "{bad}");
        }
    }
}
