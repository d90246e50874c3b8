//! The model folder the offline commands run on.
use std::path::Path;

use crate::engine::{DeviceSpec, DtypeSpec, Engine};
use crate::model::{ModelOptions, T5Model, T5Tokenizer};

/// Loads a model folder into an engine on `device` in `dtype`, and the folder's tokenizer
/// (`promptd predict`, `tune`, `eval`).
pub fn load_engine(
    dir: &Path,
    device: DeviceSpec,
    dtype: DtypeSpec,
) -> Result<(Engine, T5Tokenizer), String> {
    let device = device.resolve()?;
    let kind = dtype.resolve(device);
    let mut model = T5Model::load(dir, ModelOptions { device, kind }).map_err(|e| e.to_string())?;
    model
        .pack_for_serving(dtype.is_int8())
        .map_err(|e| e.to_string())?;
    let eos = model.config.eos_ids()[0];
    let tokenizer = T5Tokenizer::from_dir(dir, eos).map_err(|e| e.to_string())?;
    let engine = Engine::new(model).map_err(|e| e.to_string())?;
    Ok((engine, tokenizer))
}
