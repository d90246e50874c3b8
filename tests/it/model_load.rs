//! Loading checkpoints: both families, sharded files, and clear errors for broken ones.
use crate::common;

use std::path::Path;

use promptd::model::{ModelError, ModelOptions, T5Model};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

fn cpu() -> ModelOptions {
    ModelOptions {
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
    }
}

/// Copies the single-file fixture model, letting `edit` rewrite its tensors.
fn edited_copy(
    edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>,
) -> tempfile::TempDir {
    let src = common::fixtures().join("models/t5-v1_0-tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((shape, data)) = edit(&name, view.shape().to_vec(), view.data().to_vec()) {
            kept.push((name, view.dtype(), shape, data));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match T5Model::load(dir, cpu()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn both_families_and_sharded_checkpoints_load() {
    for name in common::model_names() {
        let model = T5Model::load(&common::fixtures().join("models").join(&name), cpu()).unwrap();
        assert!(model.vocab_size() > 0);
    }
    // t5-v1_1-tiny ships as model.safetensors.index.json + two shards.
    assert!(common::fixtures()
        .join("models/t5-v1_1-tiny/model.safetensors.index.json")
        .is_file());
}

#[test]
fn missing_tensor_is_named() {
    let name = "decoder.block.1.layer.2.DenseReluDense.wo.weight";
    let dir = edited_copy(|n, s, d| (n != name).then_some((s, d)));
    let err = load_err(dir.path());
    assert!(err.contains(name), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let name = "encoder.block.0.layer.0.SelfAttention.q.weight";
    let dir = edited_copy(|n, s, d| {
        if n == name {
            let cut = s[0] * s[1] * 4 / 2;
            Some((vec![s[0] / 2, s[1]], d[..cut].to_vec()))
        } else {
            Some((s, d))
        }
    });
    let err = load_err(dir.path());
    assert!(
        err.contains(name) && err.contains("[16, 32]") && err.contains("[32, 32]"),
        "{err}"
    );
}

#[test]
fn missing_files_and_bad_config_are_clear() {
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
    std::fs::write(empty.path().join("config.json"), r#"{"d_model": 8}"#).unwrap();
    assert!(load_err(empty.path()).contains("model.safetensors"));
    std::fs::write(empty.path().join("config.json"), r#"{"d_model": "wide"}"#).unwrap();
    assert!(matches!(
        T5Model::load(empty.path(), cpu()),
        Err(ModelError::Config(_))
    ));
    std::fs::write(empty.path().join("config.json"), "{}").unwrap();
    std::fs::write(
        empty.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\xffjunk",
    )
    .unwrap();
    assert!(load_err(empty.path()).contains("model.safetensors"));
}

/// mT5 is T5 v1.1's architecture: the v1.1 fixture's weights under an `mt5` config (which
/// scripts/make_bin_fixtures.py checked gives transformers' MT5ForConditionalGeneration the same
/// logits and tokens as T5's) load and answer the v1.1 parity cases.
#[test]
fn mt5_loads_and_matches_transformers() {
    let fx = common::fixtures();
    let src = fx.join("models/t5-v1_1-tiny");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        fx.join("bin/mt5-tiny/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut loaded = common::load_from(dir.path(), "t5-v1_1-tiny");
    for case in common::cases("t5-v1_1-tiny").iter().take(8) {
        let out = loaded.run(&[case]);
        common::assert_matches(case, &out[0], "mt5");
    }
}

#[test]
fn lookalike_model_types_are_refused_at_load() {
    for model_type in ["umt5", "longt5", "switch_transformers"] {
        let dir = edited_copy(|_, shape, data| Some((shape, data)));
        let cfg = dir.path().join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, text.replace("\"t5\"", &format!("\"{model_type}\""))).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains(model_type) && err.contains("t5 or mt5"),
            "{err}"
        );
    }
}
